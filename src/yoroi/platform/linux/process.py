"""Process information and signalling: who a process is, its family, and stopping or killing it.

:class:`Processes` is the real adapter (:class:`ProcessesLike` is the interface it shares with
``yoroi.platform.fakes.process.FakeProcesses``):

- :meth:`Processes.read` returns a :class:`ProcessInfo` snapshot: parent, name (the kernel's
  ``comm``, at most 15 characters), executable, command line, ids and their names, the audit
  login uid (who logged in, kept across ``su``/``sudo``), start time, cgroup and container id.
  psutil supplies the command line, ids, state and start time; /proc is read directly for what
  psutil lacks or hides: ``loginuid``, ``cgroup``, ``comm`` and the ``" (deleted)"`` mark on an
  executable whose file was removed (psutil strips it; a running binary deleted from disk is
  what droppers do, so :attr:`ProcessInfo.exe_deleted` keeps it, decided by the inode's link
  count, not by the name; ``exe`` is then the path the file had). ``loginuid`` is None when
  unset (4294967295); ``state`` is psutil's status name ("sleeping", "stopped", "zombie").
- :meth:`children`, :meth:`descendants` and :meth:`parent_chain` walk the family from one scan
  of ``/proc/*/stat``; only processes (thread-group leaders) appear, never bare threads.
- :meth:`signal` goes through a pidfd (``os.pidfd_open`` + ``signal.pidfd_send_signal``), and the
  tree operations check the process's start time again after opening the pidfd, so a pid
  reused by an unrelated process in the meantime is never signalled.
- :meth:`stop_tree` freezes a whole family with SIGSTOP from the top down, walking again until
  no new pid appears and every member is seen stopped, so nothing forks away while it is being
  frozen. :meth:`kill_tree` freezes first, then sends SIGKILL to every member (deepest first)
  and waits briefly (on the pidfds) for them to die. :meth:`continue_tree` sends SIGCONT.

Safety: pid 1, the calling process and its ancestors are never signalled
(:class:`~yoroi.errors.ActionRefused` naming the pid). A missing root pid raises
:class:`~yoroi.errors.ProcessGone`; members that exit meanwhile are skipped. A member whose
parent exits before it is stopped is re-parented away (to init or a subreaper) and escapes the
walk: freezing the top first makes this rare, but only a cgroup freeze closes it for good.
"""

from __future__ import annotations

import os
import pwd
import re
import select
import signal as signals
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import psutil

from yoroi.errors import ActionError, ActionRefused, PermissionDenied, PlatformError, ProcessGone

