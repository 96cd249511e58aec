"""The seam between the agent and its protection modules.

A protection module is one class implementing :class:`Module`. The agent calls
``configure`` once with the module's validated policy section (parse there, match fast later),
then ``start`` with an :class:`AgentContext`, and ``stop`` on shutdown or reload. Background
work is started with ``ctx.spawn`` so that a crash is seen: the agent reports it and restarts
the module with back-off while the other modules keep running.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from yoroi.agent.actions import Action, ActionResult
from yoroi.config import ModulePolicy
from yoroi.events.model import Event
from yoroi.home import Home

EventHandler = Callable[[Event], None]
ActionHandler = Callable[[Any], Coroutine[Any, Any, ActionResult]]


class Health(enum.StrEnum):
    """Where a module stands, as the console shows it."""

    DISABLED = "disabled"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ModuleStatus:
    """A module's own account of itself: counters and a short line of what it is doing."""

    health: Health = Health.RUNNING
    detail: str = ""
    counters: Mapping[str, int] = field(default_factory=dict)
    last_error: str | None = None


class AgentContext(Protocol):
    """What a running module may use of the agent."""

    @property
    def agent_name(self) -> str: ...

    @property
    def home(self) -> Home: ...

    def publish(self, event: Event) -> None:
        """Hand an event to the bus; never blocks."""

    async def request(self, action: Action) -> ActionResult:
        """Ask the responder for an action; refused and failed actions come back as results."""

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run background work; if it raises, the module is reported and restarted."""

    def subscribe(self, handler: EventHandler, *classes: type[Event]) -> None:
        """Receive other modules' events (all, or only the given classes)."""

    def handle(self, action_type: type[Any], handler: ActionHandler) -> None:
        """Carry out an action type for the responder (the firewall handles BanAddress)."""

    def say(self, message: str) -> None:
        """One progress line for an operator watching the agent in the foreground."""


@runtime_checkable
class Module(Protocol):
    """One protection layer (anti-malware, IPS, ...)."""

    name: ClassVar[str]
    policy_type: ClassVar[type[ModulePolicy]]

    def configure(self, policy: ModulePolicy) -> None:
        """Turn the policy section into immutable, ready-to-match specs."""

    async def start(self, ctx: AgentContext) -> None:
        """Begin protecting; return once started (long work goes through ``ctx.spawn``)."""

    async def stop(self) -> None:
        """Stop and release every kernel resource (answer pending permission events)."""

    def status(self) -> ModuleStatus:
        """Health, counters and last error."""
