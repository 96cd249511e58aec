"""What the HTTP front ends (reverse proxy, ASGI and WSGI middleware) share.

The per-exchange record handed to the ``on_exchange`` hook, the limits, how a
:class:`~yoroi.modules.ips.types.Decision` becomes an action in prevent or detect mode, the
short answer to a blocked request, and the hop-by-hop headers a proxy must not forward.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from yoroi.modules.ips.types import Decision, Headers, Inspection, Inspector, Outcome, RuleMatch

log = logging.getLogger(__name__)

# RFC 9110 7.6.1, plus the headers of the old keep-alive and proxy-authentication extensions.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})

# ModSecurity's default SecResponseBodyMimeType: the only bodies worth holding back to inspect.
INSPECTED_RESPONSE_TYPES = ("text/plain", "text/html", "text/xml", "application/json")


class Mode(enum.StrEnum):
    """Prevent answers a blocking decision itself; detect only records it and forwards."""

    PREVENT = "prevent"
    DETECT = "detect"


class Action(enum.StrEnum):
    """What the front end did with an exchange (the OCSF ``action`` of its events)."""

    ALLOWED = "allowed"
    BLOCKED = "blocked"
    DETECTED = "detected"  # a rule would have blocked, the exchange went through


@dataclass(frozen=True)
class Limits:
    """Sizes and timeouts of one front end (ModSecurity's body limits, proxy timeouts)."""

    request_body: int = 13_107_200  # SecRequestBodyLimit; more is answered 413
    response_inspect: int = 512 * 1024  # SecResponseBodyLimit: the held-back prefix
    header_bytes: int = 64 * 1024  # request line + headers; more is answered 431/400
    client_idle: float = 30.0  # keep-alive wait for the next request, and per body read
    upstream_connect: float = 5.0
    upstream_read: float = 60.0  # wait for each upstream read (headers or a body chunk)
    upstream_pool: int = 64  # idle upstream connections kept per worker


@dataclass(frozen=True)
class Exchange:
    """One HTTP exchange as the ``on_exchange`` hook sees it: enough for HTTP Activity and,
    when rules matched, Detection Finding events."""

    client: tuple[str, int]
    server: tuple[str, int]
    method: str
    url: str  # the request target as received (path and query)
    host: str
    status: int  # the status the client got (0 if the connection was lost before one)
    action: Action
    matches: tuple[RuleMatch, ...] = ()
    scheme: str = "http"
    request_bytes: int = 0
    response_bytes: int = 0
    duration_ms: float = 0.0
    error: str | None = None  # e.g. "upstream unreachable", "request body over the limit"
    time_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)

    @property
    def rule_ids(self) -> tuple[int, ...]:
        """The ids of the rules that matched, in order, each once."""
        return tuple(dict.fromkeys(match.rule_id for match in self.matches))


ExchangeHook = Callable[[Exchange], None]


def effective(decision: Decision | None, mode: Mode) -> Decision | None:
    """The decision the front end acts on: in detect mode a block is only recorded."""
    if decision is None or decision.outcome == Outcome.ALLOW:
        return None
    if decision.outcome == Outcome.BLOCK and mode == Mode.DETECT:
        return Decision(Outcome.DETECT, decision.status, decision.matches, decision.redirect)
    return decision


def blocked_status(decision: Decision) -> int:
    """The status for a blocked exchange: the rule's own, when it is an error status."""
    if decision.redirect:
        return 302
    return decision.status if 400 <= decision.status <= 599 else 403


def blocked_answer(decision: Decision) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and the short body sent in place of a blocked exchange."""
    status = blocked_status(decision)
    body = b"Request blocked.\n" if status != 302 else b""
    headers = [("Content-Type", "text/plain; charset=utf-8"),
               ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    if decision.redirect:
        headers.append(("Location", decision.redirect))
    return status, headers, body


def inspect_response_body(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether a response's body is held back (up to the limit) for phase 4 rules."""
    for name, value in headers:
        if name.lower() == "content-type":
            return value.split(";", 1)[0].strip().lower() in INSPECTED_RESPONSE_TYPES
    return False


def report(hook: ExchangeHook | None, exchange: Exchange) -> None:
    """Call the hook; its failure is logged and never breaks the traffic."""
    if hook is None:
        return
    try:
        hook(exchange)
    except Exception:
        log.exception("ips: the on_exchange hook failed for %s %s", exchange.method, exchange.url)


class Uninspected:
    """The inspection of an exchange the engine could not take on: it lets everything pass."""

    def request_headers(self, method: str, uri: str, version: str,
                        headers: Headers) -> Decision | None:
        return None

    def request_body(self, chunk: bytes) -> None:
        return None

    def request_end(self) -> Decision | None:
        return None

    def response_headers(self, status: int, version: str, headers: Headers) -> Decision | None:
        return None

    def response_body(self, chunk: bytes) -> None:
        return None

    def response_end(self) -> Decision | None:
        return None

    def close(self) -> tuple[RuleMatch, ...]:
        return ()


def begin(inspector: Inspector, client: tuple[str, int], server: tuple[str, int],
          mode: Mode) -> Tracker:
    """Open the inspection of one exchange (fail open when the engine cannot)."""
    try:
        inspection: Inspection = inspector.begin(client, server)
    except Exception:
        log.exception("ips: the inspector could not begin; the exchange goes on uninspected")
        tracker = Tracker(Uninspected(), mode)
        tracker.failed = True
        return tracker
    return Tracker(inspection, mode)


class Tracker:
    """Drives one :class:`Inspection` and remembers what it decided along the way.

    An engine that raises is logged and the exchange goes on uninspected (fail open): a broken
    rule must not take the site down.
    """

    def __init__(self, inspection: Inspection, mode: Mode) -> None:
        self.inspection = inspection
        self.mode = mode
        self.detected = False
        self.blocked: Decision | None = None
        self.failed = False
        self._matches: tuple[RuleMatch, ...] | None = None

    def check(self, phase: Callable[[], Decision | None]) -> Decision | None:
        """Run one phase; the decision to act on (a block) or None to go on."""
        if self.failed:
            return None
        try:
            decision = effective(phase(), self.mode)
        except Exception:
            log.exception("ips: the inspector failed; the exchange goes on uninspected")
            self.failed = True
            return None
        if decision is not None and decision.outcome == Outcome.DETECT:
            self.detected = True
            return None
        if decision is not None:
            self.blocked = decision
        return decision

    def feed(self, feeder: Callable[[bytes], None], chunk: bytes) -> None:
        """Hand a body chunk to the engine (unless it already failed)."""
        if not self.failed and chunk:
            try:
                feeder(chunk)
            except Exception:
                log.exception("ips: the inspector failed on a body chunk")
                self.failed = True

    def close(self) -> tuple[Action, tuple[RuleMatch, ...]]:
        """Run the logging phase once; the action taken and every rule that matched."""
        if self._matches is None:
            try:
                self._matches = tuple(self.inspection.close())
            except Exception:
                log.exception("ips: the inspector failed in the logging phase")
                self._matches = ()
        if self.blocked is not None:
            action = Action.BLOCKED
        else:
            action = Action.DETECTED if self.detected else Action.ALLOWED
        return action, self._matches
