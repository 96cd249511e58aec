"""FakeFanotify: the fake twin of :class:`yoroi.platform.linux.fanotify.Fanotify`.

It satisfies :class:`~yoroi.platform.linux.fanotify.FanotifyLike`, needs no privilege and no
kernel, and is driven by the test::

    fan = FakeFanotify(FanClass.CONTENT)
    module.start(fan)                                  # the code under test marks and reads
    event = fan.inject(FanMask.OPEN_PERM, "/srv/x.exe", pid=4242)
    ...                                                # the module reads and answers
    assert fan.responses[-1].allow is False
    fan.advance(2.0)                                   # the deadman's clock: unanswered -> ALLOW

Like the real group: ``fileno()`` becomes readable when events wait (so ``loop.add_reader``
works), permission events go through the same :class:`PermissionGuard` (one answer each,
ALLOW when a decision raises, ALLOW at ``close``), notification descriptors are closed at the
next ``read``, and a group of class ``NOTIF`` refuses permission marks with ``Unsupported``.
When an injected path exists (and no FID mode is set) the event carries a real read-only
descriptor for it, so scanners can read content through ``event.fd``.
"""

from __future__ import annotations

import os
import select
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from yoroi.errors import PlatformError, Unsupported
from yoroi.platform.linux import _fanotify_abi as abi
from yoroi.platform.linux.fanotify import (
    PERMISSION_EVENTS,
    FanClass,
    FanInit,
    FanMask,
    FanotifyEvent,
    FanotifyStats,
    MarkKind,
    PermissionGuard,
    mask_names,
)

__all__ = ["FakeFanotify", "FakeMark", "FakeResponse"]

_NO_FLAGS = FanInit(0)


@dataclass(frozen=True, slots=True)
class FakeMark:
    """One recorded ``mark()`` call."""

    path: str
    mask: FanMask
    kind: MarkKind
    remove: bool
    ignore: bool
    onlydir: bool


@dataclass(frozen=True, slots=True)
class FakeResponse:
    """One answer that reached the fake kernel (``deadman`` when the deadman gave it)."""

    event: FanotifyEvent
    allow: bool
    audit: bool = False
    errno: int | None = None
    deadman: bool = False


