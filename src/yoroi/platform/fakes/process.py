"""A fake process table: the processes a test adds, signals recorded instead of sent.

:class:`FakeProcesses` implements :class:`yoroi.platform.linux.process.ProcessesLike` with the
same tree semantics and safety rules as the real adapter:

- ``read``/``children``/``descendants``/``parent_chain`` answer from the table; a missing pid
  raises ``ProcessGone``; ``parent_chain`` stops where a parent is missing.
- Every signal is appended to :attr:`FakeProcesses.signals` as ``(pid, sig)``. SIGSTOP marks the
  process ``stopped``, SIGCONT ``running``, SIGKILL makes it exit; others are only recorded.
- pid 1 (present from the start as ``init``), :attr:`FakeProcesses.self_pid` and its ancestors
  are never signalled: ``ActionRefused``.
- :meth:`FakeProcesses.exit` re-parents the children to pid 1, as the kernel does, and
  :attr:`FakeProcesses.on_signal` lets a test act between two signals (e.g. fork a new child
  while the family is being frozen, to check that ``stop_tree`` walks again)::

    procs = FakeProcesses()
    procs.add(100, comm="sh")
    procs.add(101, ppid=100)
    assert procs.kill_tree(100) == [101, 100]
    assert procs.signals == [(100, SIGSTOP), (101, SIGSTOP), (101, SIGKILL), (100, SIGKILL)]
"""

from __future__ import annotations

import dataclasses
import signal as signals
import time
from collections.abc import Callable
from typing import Any

import psutil

from yoroi.errors import ActionError, ProcessGone
from yoroi.platform.linux.process import ProcessInfo, container_id, refusal, subtree

_MAX_FREEZE_ROUNDS = 200


class FakeProcesses:
    """Twin of ``Processes`` over an in-memory table of :class:`ProcessInfo`."""

    def __init__(self, self_pid: int | None = None) -> None:
        self.table: dict[int, ProcessInfo] = {}
        self.signals: list[tuple[int, int]] = []
        self.self_pid = self_pid
        self.on_signal: Callable[[int, int], None] | None = None
        self.add(1, ppid=0, comm="init", exe="/sbin/init", cmdline=("/sbin/init",))

    def add(self, pid: int, ppid: int = 1, comm: str = "proc", **fields: Any) -> ProcessInfo:
        """Put a process in the table; ``fields`` override any other ProcessInfo field."""
        info = ProcessInfo(
            pid=pid, ppid=ppid, comm=comm, exe=f"/usr/bin/{comm}", exe_deleted=False,
            cmdline=(f"/usr/bin/{comm}",), uid=0, euid=0, gid=0, user="root", loginuid=None,
            login_user=None, start_time=time.time(), cgroup=None, container_id=None,
        )  # fmt: skip
        info = dataclasses.replace(info, **fields)
        if "cgroup" in fields and "container_id" not in fields:
            info = dataclasses.replace(info, container_id=container_id(info.cgroup))
        self.table[pid] = info
        return info

    def exit(self, pid: int) -> None:
        """The process exits: it leaves the table and its children move under pid 1."""
        if self.table.pop(pid, None) is None:
            raise ProcessGone(f"process {pid} does not exist (it exited)")
        for child in [p for p, info in self.table.items() if info.ppid == pid]:
            self.table[child] = dataclasses.replace(self.table[child], ppid=1)

    def read(self, pid: int) -> ProcessInfo:
        """The table's entry for ``pid``."""
        try:
            return self.table[pid]
        except KeyError:
            raise ProcessGone(f"process {pid} does not exist (it exited)") from None

    def pids(self) -> list[int]:
        """Every pid in the table, ascending."""
        return sorted(self.table)

    def children(self, pid: int) -> list[int]:
        """The direct children of ``pid``."""
        self.read(pid)
        return sorted(p for p, info in self.table.items() if info.ppid == pid)

    def descendants(self, pid: int) -> list[int]:
        """The whole subtree under ``pid``, parents before children."""
        self.read(pid)
        return subtree(self._ppids(), pid)[1:]

    def parent_chain(self, pid: int) -> list[ProcessInfo]:
        """Parent, grandparent, ... up to pid 1 or the first parent missing from the table."""
        chain: list[ProcessInfo] = []
        info = self.read(pid)
        while info.ppid in self.table and info.ppid not in {pid, *(c.pid for c in chain)}:
            info = self.table[info.ppid]
            chain.append(info)
        return chain

    def signal(self, pid: int, sig: int) -> None:
        """Record ``sig`` to ``pid`` and apply its effect; the safety rules of the real one."""
        error = refusal(pid, self._protected())
        if error is not None:
            raise error
        self.read(pid)
        self.signals.append((pid, sig))
        self._apply(pid, sig)
        if self.on_signal is not None:
            self.on_signal(pid, sig)

    def stop_tree(self, pid: int) -> list[int]:
        """SIGSTOP ``pid`` and its descendants, walking again until no new pid appears."""
        self._check_root(pid)
        stopped: list[int] = []
        for _ in range(_MAX_FREEZE_ROUNDS):
            fresh = [p for p in subtree(self._ppids(), pid) if p not in stopped]
            fresh = [p for p in fresh if p in self.table and p not in self._protected()]
            if not fresh:
                return stopped
            for member in fresh:
                if self._try(member, signals.SIGSTOP):
                    stopped.append(member)
        raise ActionError(f"process tree of {pid} kept growing while being stopped; retry")

    def kill_tree(self, pid: int, timeout: float = 2.0) -> list[int]:
        """Freeze the family, then SIGKILL every member, deepest first."""
        frozen = self.stop_tree(pid)
        return [p for p in reversed(frozen) if self._try(p, signals.SIGKILL)]

    def continue_tree(self, pid: int) -> list[int]:
        """SIGCONT ``pid`` and its descendants, children first."""
        self._check_root(pid)
        members = [p for p in subtree(self._ppids(), pid) if p not in self._protected()]
        return [p for p in reversed(members) if self._try(p, signals.SIGCONT)]

    def _check_root(self, pid: int) -> None:
        error = refusal(pid, self._protected())
        if error is not None:
            raise error
        self.read(pid)

    def _try(self, pid: int, sig: int) -> bool:
        try:
            self.signal(pid, sig)
        except ProcessGone:
            return False
        return True

    def _apply(self, pid: int, sig: int) -> None:
        if sig == signals.SIGKILL:
            self.exit(pid)
        elif sig in (signals.SIGSTOP, signals.SIGCONT):
            state = psutil.STATUS_STOPPED if sig == signals.SIGSTOP else psutil.STATUS_RUNNING
            self.table[pid] = dataclasses.replace(self.table[pid], state=state)

    def _ppids(self) -> dict[int, int]:
        return {pid: info.ppid for pid, info in self.table.items()}

    def _protected(self) -> set[int]:
        guarded = {1}
        pid = self.self_pid
        while pid is not None and pid > 1 and pid not in guarded:
            guarded.add(pid)
            parent = self.table.get(pid)
            pid = parent.ppid if parent else None
        return guarded
