"""The agent's event bus: every event goes to every sink and to the modules that subscribed.

``publish`` never blocks and never raises: sinks queue (and spill, and count drops) on their
own, and a subscriber that raises is counted and logged, not allowed to break detection.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from yoroi.agent.module import EventHandler
from yoroi.events.model import Event

log = logging.getLogger(__name__)


class QueuedSinkLike(Protocol):
    """The part of :class:`yoroi.events.sinks.QueuedSink` the bus uses."""

    @property
    def name(self) -> str: ...

    async def start(self) -> None: ...

    def put(self, event: Event) -> None: ...

    async def close(self, timeout: float = ...) -> None: ...

    def stats(self) -> Any: ...


@dataclass(frozen=True)
class Subscription:
    """A handler and the event classes it wants (empty: all)."""

    handler: EventHandler
    classes: tuple[type[Event], ...]
    owner: str

    def wants(self, event: Event) -> bool:
        return not self.classes or isinstance(event, self.classes)


class EventBus:
    """Fans events out to sinks and subscribers."""

    def __init__(self, sinks: Sequence[QueuedSinkLike] = ()) -> None:
        self._sinks: tuple[QueuedSinkLike, ...] = tuple(sinks)
        self._subscriptions: list[Subscription] = []
        self.published = 0
        self.subscriber_errors = 0

    @property
    def sinks(self) -> tuple[QueuedSinkLike, ...]:
        return self._sinks

    def publish(self, event: Event) -> None:
        """Deliver one event; returns at once."""
        self.published += 1
        for sink in self._sinks:
            sink.put(event)
        for sub in self._subscriptions:
            if sub.wants(event):
                self._deliver(sub, event)

    def _deliver(self, sub: Subscription, event: Event) -> None:
        try:
            sub.handler(event)
        except Exception:
            self.subscriber_errors += 1
            log.exception("subscriber of module %s failed on an event", sub.owner)

    def subscribe(
        self, handler: EventHandler, classes: tuple[type[Event], ...], owner: str
    ) -> None:
        """Add a subscriber; ``owner`` names the module so it can be removed with it."""
        self._subscriptions.append(Subscription(handler, classes, owner))

    def unsubscribe_owner(self, owner: str) -> None:
        """Drop every subscription of a module (it stopped or is being restarted)."""
        self._subscriptions = [s for s in self._subscriptions if s.owner != owner]

    def swap_sinks(self, sinks: Sequence[QueuedSinkLike]) -> tuple[QueuedSinkLike, ...]:
        """Install new sinks at once and return the old ones, for the caller to drain."""
        old, self._sinks = self._sinks, tuple(sinks)
        return old

    async def close(self, timeout: float) -> None:
        """Flush and close every sink (what cannot be sent stays in the spool)."""
        sinks, self._sinks = self._sinks, ()
        for sink in sinks:
            await sink.close(timeout)
