"""The live process tree, and which *family* of processes a file event belongs to.

:class:`ProcessTree` is an in-memory view of the processes: a snapshot of /proc
(:meth:`~ProcessTree.snapshot`), kept current by proc connector events
(:meth:`~ProcessTree.apply`). A fork copies the parent's node (same image); an exec marks the
node stale and its executable and command line are read again on the next look-up; an exit
leaves a tombstone for ``grace`` seconds, so that file events that arrive late are still
attributed, and so that a child keeps its family link after its parent died.

Family attribution. Ransomware that forks a child per few files is one actor, not many; a shell
an administrator types in is not part of what it runs. A *boundary* ends a family:

- pid 0-2 and kernel threads, the agent's own pid and its ancestors;
- an interactive shell: a shell executable (bash, sh, dash, zsh, fish, ksh, busybox sh) with
  no ``-c`` and no script operand, whose stdin is a terminal (or that is a login shell,
  argv[0] ``-bash``). A shell reading commands from a pipe (``curl ... | sh``) is not
  interactive, and neither is a fork of an interactive shell (a subshell or loop body);
- a session or service manager (systemd, sshd, su, sudo, cron, tmux, containerd-shim, ...) and
  names added by policy.

Names are taken from the executable's file name (a multi-call busybox from argv[0], a script's
interpreter from the script or ``-m`` module), never from ``comm``, which any process may set;
a program running from /tmp, /var/tmp, /dev/shm, /run/user, a memfd or a deleted file is never
a boundary or trusted, whatever its name.

:meth:`~ProcessTree.chain_below_boundary` gives the acting pid and its ancestors up to (not
including) the first boundary: the caller accumulates scores at every level.
:meth:`~ProcessTree.choose_family` picks the lowest level over the threshold and extends it
upward over fork clones (same executable, same command line). Why the lowest: a pytest process
that ran a ransomware simulator accumulates the simulator's score too, but it is not the actor
and must not be killed with it. Why the extension: a ransomware that forks a worker per file is
one program, so stopping a worker alone leaves the parent forking the next. Why scores at every
level: a shell *script* running ``openssl`` once per file has no single child over the
threshold, but the script (the level that accumulated them all) is.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from yoroi.errors import PlatformError
from yoroi.modules.behavior.programs import (
    fd_link,
    invocation,
    matches,
    program_names,
    shell_name,
    untrusted_location,
)
from yoroi.platform.linux.proc_connector import (
    ExecEvent,
    ExitEvent,
    ForkEvent,
    LostEvent,
    ProcEvent,
)
from yoroi.platform.linux.process import ProcessesLike, ProcessInfo

SESSION_MANAGERS: tuple[str, ...] = (
    "systemd", "init", "sshd", "sshd-session", "login", "su", "sudo", "cron", "crond",
    "anacron", "tmux", "screen", "containerd-shim*", "runc", "conmon", "docker-init", "tini",
    "supervisord",
)  # fmt: skip
TRUSTED_PROGRAMS: tuple[str, ...] = (
    "apt", "apt-get", "dpkg", "unattended-upgr", "unattended-upgrade", "pip",
)  # fmt: skip
_TTY_PREFIXES = ("/dev/pts/", "/dev/tty", "/dev/console")
_KTHREADD = 2
_PID_REUSE_SLACK_S = 2.0  # psutil's start time rounds boot time to whole seconds
_DESCRIBE_DEPTH = 8
@dataclass(frozen=True, slots=True)
class ProcessNode:
    """One process as the tree knows it: the last snapshot plus what events said since."""

    info: ProcessInfo
    stdin: str | None = None  # where fd 0 pointed when read (shells only)
    exited_at: float | None = None  # the tree clock's time of exit; None while alive
    stale: bool = False  # an exec was seen; exe and cmdline are read again on next look-up
    image_known: bool = True  # False when it exited (or exec'd again) before we could read it

    @property
    def pid(self) -> int:
        return self.info.pid

    @property
    def ppid(self) -> int:
        return self.info.ppid

    @property
    def alive(self) -> bool:
        return self.exited_at is None


def _same_image(child: ProcessNode, parent: ProcessNode) -> bool:
    """The child is a fork clone of the parent: same executable, same command line."""
    if not (child.image_known and parent.image_known) or child.stale:
        return False
    return (child.info.exe, child.info.cmdline) == (parent.info.exe, parent.info.cmdline)


class ProcessTree:
    """Live processes and their families, fed by :meth:`apply`; every method is thread-safe."""

    def __init__(
        self,
        processes: ProcessesLike,
        *,
        agent_pid: int | None = None,
        boundaries: Iterable[str] = (),
        grace: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        fd_reader: Callable[[int, int], str | None] = fd_link,
    ) -> None:
        self._procs = processes
        self._agent = os.getpid() if agent_pid is None else agent_pid
        self._managers = SESSION_MANAGERS + tuple(boundaries)
        self._grace = grace
        self._clock = clock
        self._fd = fd_reader
        self._nodes: dict[int, ProcessNode] = {}
        self._kids: dict[int, set[int]] = {}
        self._graves: deque[tuple[float, int]] = deque()
        self._guarded = frozenset({0, 1, _KTHREADD, self._agent})
        self._lock = threading.RLock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._nodes)

    # -- keeping the view current -------------------------------------------------------------

    def snapshot(self) -> None:
        """Read every process in /proc; known processes missing now become tombstones."""
        with self._lock:
            seen: set[int] = set()
            for pid in self._procs.pids():
                node = self._read(pid, self._nodes.get(pid))
                if node is not None:
                    self._put(node)
                    seen.add(pid)
            for pid in [p for p, n in self._nodes.items() if n.alive and p not in seen]:
                self._bury(pid)
            self._guarded = self._agent_line()

    def apply(self, event: ProcEvent) -> None:
        """Update the view with one proc connector event (a LostEvent rescans /proc)."""
        with self._lock:
            if isinstance(event, ForkEvent) and event.is_process:
                self._on_fork(event)
            elif isinstance(event, ExecEvent):
                self._on_exec(event.tgid)
            elif isinstance(event, ExitEvent) and event.is_process:
                self._bury(event.tgid)
            elif isinstance(event, LostEvent):
                self.snapshot()
            self.expire()

    def expire(self) -> None:
        """Forget tombstones older than the grace period; their orphans get their real parent."""
        with self._lock:
            now = self._clock()
            while self._graves and self._graves[0][0] + self._grace <= now:
                died, pid = self._graves.popleft()
                node = self._nodes.get(pid)
                if node is not None and node.exited_at == died:
                    self._drop(pid)

    def _on_fork(self, event: ForkEvent) -> None:
        if self._is_grave(event.tgid):
            self._drop(event.tgid)  # the pid was reused: the old tombstone's orphans move
        parent = self._fresh(event.parent_tgid)
        if parent is None:
            child = self._read(event.tgid, None)
            if child is not None:
                self._put(child)
            return
        info = dataclasses.replace(
            parent.info, pid=event.tgid, ppid=parent.pid, start_time=event.wall_time()
        )
        self._put(dataclasses.replace(parent, info=info, exited_at=None))

    def _on_exec(self, pid: int) -> None:
        node = self._nodes.get(pid)
        if node is None:
            node = self._read(pid, None)
            if node is not None:
                self._put(node)
        elif node.alive:
            self._put(dataclasses.replace(node, stale=True))

    def _bury(self, pid: int) -> None:
        node = self._nodes.get(pid)
        if node is None or not node.alive:
            return
        now = self._clock()
        self._put(dataclasses.replace(node, exited_at=now))
        self._graves.append((now, pid))

    def _read(self, pid: int, prior: ProcessNode | None) -> ProcessNode | None:
        """A fresh node from /proc; None when the process is gone and was not known."""
        try:
            info = self._procs.read(pid)
        except PlatformError:
            info = None
        if info is None or info.state == "zombie":  # gone: what we knew stays, if anything
            if prior is None:
                return None
            known = prior.image_known and not prior.stale
            return dataclasses.replace(prior, stale=False, image_known=known)
        if prior is not None and info.ppid != prior.ppid and self._is_grave(prior.ppid):
            # re-parented to init after its parent died: the family link is the old parent
            info = dataclasses.replace(info, ppid=prior.ppid)
        stdin = self._fd(pid, 0) if shell_name(info) else None
        return ProcessNode(info=info, stdin=stdin)

    def _is_grave(self, pid: int) -> bool:
        node = self._nodes.get(pid)
        return node is not None and not node.alive

    def _fresh(self, pid: int) -> ProcessNode | None:
        node = self._nodes.get(pid)
        if node is None or node.stale:
            node = self._read(pid, node)
            if node is not None:
                self._put(node)
        return node

    def _put(self, node: ProcessNode) -> None:
        old = self._nodes.get(node.pid)
        if old is not None and old.ppid != node.ppid:
            self._kids.get(old.ppid, set()).discard(node.pid)
        self._nodes[node.pid] = node
        self._kids.setdefault(node.ppid, set()).add(node.pid)

    def _drop(self, pid: int) -> None:
        node = self._nodes.pop(pid)
        self._kids.get(node.ppid, set()).discard(pid)
        for child in sorted(self._kids.pop(pid, set())):
            orphan = self._nodes.get(child)
            if orphan is not None and orphan.ppid == pid:
                self._put(self._reparented(orphan))

    def _reparented(self, orphan: ProcessNode) -> ProcessNode:
        try:
            ppid = self._procs.read(orphan.pid).ppid if orphan.alive else 0
        except PlatformError:
            ppid = 0
        return dataclasses.replace(orphan, info=dataclasses.replace(orphan.info, ppid=ppid))

    def _agent_line(self) -> frozenset[int]:
        line = {0, 1, _KTHREADD, self._agent}
        node = self._nodes.get(self._agent)
        while node is not None and node.ppid not in line:
            line.add(node.ppid)
            node = self._nodes.get(node.ppid)
        return frozenset(line)

    # -- reading ---------------------------------------------------------------------------

    def node(self, pid: int) -> ProcessNode | None:
        """The process (alive, or a tombstone within the grace period), read again if stale."""
        with self._lock:
            return self._fresh(pid)

    def children(self, pid: int) -> list[int]:
        """The direct children the tree knows of (tombstones included)."""
        with self._lock:
            return sorted(self._kids.get(pid, ()))

    def parent_chain(self, pid: int) -> list[ProcessNode]:
        """The parent, grandparent, ... as far as the tree knows them (not ``pid`` itself)."""
        with self._lock:
            chain: list[ProcessNode] = []
            node = self._fresh(pid)
            seen = {pid}
            while node is not None:
                node = self._parent(node)
                if node is None or node.pid in seen:
                    break
                chain.append(node)
                seen.add(node.pid)
            return chain

    def _parent(self, node: ProcessNode) -> ProcessNode | None:
        if node.ppid <= 0:
            return None
        parent = self._fresh(node.ppid)
        if parent is None or parent.info.start_time > node.info.start_time + _PID_REUSE_SLACK_S:
            return None  # the parent pid now belongs to a younger, unrelated process
        return parent

    def is_boundary(self, pid: int) -> bool:
        """True when ``pid`` ends a family (see the module docstring)."""
        with self._lock:
            node = self._fresh(pid)
            if node is None:
                return pid in self._guarded
            return self._boundary(node)

    def _boundary(self, node: ProcessNode) -> bool:
        if node.pid in self._guarded or node.ppid == _KTHREADD:
            return True
        info = node.info
        if untrusted_location(info):
            return False
        if matches(program_names(info), self._managers):
            return True
        return self._interactive(node)

    def _interactive(self, node: ProcessNode) -> bool:
        how = invocation(node.info)
        if how is None or how.family != "shell" or how.inline is not None or how.script:
            return False
        parent = self._nodes.get(node.ppid)
        if parent is not None and _same_image(node, parent):
            return False  # a subshell or a loop body forked from the shell
        login = bool(node.info.cmdline) and node.info.cmdline[0].startswith("-")
        return login or node.stdin is None or node.stdin.startswith(_TTY_PREFIXES)

    # -- families ---------------------------------------------------------------------------

    def chain_below_boundary(self, pid: int) -> list[int]:
        """``pid``, then its ancestors up to (not including) the first boundary.

        A boundary itself (an interactive shell writing with ``>``) is its own one-level chain.
        """
        with self._lock:
            chain = [pid]
            node = self._fresh(pid)
            if node is None or self._boundary(node):
                return chain
            while (node := self._parent(node)) is not None:
                if self._boundary(node) or node.pid in chain:
                    break
                chain.append(node.pid)
            return chain

    def family_of(self, pid: int) -> int:
        """The root of ``pid``'s family: its highest ancestor below a boundary."""
        return self.chain_below_boundary(pid)[-1]

    def choose_family(self, pid: int, over_threshold: Callable[[int], bool]) -> int:
        """The family to act on: the lowest level over the threshold, widened over fork clones.

        Returns ``pid`` itself when no level is over the threshold.
        """
        with self._lock:
            chain = self.chain_below_boundary(pid)
            level = next((i for i, p in enumerate(chain) if over_threshold(p)), None)
            if level is None:
                return pid
            while level + 1 < len(chain) and self._clone_of_next(chain, level):
                level += 1
            return chain[level]

    def _clone_of_next(self, chain: list[int], level: int) -> bool:
        child, parent = self._nodes.get(chain[level]), self._nodes.get(chain[level + 1])
        return child is not None and parent is not None and _same_image(child, parent)

    def trusted(self, pid: int, names: Iterable[str] = TRUSTED_PROGRAMS) -> bool:
        """True when ``pid`` or an ancestor below its boundary is a trusted program."""
        patterns = tuple(names)
        with self._lock:
            for member in self.chain_below_boundary(pid):
                node = self._nodes.get(member)
                if node is None or untrusted_location(node.info):
                    continue
                if matches(program_names(node.info), patterns):
                    return True
            return False

    def describe(self, pid: int) -> dict[str, object]:
        """What an event says about a process: who, what, which user, parents, container."""
        with self._lock:
            node = self._fresh(pid)
            if node is None:
                return {"pid": pid}
            parents = self.parent_chain(pid)[:_DESCRIBE_DEPTH]
            return _describe(node) | {
                "parents": [
                    {"pid": p.pid, "exe": p.info.exe, "cmd_line": shlex.join(p.info.cmdline)}
                    for p in parents
                ],
                "family": self.family_of(pid),
            }


def _describe(node: ProcessNode) -> dict[str, object]:
    info = node.info
    return {
        "pid": info.pid, "ppid": info.ppid, "name": info.comm, "exe": info.exe,
        "exe_deleted": info.exe_deleted, "cmdline": list(info.cmdline),
        "cmd_line": shlex.join(info.cmdline),
        "user": info.user, "uid": info.uid, "login_user": info.login_user,
        "start_time": info.start_time, "container_id": info.container_id,
        "cgroup": info.cgroup, "exited": not node.alive, "image_known": node.image_known,
    }  # fmt: skip
