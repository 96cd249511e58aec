"""RFC 5424 syslog messages and their transports: UDP (RFC 5426), TCP (RFC 6587), TLS (RFC 5425).

Stream transports use octet-counting framing (``<length> <message>``), so a message may hold
any byte. UDP sends one message per datagram, cut at ``max_datagram`` bytes on a UTF-8
character boundary.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
from typing import Literal

from yoroi.errors import ConfigError, SinkError
from yoroi.events.enums import Severity

Protocol = Literal["udp", "tcp", "tls"]

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13,
    "console": 14, "solaris-cron": 15, "local0": 16, "local1": 17, "local2": 18,
    "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip

# OCSF severity_id -> syslog severity (0 emerg ... 7 debug).
SYSLOG_SEVERITY = {0: 5, 1: 6, 2: 5, 3: 4, 4: 3, 5: 2, 6: 1, 99: 5}

BOM = b"\xef\xbb\xbf"
NIL = "-"


def facility_code(name: str) -> int:
    """The code of a facility name ("local4" -> 20); :class:`ConfigError` if unknown."""
    try:
        return FACILITIES[name]
    except KeyError:
        known = ", ".join(FACILITIES)
        raise ConfigError(f"unknown syslog facility {name!r}; use one of: {known}") from None


def header_field(value: str | None, max_len: int) -> str:
    """A header field as RFC 5424 wants it: printable US-ASCII, no space, bounded, or "-"."""
    if not value:
        return NIL
    clean = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)
    return clean[:max_len]


def rfc3339_ms(epoch_ms: int) -> str:
    """``epoch_ms`` as an RFC 3339 UTC timestamp with milliseconds."""
    stamp = dt.datetime.fromtimestamp(epoch_ms // 1000, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{epoch_ms % 1000:03d}Z"


def format_rfc5424(
    msg: str,
    *,
    time_ms: int,
    severity: Severity | int = Severity.INFORMATIONAL,
    facility: int = FACILITIES["local4"],
    hostname: str | None = None,
    app_name: str = "yoroi",
    procid: str | None = None,
    msgid: str | None = None,
    bom: bool = False,
) -> bytes:
    """One RFC 5424 message; ``severity`` is the OCSF severity_id (mapped to syslog's)."""
    pri = facility * 8 + SYSLOG_SEVERITY.get(int(severity), 5)
    host = hostname if hostname is not None else socket.gethostname()
    head = " ".join(
        (
            f"<{pri}>1",
            rfc3339_ms(time_ms),
            header_field(host, 255),
            header_field(app_name, 48),
            header_field(procid if procid is not None else str(os.getpid()), 128),
            header_field(msgid, 32),
            NIL,
        )
    )
    return head.encode("ascii") + b" " + (BOM if bom else b"") + msg.encode("utf-8")


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: ``b"<len> " + message``."""
    return str(len(message)).encode("ascii") + b" " + message


def truncate_utf8(data: bytes, limit: int) -> bytes:
    """``data`` cut to at most ``limit`` bytes without splitting a UTF-8 character."""
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def tls_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None, verify: bool
) -> ssl.SSLContext:
    """A client TLS context: verify the server against ``ca_file`` (or the system CAs)."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files for syslog: {exc}") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.error: Exception | None = None

    def error_received(self, exc: Exception) -> None:
        self.error = exc


class SyslogTransport:
    """A connection to a syslog receiver; :meth:`send` raises :class:`SinkError` on failure.

    After a failure the connection is dropped; the next :meth:`send` reconnects.
    """

    def __init__(
        self,
        host: str,
        port: int,
        protocol: Protocol = "udp",
        *,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        timeout: float = 5.0,
        max_datagram: int = 8192,
    ) -> None:
        self.host, self.port, self.protocol = host, port, protocol
        self.tls = (
            tls if tls is not None or protocol != "tls" else tls_context(None, None, None, True)
        )
        self.server_name = server_name or host
        self.timeout = timeout
        self.max_datagram = max_datagram
        self._writer: asyncio.StreamWriter | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_protocol = _UdpProtocol()

    @property
    def connected(self) -> bool:
        return self._writer is not None or self._udp is not None

    async def connect(self) -> None:
        """Open the connection if it is not open."""
        if self.connected:
            return
        try:
            await asyncio.wait_for(self._connect(), self.timeout)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise SinkError(f"syslog {self.describe()}: cannot connect: {exc}") from None

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        if self.protocol == "udp":
            self._udp_protocol = _UdpProtocol()
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: self._udp_protocol, remote_addr=(self.host, self.port)
            )
            return
        tls = self.tls if self.protocol == "tls" else None
        _, self._writer = await asyncio.open_connection(
            self.host, self.port, ssl=tls, server_hostname=self.server_name if tls else None
        )

    async def send(self, messages: list[bytes]) -> None:
        """Send the messages (each a whole RFC 5424 message, unframed)."""
        await self.connect()
        try:
            if self._udp is not None:
                self._send_udp(messages)
            elif self._writer is not None:
                self._writer.write(b"".join(octet_frame(m) for m in messages))
                await asyncio.wait_for(self._writer.drain(), self.timeout)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self.abort()
            raise SinkError(f"syslog {self.describe()}: cannot send: {exc!r}") from None

    def _send_udp(self, messages: list[bytes]) -> None:
        assert self._udp is not None
        for message in messages:
            self._udp.sendto(truncate_utf8(message, self.max_datagram))
        error, self._udp_protocol.error = self._udp_protocol.error, None
        if error is not None:
            raise error if isinstance(error, OSError) else OSError(str(error))

    def abort(self) -> None:
        """Drop the connection at once (unsent data is lost; the caller resends)."""
        if self._writer is not None:
            self._writer.transport.abort()
        if self._udp is not None:
            self._udp.abort()
        self._writer = self._udp = None

    async def close(self) -> None:
        """Close the connection, waiting briefly for buffered data to leave."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), self.timeout)
            except (OSError, ssl.SSLError, TimeoutError):
                writer.transport.abort()
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    def describe(self) -> str:
        return f"{self.protocol}://{self.host}:{self.port}"