PROC = "/proc"
LOGINUID_UNSET = 4294967295
_STOPPED_STATES = frozenset("TtZX")
_MAX_FREEZE_ROUNDS = 200
_SETTLE_S = 1.0
# "/docker/ID", "docker-ID.scope", "cri-containerd-ID.scope", "crio-ID", "libpod-ID.scope",
# ".../pod<uuid>/ID"; not "libpod-conmon-ID.scope", the monitor that runs outside the container
_CONTAINER_ID = re.compile(r"(?:^|/)(?:[a-z-]*-)?(?<!conmon-)([0-9a-f]{64})(?:\.scope)?(?=/|$)")
_LXC_NAME = re.compile(r"/lxc(?:\.payload\.|/)([^/]+)")


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A snapshot of one process, as read from /proc at one moment."""

    pid: int
    ppid: int
    comm: str
    exe: str | None
    exe_deleted: bool
    cmdline: tuple[str, ...]
    uid: int
    euid: int
    gid: int
    user: str | None
    loginuid: int | None
    login_user: str | None
    start_time: float
    cgroup: str | None
    container_id: str | None
    state: str = psutil.STATUS_RUNNING


class ProcessesLike(Protocol):
    """Process information and signalling: met by :class:`Processes` and its fake twin."""

    def read(self, pid: int) -> ProcessInfo: ...
    def pids(self) -> list[int]: ...
    def children(self, pid: int) -> list[int]: ...
    def descendants(self, pid: int) -> list[int]: ...
    def parent_chain(self, pid: int) -> list[ProcessInfo]: ...
    def signal(self, pid: int, sig: int) -> None: ...
    def stop_tree(self, pid: int) -> list[int]: ...
    def kill_tree(self, pid: int, timeout: float = 2.0) -> list[int]: ...
    def continue_tree(self, pid: int) -> list[int]: ...


def subtree(ppids: Mapping[int, int], root: int) -> list[int]:
    """``root`` and every descendant in ``ppids`` (pid -> parent pid), parents before children."""
    kids: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        kids.setdefault(ppid, []).append(pid)
    order, seen = [root], {root}
    for pid in order:
        for child in sorted(kids.get(pid, ())):
            if child not in seen:
                seen.add(child)
                order.append(child)
    return order


def container_id(cgroup: str | None) -> str | None:
    """The container a cgroup path names (docker, containerd, CRI-O, podman, LXC), or None."""
    if not cgroup:
        return None
    match = _CONTAINER_ID.search(cgroup)
    if match:
        return match.group(1)
    lxc = _LXC_NAME.search(cgroup)
    return lxc.group(1) if lxc else None


@lru_cache(maxsize=1024)
def user_name(uid: int | None) -> str | None:
    """The account name of ``uid``, or None when it has none (or ``uid`` is None)."""
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def refusal(pid: int, protected: Iterable[int]) -> ActionRefused | None:
    """The error to raise when signalling ``pid`` would hit init, the caller or its ancestors."""
    if pid <= 1:
        return ActionRefused(f"refusing to signal pid {pid}: init and process groups are never hit")
    if pid in protected:
        return ActionRefused(
            f"refusing to signal pid {pid}: it is this agent (pid {os.getpid()}) or its ancestor"
        )
    return None


@dataclass(frozen=True, slots=True)
class _Stat:
    ppid: int
    state: str
    starttime: int


def _read_stat(pid: int) -> _Stat | None:
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return _Stat(ppid=int(fields[1]), state=fields[0].decode(), starttime=int(fields[19]))


def _scan() -> dict[int, _Stat]:
    table: dict[int, _Stat] = {}
    for name in os.listdir(PROC):
        if name.isdigit() and (stat := _read_stat(int(name))) is not None:
            table[int(name)] = stat
    return table


def _ppids(table: Mapping[int, _Stat]) -> dict[int, int]:
    return {pid: stat.ppid for pid, stat in table.items()}


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def _loginuid(pid: int) -> int | None:
    text = _read_text(f"{PROC}/{pid}/loginuid")
    if text is None or not text.strip().isdigit():
        return None
    value = int(text)
    return None if value == LOGINUID_UNSET else value


def _cgroup(pid: int) -> str | None:
    """The cgroup v2 path ("0::/..."), else the first v1 hierarchy's path."""
    text = _read_text(f"{PROC}/{pid}/cgroup")
    paths = [line.split(":", 2) for line in (text or "").splitlines() if line.count(":") >= 2]
    unified = [path for hid, _, path in paths if hid == "0"]
    if unified:
        return unified[0]
    return paths[0][2] if paths else None


def _exe(pid: int) -> tuple[str | None, bool]:
    try:
        target = os.readlink(f"{PROC}/{pid}/exe")
        if not target.endswith(" (deleted)"):
            return target, False
        gone = os.stat(f"{PROC}/{pid}/exe").st_nlink == 0
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None, False  # kernel threads have no executable; others' need privilege
    return (target[: -len(" (deleted)")] if gone else target), gone


def _protected() -> set[int]:
    """Our own pid and every ancestor up to init, read fresh (we may have been re-parented)."""
    guarded, pid = {1, os.getpid()}, os.getppid()
    while pid > 1 and pid not in guarded:
        guarded.add(pid)
        stat = _read_stat(pid)
        pid = stat.ppid if stat else 0
    return guarded


