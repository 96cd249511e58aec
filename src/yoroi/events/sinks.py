"""Where events go: the :class:`Sink` protocol and the JSON-lines, stdout and syslog sinks.

A sink is driven by one :class:`~yoroi.events.queue.QueuedSink`, which calls ``open`` once,
then ``write`` with batches, and ``close`` at the end. ``write`` raises
:class:`~yoroi.errors.SinkError` when it cannot deliver the whole batch; the next ``write``
tries again (reopening or reconnecting as needed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, runtime_checkable

from yoroi.errors import SinkError
from yoroi.events import mapping
from yoroi.events.cef import encode_cef
from yoroi.events.leef import check_delimiter, encode_leef
from yoroi.events.model import Event, encode_json
from yoroi.events.syslog import SyslogTransport, facility_code, format_rfc5424, tls_context

FsyncPolicy = Literal["always", "interval", "never"]
WireFormat = Literal["cef", "leef", "json"]


@runtime_checkable
class Sink(Protocol):
    """Something that delivers batches of events somewhere."""

    name: str

    async def open(self) -> None: ...

    async def write(self, batch: Sequence[Event]) -> None: ...

    async def close(self) -> None: ...


def _make_dirs(directory: Path) -> None:
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(mode=0o750, exist_ok=True)
        os.chmod(path, 0o750)


class JsonLinesSink:
    """Appends one OCSF JSON object per line to ``path`` and follows log rotation.

    Before each batch it checks whether ``path`` still names the open file (logrotate moved
    or removed it) and reopens it if not. ``fsync``: ``always`` after every batch,
    ``interval`` at most every ``fsync_interval`` seconds, ``never`` (leave it to the kernel).
    """

    def __init__(
        self, path: Path | str, fsync: FsyncPolicy = "interval", fsync_interval: float = 1.0
    ) -> None:
        self.path = Path(path)
        self.name = f"jsonl:{self.path}"
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self._fd: int | None = None
        self._last_sync = 0.0

    async def open(self) -> None:
        try:
            _make_dirs(self.path.parent)
            self._open_file()
        except OSError as exc:
            raise SinkError(f"cannot open event file {self.path}: {exc.strerror}") from None

    def _open_file(self) -> None:
        created = not self.path.exists()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o640)
        if created:
            os.fchmod(self._fd, 0o640)

    def _rotated(self) -> bool:
        assert self._fd is not None
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return True
        mine = os.fstat(self._fd)
        return (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino)

    async def write(self, batch: Sequence[Event]) -> None:
        data = b"".join(encode_json(event) + b"\n" for event in batch)
        try:
            if self._fd is None or self._rotated():
                self._close_fd()
                await self.open()
            self._write_all(data)
        except OSError as exc:
            self._close_fd()
            raise SinkError(f"cannot write event file {self.path}: {exc.strerror}") from None
        await self._maybe_sync()

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    async def _maybe_sync(self) -> None:
        now = time.monotonic()
        due = self.fsync == "always" or (
            self.fsync == "interval" and now - self._last_sync >= self.fsync_interval
        )
        if due and self._fd is not None:
            self._last_sync = now
            await asyncio.to_thread(os.fsync, self._fd)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    async def close(self) -> None:
        if self._fd is not None and self.fsync != "never":
            os.fsync(self._fd)
        self._close_fd()


def format_text(event: Event) -> str:
    """One readable line: time, severity, type, message, then the key facts."""
    flat = mapping.flat_view(event)
    stamp = dt.datetime.fromtimestamp(event.time / 1000).strftime("%H:%M:%S.%f")[:-3]
    facts = [
        f"{label}={mapping.text(value)}"
        for label, keys in _TEXT_FACTS
        if (value := mapping.first(flat, keys)) is not None
    ]
    line = f"{stamp} {event.severity.upper():<13} {event.type_name}: {event.message}"
    line = line + (" [" + " ".join(facts) + "]" if facts else "")
    return line.replace("\r", "\\r").replace("\n", "\\n")


_TEXT_FACTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("rule", mapping.RULE_UID),
    ("action", mapping.ACTION),
    ("status", mapping.OUTCOME),
    ("file", ("file.path",)),
    ("pid", ("actor.process.pid", "process.pid")),
    ("process", ("actor.process.file.path", "actor.process.name", "process.name")),
    ("user", (*mapping.ACTOR_USER, *mapping.TARGET_USER)),
    ("src", ("src_endpoint.ip",)),
    ("url", ("http_request.url.url_string",)),
    ("module", mapping.MODULE),
)


class StdoutSink:
    """Writes events to standard output: ``json`` lines, or ``text`` for people (``yoroi up``)."""

    def __init__(
        self, format: Literal["json", "text"] = "text", stream: BinaryIO | None = None
    ) -> None:
        self.name = "stdout"
        self.format = format
        self._stream = stream

    async def open(self) -> None:
        return None

    async def write(self, batch: Sequence[Event]) -> None:
        stream = self._stream if self._stream is not None else sys.stdout.buffer
        if self.format == "json":
            data = b"".join(encode_json(event) + b"\n" for event in batch)
        else:
            data = "".join(format_text(event) + "\n" for event in batch).encode()
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError) as exc:
            raise SinkError(f"cannot write to standard output: {exc}") from None

    async def close(self) -> None:
        return None


class SyslogSink:
    """Sends each event as an RFC 5424 syslog message with a CEF, LEEF or JSON payload.

    ``protocol``: ``udp`` (RFC 5426), ``tcp`` (RFC 6587 octet counting) or ``tls``
    (RFC 5425; the server certificate is checked against ``ca_file`` and ``host`` unless
    ``verify`` is false). A lost connection is reopened on the next write.
    """

    def __init__(
        self,
        host: str,
        port: int = 514,
        protocol: Literal["udp", "tcp", "tls"] = "udp",
        format: WireFormat = "cef",
        *,
        facility: str = "local4",
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        verify: bool = True,
        server_name: str | None = None,
        leef_delimiter: str = "\t",
        hostname: str | None = None,
        timeout: float = 5.0,
        max_datagram: int = 8192,
    ) -> None:
        self.name = f"syslog:{protocol}://{host}:{port}"
        self.format = format
        self.facility = facility_code(facility)
        self.leef_delimiter = check_delimiter(leef_delimiter)
        self.hostname = hostname
        tls = tls_context(ca_file, cert_file, key_file, verify) if protocol == "tls" else None
        self.transport = SyslogTransport(
            host, port, protocol, tls=tls, server_name=server_name, timeout=timeout,
            max_datagram=max_datagram,
        )  # fmt: skip

    def payload(self, event: Event) -> str:
        """The MSG part of the syslog message for ``event``."""
        if self.format == "cef":
            return encode_cef(event)
        if self.format == "leef":
            return encode_leef(event, self.leef_delimiter)
        return encode_json(event).decode()

    def message(self, event: Event) -> bytes:
        """The whole RFC 5424 message for ``event``."""
        return format_rfc5424(
            self.payload(event),
            time_ms=event.time,
            severity=event.severity_id,
            facility=self.facility,
            hostname=self.hostname,
            msgid=type(event).__name__,
        )

    async def open(self) -> None:
        await self.transport.connect()

    async def write(self, batch: Sequence[Event]) -> None:
        await self.transport.send([self.message(event) for event in batch])

    async def close(self) -> None:
        await self.transport.close()
