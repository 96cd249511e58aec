"""A fake proc connector: the events are the ones a test injects, nothing touches the kernel.

:class:`FakeProcConnector` has the interface of
:class:`yoroi.platform.linux.proc_connector.ProcConnector` (``ProcEventSource``) and a real
descriptor behind :meth:`~FakeProcConnector.fileno` (one end of a socket pair) that becomes
readable when events are injected, so code that waits with ``select`` or
``loop.add_reader`` runs unchanged. Build events with the real event classes::

    fake = FakeProcConnector()
    fake.open()
    fake.inject(ExecEvent(time.monotonic_ns(), cpu=0, pid=42, tgid=42))
    fake.inject_lost()                  # as if the kernel had dropped messages (ENOBUFS)
    assert [e.kind for e in fake.read()] == [ProcEventKind.EXEC, ProcEventKind.LOST]
"""

from __future__ import annotations

import socket
import time
from collections import deque
from types import TracebackType

from yoroi.errors import PlatformError
from yoroi.platform.linux.proc_connector import LostEvent, ProcEvent, wait_readable


class FakeProcConnector:
    """Twin of ``ProcConnector`` fed by :meth:`inject`; records how often it was opened."""

    def __init__(self) -> None:
        self._queue: deque[ProcEvent] = deque()
        self._pair: tuple[socket.socket, socket.socket] | None = None
        self.opened = 0

    def __enter__(self) -> FakeProcConnector:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._pair is not None

    def open(self) -> None:
        """Start 'listening'; events injected before this are delivered too."""
        if self._pair is not None:
            return
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        self._pair = (reader, writer)
        self.opened += 1
        if self._queue:
            writer.send(b"!")

    def close(self) -> None:
        """Stop; undelivered events are dropped, as the kernel would."""
        if self._pair is None:
            return
        for sock in self._pair:
            sock.close()
        self._pair = None
        self._queue.clear()

    def fileno(self) -> int:
        """A descriptor that is readable while events are queued."""
        return self._reader().fileno()

    def inject(self, *events: ProcEvent) -> None:
        """Queue events for the next :meth:`read`, in order."""
        self._queue.extend(events)
        if self._pair is not None and events:
            self._pair[1].send(b"!")

    def inject_lost(self) -> None:
        """Queue a :class:`LostEvent`, as the real connector does on ENOBUFS."""
        self.inject(LostEvent(time.monotonic_ns()))

    def read(self, timeout: float | None = 0.0) -> list[ProcEvent]:
        """Return the queued events, waiting up to ``timeout`` s (None: forever) for one."""
        reader = self._reader()
        if not self._queue and timeout != 0.0:
            wait_readable(reader.fileno(), timeout)
        try:
            while reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        events = list(self._queue)
        self._queue.clear()
        return events

    def _reader(self) -> socket.socket:
        if self._pair is None:
            raise PlatformError("proc connector is not open: call open() first")
        return self._pair[0]