class Processes:
    """The real process adapter over /proc, psutil and pidfds (stateless apart from caches)."""

    def read(self, pid: int) -> ProcessInfo:
        """A snapshot of ``pid``; ProcessGone when it does not exist (any more)."""
        try:
            return self._read(pid)
        except psutil.NoSuchProcess as exc:
            raise ProcessGone(f"process {pid} does not exist (it exited)") from exc
        except psutil.AccessDenied as exc:
            raise PermissionDenied(f"reading process {pid} needs more privilege: {exc}") from exc

    def pids(self) -> list[int]:
        """Every process id now, ascending."""
        return sorted(psutil.pids())

    def children(self, pid: int) -> list[int]:
        """The direct children of ``pid``."""
        table = self._table(pid)
        return sorted(child for child, stat in table.items() if stat.ppid == pid)

    def descendants(self, pid: int) -> list[int]:
        """The whole subtree under ``pid`` (not ``pid`` itself), parents before children."""
        return subtree(_ppids(self._table(pid)), pid)[1:]

    def parent_chain(self, pid: int) -> list[ProcessInfo]:
        """The parent of ``pid``, its parent, ... up to pid 1; stops early if one exits."""
        chain: list[ProcessInfo] = []
        seen = {pid}
        ppid = self.read(pid).ppid
        while ppid > 0 and ppid not in seen:
            try:
                info = self.read(ppid)
            except ProcessGone:
                break
            chain.append(info)
            seen.add(ppid)
            ppid = info.ppid
        return chain

    def signal(self, pid: int, sig: int) -> None:
        """Send ``sig`` to ``pid`` through a pidfd; ProcessGone when it no longer exists."""
        self._refuse(pid, _protected())
        fd = self._pidfd(pid)
        if fd is None:
            raise ProcessGone(f"process {pid} does not exist (it exited)")
        try:
            if not _send(fd, sig):
                raise ProcessGone(f"process {pid} exited before signal {sig} reached it")
        finally:
            os.close(fd)

    def stop_tree(self, pid: int) -> list[int]:
        """SIGSTOP ``pid`` and all its descendants until none is left running; the pids."""
        held = self._freeze(pid)
        _close_all(held)
        return list(held)

    def kill_tree(self, pid: int, timeout: float = 2.0) -> list[int]:
        """Freeze the family, SIGKILL every member (deepest first), wait ≤ ``timeout`` s."""
        held = self._freeze(pid)
        try:
            killed = [p for p in reversed(held) if _send(held[p][0], signals.SIGKILL)]
            _wait_exited([fd for fd, _ in held.values()], timeout)
        finally:
            _close_all(held)
        return killed

    def continue_tree(self, pid: int) -> list[int]:
        """SIGCONT ``pid`` and its descendants (children first); the pids resumed."""
        protected = _protected()
        self._refuse(pid, protected)
        table = self._table(pid)
        members = [p for p in subtree(_ppids(table), pid) if p not in protected]
        return [p for p in reversed(members) if self._signal_known(p, table[p], signals.SIGCONT)]

    def _read(self, pid: int) -> ProcessInfo:
        proc = psutil.Process(pid)
        with proc.oneshot():
            ppid, state, started = proc.ppid(), proc.status(), proc.create_time()
            uids, gids = proc.uids(), proc.gids()
            cmdline = self._cmdline(proc)
        comm = (_read_text(f"{PROC}/{pid}/comm") or proc.name()).rstrip("\n")
        exe, deleted = _exe(pid)
        loginuid, cgroup = _loginuid(pid), _cgroup(pid)
        return ProcessInfo(
            pid=pid, ppid=ppid, comm=comm, exe=exe, exe_deleted=deleted, cmdline=cmdline,
            uid=uids.real, euid=uids.effective, gid=gids.real, user=user_name(uids.real),
            loginuid=loginuid, login_user=user_name(loginuid), start_time=started,
            cgroup=cgroup, container_id=container_id(cgroup), state=state,
        )  # fmt: skip

    @staticmethod
    def _cmdline(proc: psutil.Process) -> tuple[str, ...]:
        try:
            return tuple(proc.cmdline())
        except (psutil.ZombieProcess, psutil.AccessDenied):
            return ()

    @staticmethod
    def _table(root: int) -> dict[int, _Stat]:
        table = _scan()
        if root not in table:
            raise ProcessGone(f"process {root} does not exist (it exited)")
        return table

    @staticmethod
    def _refuse(pid: int, protected: set[int]) -> None:
        error = refusal(pid, protected)
        if error is not None:
            raise error

    @staticmethod
    def _pidfd(pid: int, starttime: int | None = None) -> int | None:
        """A pidfd for ``pid``; None if gone or if ``starttime`` shows the pid was reused."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        except OSError as exc:
            raise PlatformError(f"cannot open a pidfd for {pid} (a thread id?): {exc}") from exc
        if starttime is not None:
            now = _read_stat(pid)
            if now is None or now.starttime != starttime:
                os.close(fd)
                return None
        return fd

    def _signal_known(self, pid: int, stat: _Stat, sig: int) -> bool:
        fd = self._pidfd(pid, stat.starttime)
        if fd is None:
            return False
        try:
            return _send(fd, sig)
        finally:
            os.close(fd)

    def _freeze(self, root: int) -> dict[int, tuple[int, int]]:
        """SIGSTOP the family top-down until a settled rescan finds no one new.

        Returns pid -> (pidfd, start time) in stop order; a pid seen again with another start
        time was reused by a new process, which is stopped too.
        """
        protected = _protected()
        self._refuse(root, protected)
        table = self._table(root)
        held: dict[int, tuple[int, int]] = {}
        settled = False
        try:
            for _ in range(_MAX_FREEZE_ROUNDS):
                fresh = _unheld(table, root, held, protected)
                if not fresh and settled:
                    return held
                settled = not fresh
                if settled:
                    _wait_stopped(held)
                for pid in fresh:
                    self._stop_one(pid, table[pid].starttime, held)
                table = _scan()
        except BaseException:
            _close_all(held)
            raise
        _close_all(held)
        raise ActionError(f"process tree of {root} kept growing while being stopped; retry")

    def _stop_one(self, pid: int, starttime: int, held: dict[int, tuple[int, int]]) -> None:
        fd = self._pidfd(pid, starttime)
        if fd is None:
            return
        if not _send(fd, signals.SIGSTOP):
            os.close(fd)
            return
        if pid in held:
            os.close(held.pop(pid)[0])
        held[pid] = (fd, starttime)


def _unheld(
    table: Mapping[int, _Stat], root: int, held: Mapping[int, tuple[int, int]], protected: set[int]
) -> list[int]:
    """Members of the family in ``table`` not stopped yet (a reused pid counts as new)."""
    family = subtree(_ppids(table), root)
    return [
        p for p in family
        if p in table and p not in protected and held.get(p, (0, -1))[1] != table[p].starttime
    ]  # fmt: skip


def _send(fd: int, sig: int) -> bool:
    """Signal through a pidfd; False when the process has already exited."""
    try:
        signals.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return False
    return True


def _close_all(held: Mapping[int, tuple[int, int]]) -> None:
    for fd, _ in held.values():
        os.close(fd)


def _wait_stopped(held: Mapping[int, object], timeout: float = _SETTLE_S) -> None:
    """Until every held process shows stopped (or dead); a task in D state may take longer."""
    deadline = time.monotonic() + timeout
    waiting = list(held)
    while waiting and time.monotonic() < deadline:
        waiting = [p for p in waiting if (s := _read_stat(p)) and s.state not in _STOPPED_STATES]
        if waiting:
            time.sleep(0.002)


def _wait_exited(fds: Iterable[int], timeout: float) -> None:
    """Until every pidfd reports its process exited (a pidfd turns readable then)."""
    poller = select.poll()
    pending = set(fds)
    for fd in pending:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while pending and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            pending.discard(fd)
            poller.unregister(fd)
