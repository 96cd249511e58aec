"""Runs one protection module: configure, start, watch its work, restart it with back-off.

A module that raises (in ``start`` or in work it spawned) is reported, stopped and started
again after a delay that doubles up to the policy's maximum; the other modules never notice.
A policy error found by ``configure`` is not retried: it waits for a corrected policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from yoroi.agent.actions import Action, ActionResult
from yoroi.agent.module import ActionHandler, EventHandler, Health, Module, ModuleStatus
from yoroi.config import ModulePolicy, RestartSettings
from yoroi.errors import ConfigError
from yoroi.events.model import Event
from yoroi.home import Home

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    """What the agent lends every module runner."""

    agent_name: str
    home: Home
    publish: Callable[[Event], None]
    request: Callable[[Action, str], Coroutine[Any, Any, ActionResult]]
    subscribe: Callable[[EventHandler, tuple[type[Event], ...], str], None]
    unsubscribe: Callable[[str], None]
    handle: Callable[[type[Any], ActionHandler, str], None]
    forget_handlers: Callable[[str], None]
    say: Callable[[str], None]
    lifecycle: Callable[[str, str, Health, str | None], None]


class ModuleContext:
    """The :class:`~yoroi.agent.module.AgentContext` a module's instance receives."""

    def __init__(self, runner: ModuleRunner) -> None:
        self._runner = runner
        self._services = runner.services

    @property
    def agent_name(self) -> str:
        return self._services.agent_name

    @property
    def home(self) -> Home:
        return self._services.home

    def publish(self, event: Event) -> None:
        self._services.publish(event)

    async def request(self, action: Action) -> ActionResult:
        return await self._services.request(action, self._runner.name)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._runner.spawn(coro, name)

    def subscribe(self, handler: EventHandler, *classes: type[Event]) -> None:
        self._services.subscribe(handler, classes, self._runner.name)

    def handle(self, action_type: type[Any], handler: ActionHandler) -> None:
        self._services.handle(action_type, handler, self._runner.name)

    def say(self, message: str) -> None:
        self._services.say(f"{self._runner.name}: {message}")


class ModuleRunner:
    """Owns one module instance at a time and keeps it running."""

    def __init__(
        self,
        name: str,
        cls: type[Module],
        policy: ModulePolicy,
        services: Services,
        restart: RestartSettings,
    ) -> None:
        self.name, self.cls, self.policy = name, cls, policy
        self.services, self.restart_settings = services, restart
        self.health = Health.STARTING
        self.restarts = 0
        self.last_error: str | None = None
        self._instance: Module | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._crash: asyncio.Future[BaseException] | None = None
        self._main: asyncio.Task[None] | None = None
        self._stopping = False
        self._failures = 0

    def start(self) -> None:
        """Begin the run loop in the background."""
        self._main = asyncio.create_task(self._run(), name=f"module:{self.name}")

    async def stop(self) -> None:
        """Stop the module for good (shutdown, disabled, or replaced on reload)."""
        self._stopping = True
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
        await self._stop_instance()
        self.health = Health.STOPPED
        self.services.lifecycle(self.name, "stopped", Health.STOPPED, None)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        if exc is not None and self._crash is not None and not self._crash.done():
            self._crash.set_result(exc)

    def status(self) -> ModuleStatus:
        """The module's own status, with the runner's health and restart count folded in."""
        own = ModuleStatus()
        if self._instance is not None and self.health is Health.RUNNING:
            with contextlib.suppress(Exception):
                own = self._instance.status()
        counters = {**own.counters, "restarts": self.restarts}
        health = own.health if self.health is Health.RUNNING else self.health
        return ModuleStatus(health, own.detail, counters, own.last_error or self.last_error)

    async def _run(self) -> None:
        while not self._stopping:
            started = time.monotonic()
            error = await self._start_and_watch()
            if error is None or self._stopping:
                return
            await self._after_crash(error, time.monotonic() - started)

    async def _start_and_watch(self) -> BaseException | None:
        """Start an instance and wait until something it runs raises."""
        self._crash = asyncio.get_running_loop().create_future()
        try:
            instance = self.cls()
            instance.configure(self.policy)
        except ConfigError as exc:
            self._give_up(exc)
            return None
        except Exception as exc:
            return exc
        self._instance = instance
        try:
            await instance.start(ModuleContext(self))
        except Exception as exc:
            return exc
        self.health = Health.RUNNING
        self.services.lifecycle(self.name, "started", Health.RUNNING, None)
        return await self._crash

    def _give_up(self, exc: ConfigError) -> None:
        self.health = Health.FAILED
        self.last_error = str(exc)
        self.services.lifecycle(self.name, "rejected its policy", Health.FAILED, str(exc))

    async def _after_crash(self, error: BaseException, ran_for: float) -> None:
        settings = self.restart_settings
        self._failures = 1 if ran_for >= settings.max_delay else self._failures + 1
        delay = min(settings.initial_delay * 2 ** (self._failures - 1), settings.max_delay)
        self.last_error = f"{type(error).__name__}: {error}"
        self.health = Health.RESTARTING
        log.error("module %s crashed", self.name, exc_info=error)
        self.services.lifecycle(
            self.name, f"crashed; restarting in {delay:g}s", Health.FAILED, self.last_error
        )
        await self._stop_instance()
        await asyncio.sleep(delay)
        self.restarts += 1

    async def _stop_instance(self) -> None:
        instance, self._instance = self._instance, None
        self.services.unsubscribe(self.name)
        self.services.forget_handlers(self.name)
        if instance is not None:
            try:
                await asyncio.wait_for(instance.stop(), self.restart_settings.stop_timeout)
            except Exception as exc:  # a module that cannot stop cleanly is reported, not fatal
                log.error("module %s did not stop cleanly: %s", self.name, exc)
        tasks, self._tasks = set(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
