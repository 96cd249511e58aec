"""fanotify: file events from the kernel, and the power to allow or deny file access.

This is the one place Yoroi talks to fanotify(7). On-access scanning, integrity monitoring,
behaviour monitoring and application control build on :class:`Fanotify` (or its fake twin
:class:`yoroi.platform.fakes.fanotify.FakeFanotify`) through the :class:`FanotifyLike` protocol.

Use::

    with Fanotify(FanClass.CONTENT) as fan:           # permission events need CONTENT/PRE_CONTENT
        fan.mark("/srv", FanMask.OPEN_PERM | FanMask.CLOSE_WRITE, kind="mount")
        loop.add_reader(fan.fileno(), on_readable)    # or: while True: fan.read(timeout=1.0)
        ...
        for event in fan.read():
            if event.overflow: ...                    # the kernel dropped events: rescan
            if event.is_permission:
                fan.respond_with(event, decide)       # decide(event) -> bool; raising = allow

Events are immutable :class:`FanotifyEvent` objects: ``mask`` (a :class:`FanMask`, whose
``names`` are the ``FAN_*`` words), ``pid`` of the acting process (a thread id with
``FAN_REPORT_TID``), ``fd`` (``None`` in the FID reporting modes), and ``path``, resolved from
the event descriptor through ``/proc/self/fd``, or with ``FAN_REPORT_DFID_NAME`` from the
directory handle (``open_by_handle_at``) plus the entry name.

Descriptor lifetime -- event descriptors are always closed by this class, never by the caller:

* a permission event's ``fd`` (and ``pidfd``) stays open until it is answered: by
  :meth:`Fanotify.respond`, by the deadman, or by :meth:`Fanotify.close`;
* a notification event's descriptors stay open until the next :meth:`Fanotify.read`, or until
  :meth:`Fanotify.release` -- ``os.dup`` the descriptor to keep it longer.

The always-answer guarantee for permission events (a process waiting on an unanswered event
hangs in the kernel):

* every permission event returned by :meth:`read` is tracked until answered;
* a deadman thread answers ALLOW to any event not decided within ``deadman_timeout`` seconds
  (default 1 s), counts it in ``stats().deadman_allowed`` and calls ``on_deadman(event)`` so that
  the caller can raise an alert;
* :meth:`respond_with` answers ALLOW when the decision callback raises (logged and counted);
* a second answer to the same event is ignored (``respond`` returns ``False``);
* :meth:`close` answers ALLOW to every pending event before it closes the group descriptor
  (closing the group also releases openers whose events were never read).

What the guard cannot cover: an event that nobody reads. Keep a reader running while a
permission mark exists, and never open files under such a mark from the thread that reads --
the reading process is not exempt from its own marks (the opener would wait on itself).
``read()`` and ``close()`` belong to one thread; ``respond`` may be called from any thread.

Errors: ``EPERM`` becomes :class:`~yoroi.errors.PermissionDenied`; a flag, event or mark kind
that this kernel or file system refuses (``EINVAL``, ``ENOSYS``, ``EOPNOTSUPP``, ``ENODEV``,
``EXDEV``) becomes :class:`~yoroi.errors.Unsupported` naming the flags; any other ``OSError``
becomes :class:`~yoroi.errors.PlatformError`.

Facts worth knowing (kernel 6.18): the FID reporting modes cannot be combined with the permission
classes; ``FAN_PRE_ACCESS`` needs ``FanClass.PRE_CONTENT`` and a file system that supports it
(ext4 and xfs do, tmpfs does not); ``FAN_MARK_MOUNT`` marks cannot carry directory-entry events
(``CREATE``, ``DELETE``, ``MOVE*``, ``RENAME``); identical events on one file are merged.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Literal, Protocol, Self

from yoroi.errors import PlatformError
from yoroi.platform.linux import _fanotify_abi as abi
from yoroi.platform.linux._fanotify_abi import (
    PERMISSION_EVENTS,
    FanClass,
    FanInit,
    FanMask,
    FanotifyEvent,
    mask_names,
)
from yoroi.platform.linux._fanotify_guard import FanotifyStats, PermissionGuard

__all__ = [
    "Fanotify",
    "FanotifyEvent",
    "FanotifyLike",
    "FanotifyStats",
    "FanClass",
    "FanInit",
    "FanMask",
    "MarkKind",
    "PERMISSION_EVENTS",
    "PermissionGuard",
    "mask_names",
    "read_events",
]

log = logging.getLogger(__name__)

MarkKind = Literal["inode", "mount", "filesystem"]
_NO_FLAGS = FanInit(0)


class FanotifyLike(Protocol):
    """What modules type against: satisfied by :class:`Fanotify` and ``FakeFanotify``."""

    def fileno(self) -> int: ...

    def mark(
        self,
        path: str | os.PathLike[str],
        mask: int,
        *,
        kind: MarkKind = "inode",
        remove: bool = False,
        ignore: bool = False,
        onlydir: bool = False,
    ) -> None: ...

    def read(self, timeout: float | None = None) -> list[FanotifyEvent]: ...

    def respond(
        self, event: FanotifyEvent, allow: bool, *, audit: bool = False, errno: int | None = None
    ) -> bool: ...

    def respond_with(
        self, event: FanotifyEvent, decide: Callable[[FanotifyEvent], bool]
    ) -> bool: ...

    def release(self, event: FanotifyEvent) -> None: ...

    @property
    def pending(self) -> int: ...

    def stats(self) -> FanotifyStats: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Fanotify:
    """A fanotify group: marks, decoded events, and guaranteed answers to permission events.

    ``fan_class`` picks notification only (``NOTIF``) or permission events (``CONTENT``,
    ``PRE_CONTENT``); ``flags`` adds ``FanInit`` options (``UNLIMITED_QUEUE``,
    ``UNLIMITED_MARKS``, ``REPORT_DFID_NAME``, ``REPORT_FID``, ``REPORT_TID``,
    ``REPORT_PIDFD``, ``ENABLE_AUDIT``). ``CLOEXEC`` and ``NONBLOCK`` are always set.
    Needs CAP_SYS_ADMIN.
    """

    def __init__(
        self,
        fan_class: FanClass = FanClass.NOTIF,
        flags: FanInit = _NO_FLAGS,
        *,
        deadman_timeout: float = 1.0,
        on_deadman: Callable[[FanotifyEvent], None] | None = None,
        buffer_size: int = 256 * 1024,
    ) -> None:
        if not deadman_timeout > 0:
            raise ValueError(f"deadman_timeout must be > 0 seconds, not {deadman_timeout!r}")
        self._flags = FanInit(flags | FanInit.CLOEXEC | FanInit.NONBLOCK)
        self._fd = abi.init_group(fan_class, self._flags)
        self._fid_mode = bool(self._flags & abi.FID_MODES)
        self._buffer_size = buffer_size
        self._mount_fds: dict[int, int] = {}
        self._held: dict[int, tuple[int, ...]] = {}
        self._seq = 0
        self._events = 0
        self._overflows = 0
        self._closed = False
        self._guard = PermissionGuard(
            self._send,
            timeout=deadman_timeout,
            on_deadman=on_deadman,
            thread=fan_class != FanClass.NOTIF,
        )

    def fileno(self) -> int:
        """The group descriptor, readable when events wait (for ``loop.add_reader``)."""
        return self._fd

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
        """Add (or ``remove``) ``mask`` on the inode, mount or file system holding ``path``.

        ``ignore`` sets an ignore mark (events in ``mask`` are not reported for it; it survives
        modification); ``onlydir`` refuses a ``path`` that is not a directory.
        """
        flags = abi.MARK_REMOVE if remove else abi.MARK_ADD
        flags |= abi.MARK_KINDS[kind]
        if ignore:
            flags |= abi.MARK_IGNORE | abi.MARK_IGNORED_SURV_MODIFY
        if onlydir:
            flags |= abi.MARK_ONLYDIR
        path = os.fspath(path)
        try:
            abi.fanotify_mark(self._fd, flags, int(mask), path)
        except OSError as exc:
            raise abi.mark_error(exc, path, mask, kind) from exc
        if self._fid_mode and not remove:
            self._remember_mount(path)

    def read(self, timeout: float | None = None) -> list[FanotifyEvent]:
        """The events waiting now (possibly none); with ``timeout``, wait up to that long first.

        Closes the descriptors of the notification events of the previous call.
        """
        if self._closed:
            raise PlatformError("this fanotify group is closed: create a new Fanotify")
        self._release_held()
        if timeout is not None and not select.select([self._fd], [], [], timeout)[0]:
            return []
        try:
            buf = os.read(self._fd, self._buffer_size)
        except BlockingIOError:
            return []
        except OSError as exc:
            raise PlatformError(f"reading fanotify events failed: {exc.strerror}") from exc
        try:
            raws = abi.iter_events(buf)
        except ValueError as exc:
            raise PlatformError(f"undecodable fanotify event buffer: {exc}") from exc
        return [self._build(raw) for raw in raws]

    def respond(
        self, event: FanotifyEvent, allow: bool, *, audit: bool = False, errno: int | None = None
    ) -> bool:
        """Answer a permission event: ALLOW or DENY (optionally ``FAN_AUDIT``, and ``errno``
        for the denied call on kernels with FAN_DENY_ERRNO, else plain DENY).

        Returns ``False`` (and does nothing) when the event was already answered or is not a
        permission event.
        """
        response = abi.FAN_ALLOW if allow else abi.deny_response(errno)
        if audit:
            response |= abi.FAN_AUDIT
        return self._guard.answer(event, response)

    def respond_with(self, event: FanotifyEvent, decide: Callable[[FanotifyEvent], bool]) -> bool:
        """Answer ``event`` with ``decide(event)``; ALLOW if ``decide`` raises. Returns the
        verdict (True = allowed)."""
        return self._guard.decide(event, decide)

    def release(self, event: FanotifyEvent) -> None:
        """Close a notification event's descriptors now rather than at the next ``read``."""
        for fd in self._held.pop(event.seq, ()):
            os.close(fd)

    @property
    def pending(self) -> int:
        """How many permission events are read but not yet answered."""
        return self._guard.pending

    def stats(self) -> FanotifyStats:
        """Counters since the group was created."""
        return FanotifyStats(events=self._events, overflows=self._overflows, **self._guard.counts())

    def close(self) -> None:
        """Answer ALLOW to every pending permission event, then close every descriptor."""
        if self._closed:
            return
        self._closed = True
        self._guard.close()
        self._release_held()
        for fd in self._mount_fds.values():
            os.close(fd)
        self._mount_fds.clear()
        os.close(self._fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()

    def _send(self, event: FanotifyEvent, response: int) -> None:
        assert event.fd is not None
        try:
            self._write_response(event.fd, response)
        finally:
            for fd in (event.fd, event.pidfd):
                if fd is not None and fd >= 0:
                    os.close(fd)

    def _write_response(self, fd: int, response: int) -> None:
        try:
            os.write(self._fd, abi.pack_response(fd, response))
        except OSError as exc:
            plain = response & (abi.FAN_ALLOW | abi.FAN_DENY)
            if plain == response:
                log.error("fanotify refused the answer %#x to fd %d: %s", response, fd, exc)
                return
            # An older kernel refuses FAN_DENY_ERRNO/FAN_AUDIT: the event still needs its answer.
            log.warning("fanotify refused response %#x (%s); answering %#x", response, exc, plain)
            self._write_response(fd, plain)

    def _build(self, raw: abi.RawEvent) -> FanotifyEvent:
        self._seq += 1
        self._events += 1
        event = abi.event_from_raw(self._seq, raw, self._open_handle)
        if event.overflow:
            self._overflows += 1
        if event.is_permission and event.fd is not None:
            self._guard.track(event)
        else:
            fds = tuple(fd for fd in (event.fd, event.pidfd) if fd is not None and fd >= 0)
            if fds:
                self._held[event.seq] = fds
        return event

    def _release_held(self) -> None:
        for fds in self._held.values():
            for fd in fds:
                os.close(fd)
        self._held.clear()

    def _remember_mount(self, path: str) -> None:
        # open_by_handle_at refuses O_PATH descriptors as mount_fd: open a directory for real.
        directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fsid = os.fstatvfs(fd).f_fsid
        if fsid in self._mount_fds:
            os.close(fd)
        else:
            self._mount_fds[fsid] = fd

    def _open_handle(self, fid: abi.FileId) -> str | None:
        mount_fd = self._mount_fds.get(fid.fsid)
        if mount_fd is None:
            return None
        try:
            fd = abi.open_by_handle_at(mount_fd, fid.handle, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return None  # deleted meanwhile (ESTALE): the path cannot be known any more
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)


def read_events(
    fan: FanotifyLike,
    stop: threading.Event,
    handle: Callable[[FanotifyEvent], None],
    what: str,
    timeout: float = 0.2,
) -> None:
    """A reader thread's loop: hand every event to ``handle`` until ``stop`` is set.

    A failing read is logged (naming ``what``) and reading goes on, so that permission events
    keep being answered.
    """
    while not stop.is_set():
        try:
            events = fan.read(timeout=timeout)
        except Exception:
            log.exception("%s: reading fanotify events failed", what)
            continue
        for event in events:
            handle(event)
