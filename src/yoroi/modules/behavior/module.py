"""The behaviour-monitoring module in the agent: watch, judge, stop, restore, report."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from yoroi.agent.actions import KillProcessTree, Quarantine, StopProcessTree
from yoroi.agent.module import AgentContext, Health, ModuleStatus
from yoroi.config import ModulePolicy
from yoroi.errors import ModuleError
from yoroi.modules.behavior import events
from yoroi.modules.behavior.backup import BackupRecord, BackupStore, Refusal
from yoroi.modules.behavior.decoys import Decoys
from yoroi.modules.behavior.detector import Detector, Verdict
from yoroi.modules.behavior.monitor import FileMonitor
from yoroi.modules.behavior.policy import BehaviorPolicy
from yoroi.modules.behavior.process_tree import ProcessTree
from yoroi.modules.behavior.settings import DetectorSettings
from yoroi.modules.behavior.tells import TellRules, check_exec
from yoroi.modules.behavior.undo import UndoReport, undo
from yoroi.modules.behavior.watch import Watch
from yoroi.platform.linux.dpkg import DpkgDatabase
from yoroi.platform.linux.proc_connector import ExecEvent, ProcConnector
from yoroi.platform.linux.process import Processes

log = logging.getLogger(__name__)
FREEZE_TIMEOUT = 5.0


class BehaviorModule:
    """Ransomware stopped mid-run and its damage undone; exploitation tells reported."""

    name: ClassVar[str] = "behavior"
    policy_type: ClassVar[type[ModulePolicy]] = BehaviorPolicy

    def __init__(self) -> None:
        self.policy = BehaviorPolicy()
        self._ctx: AgentContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tree: ProcessTree | None = None
        self._watch: Watch | None = None
        self._monitor: FileMonitor | None = None
        self._store: BackupStore | None = None
        self._decoys = Decoys(())
        self._procs: ProcConnector | None = None
        self._procs_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._rules = TellRules()
        self.counters = {"families_stopped": 0, "files_restored": 0, "tells": 0, "refused": 0}

    def configure(self, policy: ModulePolicy) -> None:
        assert isinstance(policy, BehaviorPolicy)
        self.policy = policy
        if policy.tells.servers is not None:
            self._rules = TellRules(servers=policy.tells.servers)

    async def start(self, ctx: AgentContext) -> None:
        self._ctx, self._loop = ctx, asyncio.get_running_loop()
        self._tree = ProcessTree(Processes())
        await asyncio.to_thread(self._tree.snapshot)
        self._start_process_events()
        if self.policy.watch:
            await asyncio.to_thread(self._start_files)
            ctx.spawn(self._expire_copies(), "expire-copies")
        ctx.say(self._describe())

    async def stop(self) -> None:
        self._stopping.set()
        await asyncio.to_thread(self._stop_threads)
        self._decoys.remove()

    def status(self) -> ModuleStatus:
        counters = dict(self.counters)
        if self._watch is not None:
            counters.update({f"watch_{k}": v for k, v in self._watch.counters.items()})
        if self._store is not None:
            counters["backup_bytes"] = self._store.usage()
        return ModuleStatus(Health.RUNNING, self._describe(), counters)

    def _describe(self) -> str:
        watched = ", ".join(self.policy.watch) or "no directories"
        return f"watching {watched}; response {self.policy.response}"

    # -- start and stop -----------------------------------------------------------------

    def _start_files(self) -> None:
        assert self._ctx is not None and self._tree is not None
        root = self.policy.backup.directory or self._ctx.home.state_dir / "behavior" / "backup"
        self._store = BackupStore(Path(root), max_file_size=self.policy.backup.max_file_size,
                                  budget_bytes=self.policy.backup.budget)
        settings = DetectorSettings(threshold=self.policy.detector.threshold,
                                    half_life=self.policy.detector.half_life,
                                    trusted=frozenset(self.policy.trusted))
        self._decoys = Decoys(self.policy.watch)
        if self.policy.decoys:
            self._decoys.plant()
        self._watch = Watch(self._tree, Detector(settings), self._decoys, self.policy.trusted,
                            self._verdict)
        self._watch.start()
        self._monitor = FileMonitor(
            self.policy.watch, self._watch.submit, protect=self._protect, backup=self._store,
            on_refusal=self._refused, on_backup=self._backed_up,
        )
        try:
            self._monitor.start()
        except Exception as exc:
            self._watch.stop()
            raise ModuleError(f"file monitoring cannot start: {exc}") from exc

    def _start_process_events(self) -> None:
        try:
            self._procs = ProcConnector()
            self._procs.open()
        except Exception as exc:
            raise ModuleError(f"process events (proc connector) unavailable: {exc}") from exc
        self._procs_thread = threading.Thread(target=self._read_processes,
                                              name="yoroi-behavior-procs", daemon=True)
        self._procs_thread.start()

    def _stop_threads(self) -> None:
        if self._monitor is not None:
            self._monitor.stop()
        if self._watch is not None:
            self._watch.stop()
        if self._procs_thread is not None:
            self._procs_thread.join(timeout=5)
        if self._procs is not None:
            self._procs.close()
        if self._store is not None:
            self._store.close()

    # -- processes and tells ------------------------------------------------------------

    def _read_processes(self) -> None:
        assert self._procs is not None and self._tree is not None
        while not self._stopping.is_set():
            try:
                batch = self._procs.read(timeout=0.2)
            except Exception:
                log.exception("behavior: reading process events failed")
                continue
            for event in batch:
                self._tree.apply(event)
                if isinstance(event, ExecEvent) and self.policy.tells.enabled:
                    self._check_tells(event.tgid)

    def _check_tells(self, pid: int) -> None:
        assert self._tree is not None and self._loop is not None
        for found in check_exec(self._tree, pid, self._rules):
            parent = self._tree.describe(found.parent[1]) if found.parent else None
            event = events.tell(str(found.kind), found.title, found.detail, found.severity,
                                self._tree.describe(pid), parent)
            self.counters["tells"] += 1
            self._loop.call_soon_threadsafe(self._publish, event)

    def _publish(self, event: Any) -> None:
        assert self._ctx is not None
        self._ctx.publish(event)

    # -- backups ------------------------------------------------------------------------

    def _protect(self, path: str, pid: int) -> bool:
        """Keep a copy for this access? Untrusted processes only (called on a reader thread)."""
        return self._tree is not None and not self._tree.trusted(pid, self.policy.trusted)

    def _backed_up(self, record: BackupRecord) -> None:
        if self._watch is not None and self._store is not None:
            self._watch.remember_original(record, self._store.blob_dir / record.id)

    def _refused(self, refusal: Refusal) -> None:
        assert self._loop is not None
        self.counters["refused"] += 1
        self._loop.call_soon_threadsafe(self._publish, events.backup_refused(
            refusal.path, refusal.pid, f"{refusal.reason}: {refusal.detail}".rstrip(": ")))

    async def _expire_copies(self) -> None:
        """Copies older than ``keep_for`` belong to processes judged honest: let them go."""
        while True:
            await asyncio.sleep(min(60.0, self.policy.backup.keep_for))
            if self._store is not None:
                await asyncio.to_thread(self._store.expire,
                                        _older_than(time.time() - self.policy.backup.keep_for))

    # -- the response -------------------------------------------------------------------

    def _verdict(self, root: int, verdict: Verdict) -> None:
        """On the watch thread, at the moment of decision: freeze the family first."""
        assert self._loop is not None and self._ctx is not None
        froze = asyncio.run_coroutine_threadsafe(
            self._ctx.request(StopProcessTree(root, "ransomware behaviour")), self._loop)
        try:
            frozen = froze.result(FREEZE_TIMEOUT).ok
        except Exception:
            frozen = False
        asyncio.run_coroutine_threadsafe(self._respond(root, verdict, frozen), self._loop)

    async def _respond(self, root: int, verdict: Verdict, frozen: bool) -> None:
        assert self._ctx is not None and self._tree is not None and self._watch is not None
        family = self._tree.describe(root)
        pids = self._watch.family_pids(root)
        actions = ["frozen"] if frozen else []
        if self.policy.response == "kill":
            killed = await self._ctx.request(KillProcessTree(root, "ransomware behaviour"))
            actions.append("killed" if killed.ok else f"kill failed: {killed.detail}")
            if killed.ok and self.policy.quarantine_executable:
                actions.append(await self._quarantine(family))
        report = await asyncio.to_thread(self._undo, pids) if self.policy.restore and (
            self.policy.response == "kill") else None
        if report is not None:
            self.counters["files_restored"] += len(report.restored)
            for path in report.restored:
                self._ctx.publish(events.restored(path, root))
        self.counters["families_stopped"] += 1
        self._ctx.publish(events.ransomware(family, verdict.summary, actions, report))
        self._watch.settle(root, pids)

    def _undo(self, pids: set[int]) -> UndoReport:
        assert self._watch is not None and self._store is not None
        damage = self._watch.ledger.damage(pids)
        records = self._store.records_for(pids)
        report = undo(damage, records, self._store, self._inside)
        self._store.release(pids)
        return report

    def _inside(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(real == w or real.startswith(w.rstrip("/") + "/") for w in
                   (os.path.realpath(p) for p in self.policy.watch))

    async def _quarantine(self, family: dict[str, Any]) -> str:
        """Quarantine the program file: the executable, or the script an interpreter ran."""
        assert self._ctx is not None
        target = _program_file(family)
        if target is None:
            return "nothing to quarantine (a system program)"
        done = await self._ctx.request(Quarantine(target, "ransomware behaviour", "ransomware"))
        return f"quarantined {target}" if done.ok else f"quarantine failed: {done.detail}"


def _older_than(limit: float) -> Callable[[BackupRecord], bool]:
    return lambda record: record.created < limit


def _program_file(family: dict[str, Any]) -> str | None:
    """The file to quarantine, never a file of an installed package."""
    packages = DpkgDatabase()
    exe = family.get("exe")
    cmdline = family.get("cmdline") or []
    candidates = [exe] + [arg for arg in list(cmdline)[1:3] if isinstance(arg, str)]
    for candidate in candidates:
        if not isinstance(candidate, str) or not os.path.isfile(candidate):
            continue
        if packages.owner(os.path.realpath(candidate)):
            continue
        return os.path.realpath(candidate)
    return None
