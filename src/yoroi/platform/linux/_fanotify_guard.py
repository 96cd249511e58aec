"""The always-answer guard of fanotify permission events, and a group's counters.

Split from :mod:`yoroi.platform.linux.fanotify` (which re-exports both): every permission event
read gets exactly one answer, and a deadman answers ALLOW to any decision that comes too late.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from yoroi.platform.linux import _fanotify_abi as abi
from yoroi.platform.linux._fanotify_abi import FanotifyEvent

log = logging.getLogger("yoroi.platform.linux.fanotify")


@dataclass(frozen=True, slots=True)
class FanotifyStats:
    """A snapshot of a group's counters; ``deadman_allowed`` > 0 deserves an alert."""

    events: int = 0
    overflows: int = 0
    permission_events: int = 0
    allowed: int = 0
    denied: int = 0
    deadman_allowed: int = 0
    decision_errors: int = 0


class PermissionGuard:
    """Makes sure every tracked permission event gets exactly one answer.

    ``send(event, response)`` delivers an answer (and closes the event's descriptors); it is
    called at most once per event, under the guard's lock. A deadman answers ALLOW to events
    older than ``timeout`` seconds: a daemon thread when ``thread`` is true, else whoever calls
    :meth:`expire` (the fake twin, with its own ``clock``).
    """

    def __init__(
        self,
        send: Callable[[FanotifyEvent, int], None],
        *,
        timeout: float = 1.0,
        on_deadman: Callable[[FanotifyEvent], None] | None = None,
        thread: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"deadman timeout must be > 0 seconds, not {timeout!r}")
        self._send = send
        self._timeout = timeout
        self._on_deadman = on_deadman
        self._clock = clock
        self._cond = threading.Condition()
        # seq -> (deadline, event); insertion order is deadline order (one timeout, one clock).
        self._pending: dict[int, tuple[float, FanotifyEvent]] = {}
        self._counts = {"permission_events": 0, "allowed": 0, "denied": 0}
        self._counts |= {"deadman_allowed": 0, "decision_errors": 0}
        self._closed = False
        self._thread: threading.Thread | None = None
        if thread:
            self._thread = threading.Thread(target=self._run, name="fanotify-deadman", daemon=True)
            self._thread.start()

    @property
    def pending(self) -> int:
        """How many tracked events still wait for an answer."""
        with self._cond:
            return len(self._pending)

    def track(self, event: FanotifyEvent) -> None:
        """Start the deadman clock for ``event``."""
        with self._cond:
            self._counts["permission_events"] += 1
            self._pending[event.seq] = (self._clock() + self._timeout, event)
            if self._closed:
                self._answer_locked(event.seq, abi.FAN_ALLOW)
            self._cond.notify()

    def answer(self, event: FanotifyEvent, response: int) -> bool:
        """Deliver ``response``; ``False`` if the event was already answered (or never tracked)."""
        with self._cond:
            return self._answer_locked(event.seq, response)

    def decide(self, event: FanotifyEvent, decide: Callable[[FanotifyEvent], bool]) -> bool:
        """Answer with ``decide(event)``, or ALLOW when it raises; return the verdict."""
        try:
            allow = bool(decide(event))
        except Exception:
            log.exception("fanotify decision for %s failed: allowing it", event.path)
            with self._cond:
                self._counts["decision_errors"] += 1
            allow = True
        self.answer(event, abi.FAN_ALLOW if allow else abi.FAN_DENY)
        return allow

    def expire(self) -> int:
        """Answer ALLOW to every overdue event; return how many."""
        with self._cond:
            now = self._clock()
            overdue = [event for deadline, event in self._pending.values() if deadline <= now]
            for event in overdue:
                self._answer_locked(event.seq, abi.FAN_ALLOW)
                self._counts["deadman_allowed"] += 1
        for event in overdue:
            log.warning(
                "fanotify deadman allowed %s (pid %d) after %ss",
                event.path,
                event.pid,
                self._timeout,
            )
            if self._on_deadman is not None:
                self._notify_deadman(event)
        return len(overdue)

    def close(self) -> None:
        """Answer ALLOW to everything pending and stop the deadman; later events are allowed."""
        with self._cond:
            self._closed = True
            for seq in list(self._pending):
                self._answer_locked(seq, abi.FAN_ALLOW)
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def counts(self) -> dict[str, int]:
        """The counters, by :class:`FanotifyStats` field name."""
        with self._cond:
            return dict(self._counts)

    def _answer_locked(self, seq: int, response: int) -> bool:
        entry = self._pending.pop(seq, None)
        if entry is None:
            return False
        self._counts["denied" if response & abi.FAN_DENY else "allowed"] += 1
        try:
            self._send(entry[1], response)
        except Exception:
            log.exception("fanotify answer %#x could not be delivered", response)
        return True

    def _notify_deadman(self, event: FanotifyEvent) -> None:
        assert self._on_deadman is not None
        try:
            self._on_deadman(event)
        except Exception:
            log.exception("fanotify on_deadman callback failed")

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                self._cond.wait(self._next_wait())
                if self._closed:
                    return
            self.expire()

    def _next_wait(self) -> float | None:
        if not self._pending:
            return None
        deadline, _ = next(iter(self._pending.values()))
        return max(0.0, deadline - self._clock())


