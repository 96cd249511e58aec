"""The integrity module in the agent: the signed baseline, scheduled checks, system entities
and, optionally, realtime changes with who-data chained onto the change log."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, ClassVar

from yoroi.agent.module import AgentContext, Health, ModuleStatus
from yoroi.config import ModulePolicy
from yoroi.errors import BaselineTampered, ConfigError, ModuleError, PlatformError
from yoroi.modules.integrity import entities, events
from yoroi.modules.integrity.baseline import BaselineStore, scan
from yoroi.modules.integrity.changelog import ChangeLog
from yoroi.modules.integrity.check import CheckReport, change_json, check
from yoroi.modules.integrity.policy import IntegrityPolicy
from yoroi.modules.integrity.realtime import GapReason, RealtimeChange, RealtimeWatcher
from yoroi.modules.integrity.records import ENTITIES_FILE, keep_texts, with_diff
from yoroi.modules.integrity.rules import Rule, expand
from yoroi.modules.integrity.whodata import WhoResolver
from yoroi.platform.linux.dpkg import DpkgDatabase
from yoroi.platform.linux.proc_connector import ProcConnector
from yoroi.platform.linux.process import Processes

log = logging.getLogger(__name__)


class IntegrityModule:
    """Every change to the files and settings the policy names: what, when, and by whom."""

    name: ClassVar[str] = "integrity"
    policy_type: ClassVar[type[ModulePolicy]] = IntegrityPolicy

    def __init__(self) -> None:
        self.policy = IntegrityPolicy()
        self._rules: tuple[Rule, ...] = ()
        self._ctx: AgentContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: RealtimeWatcher | None = None
        self._reported: set[str] = set()
        self._check_lock = asyncio.Lock()
        self.counters = {"checks": 0, "changes": 0, "realtime": 0, "entity_changes": 0}
        self._detail = "starting"

    def configure(self, policy: ModulePolicy) -> None:
        assert isinstance(policy, IntegrityPolicy)
        self.policy = policy
        self._rules = expand(policy)

    async def start(self, ctx: AgentContext) -> None:
        self._ctx, self._loop = ctx, asyncio.get_running_loop()
        directory = ctx.home.state_dir / "integrity"
        store = BaselineStore(directory)
        fresh = not store.exists()
        if fresh:
            baseline = await asyncio.to_thread(scan, self._rules, self._jobs())
            await asyncio.to_thread(store.save, baseline)
            await asyncio.to_thread(keep_texts, directory, baseline)
            ctx.say(f"baseline of {len(baseline.states)} paths made and signed")
        if self.policy.entities and not (directory / ENTITIES_FILE).exists():
            await asyncio.to_thread(self._save_entities, directory)
        if self.policy.realtime:
            await asyncio.to_thread(self._start_realtime, directory)
        ctx.spawn(self._schedule(store, directory, first_now=not fresh), "scheduled-check")
        self._detail = (f"{len(self._rules)} rule(s); check every {self.policy.schedule:g}s"
                        + ("; realtime" if self.policy.realtime else ""))

    async def stop(self) -> None:
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.stop)
            self._watcher = None

    def status(self) -> ModuleStatus:
        return ModuleStatus(Health.RUNNING, self._detail, dict(self.counters))

    def _jobs(self) -> int:
        """In the agent, checks are background work: one process unless the policy says more
        (the command line uses every core)."""
        return self.policy.jobs or 1

    # -- scheduled checks ---------------------------------------------------------------

    async def _schedule(self, store: BaselineStore, directory: Path, first_now: bool) -> None:
        if not first_now:
            await asyncio.sleep(self.policy.schedule)
        while True:
            await self.check_now(store, directory)
            await asyncio.sleep(self.policy.schedule)

    async def check_now(self, store: BaselineStore, directory: Path) -> None:
        """One check of files and entities; each change is reported once until accepted."""
        assert self._ctx is not None
        async with self._check_lock:
            try:
                report = await asyncio.to_thread(check, store, self._jobs())
            except BaselineTampered as exc:
                self._ctx.publish(events.tampered(str(exc)))
                return
            self.counters["checks"] += 1
            await asyncio.to_thread(self._publish_check, report, directory)
            if self.policy.entities:
                await asyncio.to_thread(self._check_entities, directory)

    def _publish_check(self, report: CheckReport, directory: Path) -> None:
        """In a worker thread: diffs read files, the change log writes."""
        changes = ChangeLog.at_state(directory.parent)
        for change in report.changes:
            record = with_diff(directory, change_json(change, report))
            key = repr(sorted((k, str(v)) for k, v in record.items()))
            if key in self._reported:
                continue
            self._reported.add(key)
            changes.append({"source": "check", **record})
            self.counters["changes"] += 1
            self._from_thread(events.checked(record))
            if record["suspicious"]:
                what = f"{record['change']} ({', '.join(record['attributes']) or 'entry'})"
                self._from_thread(events.suspicious(change.path, what, record))

    # -- system entities ----------------------------------------------------------------

    def _save_entities(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        (directory / ENTITIES_FILE).write_bytes(entities.dumps(entities.snapshot()))

    def _check_entities(self, directory: Path) -> None:
        path = directory / ENTITIES_FILE
        try:
            before = entities.loads(path.read_bytes())
        except (OSError, ConfigError) as exc:
            log.warning("integrity: entity baseline unreadable (%s); taking a new one", exc)
            self._save_entities(directory)
            return
        now = entities.snapshot()
        for change in entities.diff(before, now):
            self.counters["entity_changes"] += 1
            self._from_thread(events.entity(change))
        path.write_bytes(entities.dumps(now))  # each entity change is reported once

    # -- realtime -----------------------------------------------------------------------

    def _start_realtime(self, directory: Path) -> None:
        roots = sorted({root for rule in self._rules for root in rule.roots()})
        log_file = ChangeLog.at_state(directory.parent)
        who = WhoResolver(Processes(), connector=ProcConnector())

        def on_change(change: RealtimeChange) -> None:
            log_file.append(change.as_dict())
            self.counters["realtime"] += 1
            self._from_thread(events.realtime(change))

        def on_gap(reason: GapReason, watched: tuple[str, ...]) -> None:
            if reason is not GapReason.START and self._loop is not None:
                self._from_thread(events.gap(str(reason), watched))
                store = BaselineStore(directory)
                asyncio.run_coroutine_threadsafe(self.check_now(store, directory), self._loop)

        watcher = RealtimeWatcher(roots, on_change, on_gap, who=who, packages=DpkgDatabase)
        try:
            watcher.start()
        except PlatformError as exc:
            raise ModuleError(f"integrity: realtime monitoring cannot start: {exc}") from exc
        self._watcher = watcher

    def _from_thread(self, event: Any) -> None:
        assert self._loop is not None and self._ctx is not None
        self._loop.call_soon_threadsafe(self._ctx.publish, event)
