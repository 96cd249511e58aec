"""The enforcement engine: fanotify permission events judged against the trust database.

:class:`Enforcer` opens a ``CONTENT`` fanotify group and marks the mounts (or file systems) of
the watched paths with ``FAN_OPEN_EXEC_PERM`` (every exec) and ``FAN_OPEN_PERM`` (the opens
:mod:`~yoroi.modules.appcontrol.loaders` counts as code loads). One reader thread answers:

1. the agent's own process, the pids it was told to protect and their ancestors: allow at once;
2. a file outside the scope, not a regular file, or a plain data read: allow at once;
3. an exec from a memfd: :func:`~yoroi.modules.appcontrol.memfd.memfd_decision`;
4. a verdict cached for the file's identity (device, inode, ctime, size) and path: answer now;
5. otherwise a worker of a small pool judges (hashing through a duplicate of the event's
   descriptor, so that nothing on the watched mounts is opened by name) and answers; in audit
   mode the event is allowed first and judged afterwards.

The fanotify deadman answers ALLOW to any event not decided within ``decision_timeout`` and
reports :attr:`Reason.DEADMAN`. :meth:`Enforcer.stop` (and the reader thread dying, and the
process dying: the kernel then drops the group) releases every pending event with ALLOW.
Reports go to ``on_decision(decision, execution)`` from a reporter thread, never from the
decision path: every denial, every unrecognised execution in audit mode, every deadman allow.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from yoroi.errors import PlatformError
from yoroi.modules.appcontrol.loaders import (
    DEFAULT_INTERPRETERS,
    DEFAULT_LOADERS,
    Execution,
    LoadKind,
    LoadRules,
    OpenersLike,
    ProcOpeners,
    ancestors,
    describe,
)
from yoroi.modules.appcontrol.memfd import MemfdGuard, is_memfd_path, memfd_decision
from yoroi.modules.appcontrol.types import Decision, FileIdentity, Mode, Reason
from yoroi.platform.linux.fanotify import (
    FanClass,
    FanMask,
    Fanotify,
    FanotifyEvent,
    FanotifyLike,
    MarkKind,
)
from yoroi.platform.linux.sysctl import Sysctl, SysctlLike

log = logging.getLogger(__name__)

_CACHE_MAX = 65_536
_READ_TIMEOUT = 0.2  # how often the reader looks at the stop flag
_MASK = FanMask.OPEN_EXEC_PERM | FanMask.OPEN_PERM


class Judge(Protocol):
    """Decides whether a file is trusted (``TrustDatabase`` is one); may hash through ``fd``."""

    def judge(self, path: str, fd: int, identity: FileIdentity, mode_bits: int) -> Decision: ...


@dataclass(frozen=True)
class Scope:
    """Which executions are judged: files under ``paths`` (all watched paths when empty), run by
    a user in ``uids`` (everyone when empty). Anything else is allowed unreported."""

    paths: tuple[str, ...] = ()
    uids: frozenset[int] = frozenset()


@dataclass
class EnforcerStats:
    """Counters since start; ``deadman`` > 0 means decisions came too late."""

    events: int = 0
    protected: int = 0
    ignored: int = 0
    cache_hits: int = 0
    judged: int = 0
    denied: int = 0
    reported: int = 0
    deadman: int = 0
    errors: int = 0


OnDecision = Callable[[Decision, Execution], None]
FanotifyFactory = Callable[[float, Callable[[FanotifyEvent], None]], FanotifyLike]
_Key = tuple[FileIdentity, str]


def real_fanotify(timeout: float, on_deadman: Callable[[FanotifyEvent], None]) -> FanotifyLike:
    """A kernel fanotify group able to take permission events."""
    return Fanotify(FanClass.CONTENT, deadman_timeout=timeout, on_deadman=on_deadman)


class Enforcer:
    """Allows, denies and reports every execution and code load under ``paths``.

    ``mode`` is audit (allow and report) or enforce (deny and report). ``protected_pids`` adds
    the agent's pid (the enforcer's own process is always protected); their ancestors are
    protected too. ``mark_kind`` is ``"mount"`` (default) or ``"filesystem"``.
    """

    def __init__(
        self,
        judge: Judge,
        mode: Mode,
        paths: Sequence[str],
        *,
        decision_timeout: float = 1.0,
        scope: Scope | None = None,
        on_decision: OnDecision | None = None,
        interpreters: Sequence[str] = DEFAULT_INTERPRETERS,
        loader_names: Sequence[str] = DEFAULT_LOADERS,
        protected_pids: Iterable[int] = (),
        workers: int = 2,
        mark_kind: MarkKind = "mount",
        fanotify: FanotifyFactory = real_fanotify,
        sysctl: SysctlLike | None = None,
        openers: OpenersLike | None = None,
    ) -> None:
        if not paths:
            raise ValueError("Enforcer needs at least one path to watch")
        self._judge, self.mode = judge, Mode(mode)
        self._paths = tuple(os.path.realpath(p) for p in paths)
        scope = scope or Scope()
        self._prefixes = tuple(_prefix(p) for p in (scope.paths or self._paths))
        self._uids = scope.uids
        self._timeout, self._mark_kind = decision_timeout, mark_kind
        self._on_decision = on_decision
        self._rules = LoadRules(tuple(interpreters), tuple(loader_names))
        self._openers = openers or ProcOpeners()
        self._extra_protected = tuple(protected_pids)
        self._protected: frozenset[int] = frozenset()
        self._workers, self._make_fanotify = workers, fanotify
        self._memfd = MemfdGuard(sysctl or Sysctl(), self.mode)
        self._cache: dict[_Key, Decision] = {}
        self._inflight: dict[_Key, list[tuple[FanotifyEvent, LoadKind]]] = {}
        self._lock = threading.Lock()
        self._stats = EnforcerStats()
        self._last_exec: tuple[int, str] | None = None
        self._reports: queue.SimpleQueue[tuple[Decision, Execution] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._fan: FanotifyLike | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None

    @property
    def memfd_problem(self) -> str | None:
        """Why ``vm.memfd_noexec`` could not be set or restored, if it could not."""
        return self._memfd.problem

    def start(self) -> None:
        """Mark the paths and start answering; PlatformError (nothing left marked) on failure."""
        me = os.getpid()
        seeds = {me, *self._extra_protected}
        self._protected = frozenset(seeds | {a for p in seeds for a in ancestors(self._openers, p)})
        fan = self._make_fanotify(self._timeout, self._deadman)
        try:
            for path in self._paths:
                fan.mark(path, _MASK, kind=self._mark_kind)
        except BaseException:
            fan.close()
            raise
        self._fan, self._stop = fan, threading.Event()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="appcontrol-judge")
        self._memfd.start()
        self._spawn(self._read_loop, "appcontrol-reader")
        self._spawn(self._report_loop, "appcontrol-reporter")

    def stop(self) -> None:
        """Release every pending event (ALLOW), stop the threads, restore ``vm.memfd_noexec``."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        if self._pool is not None:
            # A judge stuck on I/O must not hold stop: its late answer is ignored.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._memfd.stop()

    def __enter__(self) -> Enforcer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def clear_cache(self) -> None:
        """Forget every verdict: call after the trust database changed (allow, maintenance)."""
        with self._lock:
            self._cache.clear()

    def stats(self) -> EnforcerStats:
        """A copy of the counters."""
        with self._lock:
            return dataclasses.replace(self._stats)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _read_loop(self) -> None:
        fan = self._fan
        assert fan is not None
        try:
            while not self._stop.is_set():
                for event in fan.read(timeout=_READ_TIMEOUT):
                    if event.is_permission:
                        self._on_event(fan, event)
        except BaseException as exc:  # a dead reader must not leave openers waiting
            self.error = exc
            log.exception("appcontrol reader failed: releasing every pending event")
        finally:
            self._release(fan)
            self._reports.put(None)

    def _release(self, fan: FanotifyLike) -> None:
        """Unmark, answer what is queued, then close: a forked child between fork and exec
        holds a copy of the group descriptor, so closing ours alone may not end the group."""
        for path in self._paths:
            try:
                fan.mark(path, _MASK, kind=self._mark_kind, remove=True)
            except PlatformError as exc:
                log.warning("appcontrol could not unmark %s: %s", path, exc)
        try:
            for event in fan.read(timeout=0):
                if event.is_permission:
                    fan.respond(event, True)
        except PlatformError:
            log.exception("appcontrol could not drain its last events")
        fan.close()

    def _on_event(self, fan: FanotifyLike, event: FanotifyEvent) -> None:
        self._count("events")
        try:
            self._dispatch(fan, event)
        except Exception:
            self._count("errors")
            log.exception("appcontrol could not judge %s: allowing it", event.path)
            fan.respond(event, True)

    def _dispatch(self, fan: FanotifyLike, event: FanotifyEvent) -> None:
        if event.pid in self._protected:
            self._count("protected")
            fan.respond(event, True)
            return
        path = event.path or ""
        if event.mask & FanMask.OPEN_EXEC_PERM and is_memfd_path(path):
            self._apply(fan, event, LoadKind.MEMFD, memfd_decision(path))
            return
        kind = self._kind(event, path)
        info = os.fstat(event.fd) if kind is not None and event.fd is not None else None
        if kind is None or info is None or not stat.S_ISREG(info.st_mode):
            self._count("ignored")
            fan.respond(event, True)
            return
        key = (_identity(info), path)
        cached = self._cache.get(key)
        if cached is not None:
            self._count("cache_hits")
            self._apply(fan, event, kind, cached)
        else:
            self._submit(fan, event, kind, key, stat.S_IMODE(info.st_mode))

    def _kind(self, event: FanotifyEvent, path: str) -> LoadKind | None:
        if not path.startswith(self._prefixes) or not self._in_user_scope(event.pid):
            return None
        if event.mask & FanMask.OPEN_EXEC_PERM:
            self._last_exec = (event.pid, path)
            return LoadKind.EXEC
        last, self._last_exec = self._last_exec, None
        if last == (event.pid, path):  # the plain open that follows every allowed exec
            return None
        return self._rules.classify(self._openers, event.pid, path)

    def _in_user_scope(self, pid: int) -> bool:
        return not self._uids or self._openers.uid(pid) in self._uids

    def _submit(
        self, fan: FanotifyLike, event: FanotifyEvent, kind: LoadKind, key: _Key, mode: int
    ) -> None:
        with self._lock:
            waiting = self._inflight.get(key)
            if waiting is not None:
                waiting.append((event, kind))
                return
            self._inflight[key] = [] if self.mode is Mode.AUDIT else [(event, kind)]
        assert event.fd is not None and self._pool is not None
        fd = os.dup(event.fd)  # the deadman may close event.fd while the worker still hashes
        if self.mode is Mode.AUDIT:
            fan.respond(event, True)
            self._pool.submit(self._judge_later, fan, key, fd, mode, (event, kind))
        else:
            self._pool.submit(self._judge_later, fan, key, fd, mode, None)

    def _judge_later(
        self,
        fan: FanotifyLike,
        key: _Key,
        fd: int,
        mode: int,
        answered: tuple[FanotifyEvent, LoadKind] | None,
    ) -> None:
        identity, path = key
        try:
            decision = self._judge.judge(path, fd, identity, mode)
            self._count("judged")
        except Exception:
            self._count("errors")
            log.exception("appcontrol judge failed on %s: allowing it", path)
            decision = Decision(allow=True, reason=Reason.UNKNOWN, path=path, rule="error")
        finally:
            os.close(fd)
        with self._lock:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key] = decision
            waiting = self._inflight.pop(key, [])
        if answered is not None:
            self._report(answered[0], answered[1], decision)
        for event, kind in waiting:
            self._apply(fan, event, kind, decision)

    def _apply(
        self, fan: FanotifyLike, event: FanotifyEvent, kind: LoadKind, decision: Decision
    ) -> None:
        """Answer ``event`` with the mode's verdict on ``decision``; report if unrecognised."""
        deny = not decision.allow and self.mode is Mode.ENFORCE
        if decision.allow:
            fan.respond(event, True)
            return
        execution = self._execution(event, kind)  # read before the answer lets it exit
        if fan.respond(event, not deny):
            self._count("denied" if deny else "reported")
            self._report_execution(decision if deny else _allowed(decision), execution)

    def _report(self, event: FanotifyEvent, kind: LoadKind, decision: Decision) -> None:
        if not decision.allow:
            self._count("reported")
            self._report_execution(_allowed(decision), self._execution(event, kind))

    def _report_execution(self, decision: Decision, execution: Execution) -> None:
        if self._on_decision is not None:
            self._reports.put((decision, execution))

    def _deadman(self, event: FanotifyEvent) -> None:
        self._count("deadman")
        path = event.path or ""
        decision = Decision(allow=True, reason=Reason.DEADMAN, path=path, rule="deadman")
        self._report_execution(decision, self._execution(event, LoadKind.EXEC))

    def _execution(self, event: FanotifyEvent, kind: LoadKind) -> Execution:
        return describe(self._openers, event.pid, event.path or "", kind)

    def _report_loop(self) -> None:
        while (item := self._reports.get()) is not None:
            assert self._on_decision is not None
            try:
                self._on_decision(*item)
            except Exception:
                log.exception("appcontrol on_decision callback failed")

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self._stats, name, getattr(self._stats, name) + 1)


def _allowed(decision: Decision) -> Decision:
    return dataclasses.replace(decision, allow=True)


def _prefix(path: str) -> str:
    return path.rstrip("/") + "/"


def _identity(info: os.stat_result) -> FileIdentity:
    return FileIdentity(info.st_dev, info.st_ino, info.st_ctime_ns, info.st_size)
