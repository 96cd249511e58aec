"""Small protection modules for exercising the agent runtime, and a polling helper."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from yoroi.agent.actions import KillProcessTree
from yoroi.agent.daemon import Agent
from yoroi.agent.module import AgentContext, Health, ModuleStatus
from yoroi.config import ModulePolicy
from yoroi.events.enums import Severity
from yoroi.events.model import DetectionFinding, Event
from yoroi.events.objects import Analytic, FindingInfo
from yoroi.home import Home
from yoroi.modules import module_classes, policy_sections


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class TickerPolicy(ModulePolicy):
    interval: float = 0.01


class Ticker:
    """Publishes a finding every ``interval`` seconds and counts them."""

    name: ClassVar[str] = "ticker"
    policy_type: ClassVar[type[ModulePolicy]] = TickerPolicy

    def __init__(self) -> None:
        self.ticks = 0
        self.interval = 0.0

    def configure(self, policy: ModulePolicy) -> None:
        assert isinstance(policy, TickerPolicy)
        self.interval = policy.interval

    async def start(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        ctx.spawn(self._tick(), "tick")

    async def _tick(self) -> None:
        while True:
            self.ticks += 1
            self.ctx.publish(
                DetectionFinding(
                    message=f"tick {self.ticks}",
                    severity_id=Severity.LOW,
                    finding_info=FindingInfo(
                        title="tick", uid=str(self.ticks), analytic=Analytic(uid="test.tick")
                    ),
                )
            )
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        pass

    def status(self) -> ModuleStatus:
        return ModuleStatus(Health.RUNNING, f"{self.ticks} ticks", {"ticks": self.ticks})


class Crasher:
    """Raises from its background work shortly after every start."""

    name: ClassVar[str] = "crasher"
    policy_type: ClassVar[type[ModulePolicy]] = ModulePolicy
    starts: ClassVar[int] = 0
    stops: ClassVar[int] = 0

    def configure(self, policy: ModulePolicy) -> None:
        pass

    async def start(self, ctx: AgentContext) -> None:
        type(self).starts += 1
        ctx.spawn(self._fail(), "fail")

    async def _fail(self) -> None:
        await asyncio.sleep(0.02)
        raise RuntimeError("simulated fault in the crasher module")

    async def stop(self) -> None:
        type(self).stops += 1

    def status(self) -> ModuleStatus:
        return ModuleStatus()


class BadStart(Crasher):
    """Raises from ``start`` itself."""

    name: ClassVar[str] = "badstart"

    async def start(self, ctx: AgentContext) -> None:
        raise OSError("cannot open the kernel facility")


class Killer:
    """Asks the responder to kill a process tree given at class level."""

    name: ClassVar[str] = "killer"
    policy_type: ClassVar[type[ModulePolicy]] = ModulePolicy
    target: ClassVar[int] = 0
    results: ClassVar[list[object]] = []

    def configure(self, policy: ModulePolicy) -> None:
        pass

    async def start(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        ctx.spawn(self._kill(), "kill")

    async def _kill(self) -> None:
        result = await self.ctx.request(KillProcessTree(self.target, "test asks for it"))
        type(self).results.append(result)

    async def stop(self) -> None:
        pass

    def status(self) -> ModuleStatus:
        return ModuleStatus()


def start_agent(
    home: Path, policy: str
) -> tuple[Agent, list[Event], asyncio.Task[int]]:
    """The real agent with the built-in modules and ``policy``, running on the test's loop;
    every event it publishes lands in the returned list."""
    classes = module_classes()
    agent = Agent(Home.resolve(home), classes, policy_sections(classes), policy_text=policy,
                  say=lambda _: None)
    seen: list[Event] = []
    agent.bus.subscribe(seen.append, (), "test")
    return agent, seen, asyncio.create_task(agent.run())