class FakeFanotify:
    """An in-memory fanotify group that tests fill with :meth:`inject` and read back."""

    def __init__(
        self,
        fan_class: FanClass = FanClass.NOTIF,
        flags: FanInit = _NO_FLAGS,
        *,
        deadman_timeout: float = 1.0,
        on_deadman: Callable[[FanotifyEvent], None] | None = None,
    ) -> None:
        if fan_class != FanClass.NOTIF and flags & abi.FID_MODES:
            raise Unsupported("FID reporting cannot be combined with a permission class")
        self.fan_class = fan_class
        self.flags = flags
        self.marks: list[FakeMark] = []
        self.responses: list[FakeResponse] = []
        self.now = 0.0  # the deadman's clock, moved by advance()
        self._queue: deque[FanotifyEvent] = deque()
        self._held: dict[int, int] = {}
        self._seq = 0
        self._events = 0
        self._overflows = 0
        self._expiring = False
        self._closed = False
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._guard = PermissionGuard(
            self._send,
            timeout=deadman_timeout,
            on_deadman=on_deadman,
            thread=False,
            clock=lambda: self.now,
        )

    def fileno(self) -> int:
        """An eventfd that is readable while injected events wait."""
        return self._wakeup

    def mark(
        self,
        path: str | os.PathLike[str],
        mask: int,
        *,
        kind: MarkKind = "inode",
        remove: bool = False,
        ignore: bool = False,
        onlydir: bool = False,
    ) -> None:
        """Record the mark; refuse permission events on a ``NOTIF`` group, as the kernel does."""
        if mask & PERMISSION_EVENTS and self.fan_class == FanClass.NOTIF and not remove:
            flags = "|".join(mask_names(mask & PERMISSION_EVENTS))
            raise Unsupported(f"a NOTIF group cannot take {flags}: use a permission class")
        self.marks.append(FakeMark(os.fspath(path), FanMask(mask), kind, remove, ignore, onlydir))

    def inject(
        self,
        mask: int,
        path: str | os.PathLike[str] | None = None,
        *,
        pid: int | None = None,
        name: str | None = None,
        old_path: str | None = None,
        range: tuple[int, int] | None = None,
    ) -> FanotifyEvent:
        """Queue one event as the kernel would deliver it, and return it."""
        if mask & PERMISSION_EVENTS and self.fan_class == FanClass.NOTIF:
            raise ValueError("permission events need a CONTENT or PRE_CONTENT group")
        text = os.fspath(path) if path is not None else None
        self._seq += 1
        event = FanotifyEvent(
            seq=self._seq,
            mask=FanMask(mask),
            pid=os.getpid() if pid is None else pid,
            fd=self._open(text),
            path=text,
            name=name if name is not None else self._name(text),
            old_path=old_path,
            range=range,
        )
        self._queue.append(event)
        os.eventfd_write(self._wakeup, 1)
        return event

    def inject_overflow(self) -> FanotifyEvent:
        """Queue the ``FAN_Q_OVERFLOW`` event the kernel sends after dropping events."""
        return self.inject(FanMask.Q_OVERFLOW, pid=0)

    def read(self, timeout: float | None = None) -> list[FanotifyEvent]:
        """Every injected event not yet read; with ``timeout``, wait that long for one."""
        if self._closed:
            raise PlatformError("this fanotify group is closed: create a new one")
        self._release_held()
        if not self._queue and timeout is not None:
            select.select([self._wakeup], [], [], timeout)
        events = list(self._queue)
        self._queue.clear()
        try:
            os.eventfd_read(self._wakeup)
        except BlockingIOError:
            pass
        for event in events:
            self._take(event)
        return events

    def respond(
        self, event: FanotifyEvent, allow: bool, *, audit: bool = False, errno: int | None = None
    ) -> bool:
        """Answer like :meth:`Fanotify.respond`; the answer lands in :attr:`responses`."""
        response = abi.FAN_ALLOW if allow else abi.deny_response(errno)
        return self._guard.answer(event, response | (abi.FAN_AUDIT if audit else 0))

    def respond_with(self, event: FanotifyEvent, decide: Callable[[FanotifyEvent], bool]) -> bool:
        """Answer with ``decide(event)``; ALLOW if it raises."""
        return self._guard.decide(event, decide)

    def release(self, event: FanotifyEvent) -> None:
        """Close a notification event's descriptor now."""
        fd = self._held.pop(event.seq, None)
        if fd is not None:
            os.close(fd)

    def advance(self, seconds: float) -> int:
        """Move the deadman's clock; return how many events it answered ALLOW."""
        self.now += seconds
        self._expiring = True
        try:
            return self._guard.expire()
        finally:
            self._expiring = False

    @property
    def pending(self) -> int:
        """How many permission events are read but not answered."""
        return self._guard.pending

    def stats(self) -> FanotifyStats:
        """Counters, as :meth:`Fanotify.stats`."""
        return FanotifyStats(events=self._events, overflows=self._overflows, **self._guard.counts())

    def close(self) -> None:
        """Answer ALLOW to everything pending and close the descriptors."""
        if self._closed:
            return
        self._closed = True
        self._guard.close()
        self._release_held()
        for event in self._queue:
            if event.fd is not None:
                os.close(event.fd)
        self._queue.clear()
        os.close(self._wakeup)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _take(self, event: FanotifyEvent) -> None:
        self._events += 1
        self._overflows += event.overflow
        if event.is_permission:
            self._guard.track(event)
        elif event.fd is not None:
            self._held[event.seq] = event.fd

    def _send(self, event: FanotifyEvent, response: int) -> None:
        errno = response >> 24 or None
        allow = bool(response & abi.FAN_ALLOW)
        audit = bool(response & abi.FAN_AUDIT)
        self.responses.append(FakeResponse(event, allow, audit, errno, self._expiring))
        if event.fd is not None:
            os.close(event.fd)

    def _open(self, path: str | None) -> int | None:
        if path is None or self.flags & abi.FID_MODES:
            return None
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None

    def _name(self, path: str | None) -> str | None:
        if path is None or not self.flags & FanInit.REPORT_NAME:
            return None
        return os.path.basename(path)

    def _release_held(self) -> None:
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()
