"""The agent daemon: loads the policy, hosts the modules, carries events, answers signals.

SIGHUP reloads the policy (a bad policy is reported and the running one kept); SIGTERM and
SIGINT stop cleanly. Under systemd the agent reports readiness, reloads and stopping, and pings
the watchdog from the event loop, so a hung loop is restarted by systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

from yoroi.agent import audit
from yoroi.agent.bus import EventBus, QueuedSinkLike
from yoroi.agent.module import Health, Module, ModuleStatus
from yoroi.agent.responder import Responder
from yoroi.agent.supervisor import ModuleRunner, Services
from yoroi.config import ModulePolicy, Policy, load_policy, parse_policy
from yoroi.errors import ConfigError
from yoroi.events.config import JsonlSinkSpec, SinkSpec, build_sinks
from yoroi.events.model import Event
from yoroi.home import Home
from yoroi.platform.linux.process import Processes, ProcessesLike
from yoroi.platform.linux.systemd import Notifier

log = logging.getLogger(__name__)
SINK_CLOSE_TIMEOUT = 5.0


class Agent:
    """One agent: the modules a policy enables, one bus, one responder."""

    def __init__(
        self,
        home: Home,
        classes: Mapping[str, type[Module]],
        sections: Mapping[str, type[ModulePolicy]],
        *,
        policy_path: Path | None = None,
        policy_text: str | None = None,
        say: Callable[[str], None] = print,
        processes: ProcessesLike | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.home, self.classes, self.sections = home, classes, sections
        self.policy_path, self._policy_text = policy_path, policy_text
        self.say = say
        self.notifier = notifier or Notifier()
        self.policy = self.load()
        self.bus = EventBus()
        self.responder = Responder(
            self.policy.agent.responder, processes or Processes(), self.publish,
            home.config_dir / "scripts",
        )
        self.runners: dict[str, ModuleRunner] = {}
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()

    def load(self) -> Policy:
        """Read and validate the policy (raises ConfigError)."""
        if self.policy_path is not None:
            return load_policy(self.policy_path, self.sections)
        return parse_policy(self._policy_text or "", self.sections, "<default policy>")

    def publish(self, event: Event) -> None:
        self.bus.publish(event)

    async def run(self) -> int:
        """Run until asked to stop; returns the exit status."""
        self.home.ensure()
        self.bus.swap_sinks(await self._sinks(self.policy))
        self._install_signals()
        self.publish(audit.agent_event(self.policy.agent.name, "started", self.policy.fingerprint))
        self._apply_modules(self.policy)
        self.notifier.ready(self._summary())
        self.say(f"agent {self.policy.agent.name}: running ({self._summary()})")
        background = [asyncio.create_task(self._watchdog()), asyncio.create_task(self._report())]
        try:
            await self._stop.wait()
        finally:
            for task in background:
                task.cancel()
            await self._shutdown()
        return 0

    def request_stop(self) -> None:
        self._stop.set()

    async def reload(self) -> bool:
        """Apply the policy file again; keep the running policy if the new one is invalid."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                policy = self.load()
            except ConfigError as exc:
                self.say(f"reload refused, keeping the running policy:\n{exc}")
                self.publish(audit.agent_event(self.policy.agent.name, "reload refused", str(exc)))
                self.notifier.ready(self._summary())
                return False
            await self._switch(policy)
            self.notifier.ready(self._summary())
            self.say(f"policy reloaded ({self._summary()})")
            return True

    async def _switch(self, policy: Policy) -> None:
        old, self.policy = self.policy, policy
        self.responder.settings = policy.agent.responder
        if policy.agent.events != old.agent.events:
            drained = self.bus.swap_sinks(await self._sinks(policy))
            for sink in drained:
                await sink.close(SINK_CLOSE_TIMEOUT)
        for name in list(self.runners):
            if old.modules.get(name) != policy.modules.get(name):
                await self.runners.pop(name).stop()
        self._apply_modules(policy)
        self.publish(audit.agent_event(policy.agent.name, "reloaded", policy.fingerprint))

    def _apply_modules(self, policy: Policy) -> None:
        for name in policy.enabled_modules():
            if name in self.runners or name not in self.classes:
                continue
            runner = ModuleRunner(
                name, self.classes[name], policy.modules[name], self._services(),
                policy.agent.restart,
            )
            self.runners[name] = runner
            runner.start()

    def _services(self) -> Services:
        return Services(
            agent_name=self.policy.agent.name,
            home=self.home,
            publish=self.publish,
            request=self.responder.request,
            subscribe=self.bus.subscribe,
            unsubscribe=self.bus.unsubscribe_owner,
            handle=self.responder.handle,
            forget_handlers=self.responder.forget,
            say=self.say,
            lifecycle=self._lifecycle,
        )

    def _lifecycle(self, module: str, what: str, health: Health, error: str | None) -> None:
        self.say(f"{module}: {what}" + (f": {error}" if error else ""))
        self.publish(audit.module_event(self.policy.agent.name, module, what, health, error))

    async def _sinks(self, policy: Policy) -> list[QueuedSinkLike]:
        specs: tuple[SinkSpec, ...] = policy.agent.events.sinks or (
            JsonlSinkSpec(type="jsonl", path=self.home.events_file),
        )
        sinks: list[QueuedSinkLike] = list(build_sinks(list(specs), self.home.spool_dir))
        for sink in sinks:
            await sink.start()
        return sinks

    def statuses(self) -> dict[str, ModuleStatus]:
        """Every known module's status, those not enabled included."""
        out = {name: ModuleStatus(Health.DISABLED) for name in self.sections}
        out.update({name: runner.status() for name, runner in self.runners.items()})
        return out

    def sink_status(self) -> list[str]:
        """One line per event sink: what it sent, holds, spooled and dropped."""
        lines = []
        for sink in self.bus.sinks:
            s = sink.stats()
            state = "connected" if s.connected else f"down ({s.last_error or 'not connected'})"
            lines.append(f"events to {s.name}: {state}; sent {s.sent}, queued {s.queued}, "
                         f"spooled {s.spooled}, dropped {s.dropped}")
        return lines

    def _summary(self) -> str:
        running = sorted(self.runners)
        return f"{len(running)} module(s): {', '.join(running) or 'none enabled'}"

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval / 2)

    async def _report(self) -> None:
        while (interval := self.policy.agent.status_interval) > 0:
            await asyncio.sleep(interval)
            for name, status in self.statuses().items():
                if status.health is not Health.DISABLED:
                    self.say(f"{name}: {status.health} {status.detail}".rstrip())
            for line in self.sink_status():
                self.say(line)

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        for name in reversed(list(self.runners)):
            await self.runners.pop(name).stop()
        self.publish(audit.agent_event(self.policy.agent.name, "stopped", None))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await self.bus.close(SINK_CLOSE_TIMEOUT)
        self.say("agent stopped")
