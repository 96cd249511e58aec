"""The seam between the HTTP front ends (reverse proxy, ASGI/WSGI middleware) and the engine.

A front end opens one :class:`Inspection` per HTTP exchange and feeds it phase by phase, as
ModSecurity works: request line and headers, request body (in chunks, then the end), response
headers, response body, and finally ``close`` (the logging phase). After each step, a
:class:`Decision` other than ``None`` tells the front end to stop and answer with ``status``
(a block), or — in detect mode — only to record what matched.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

Headers = Sequence[tuple[str, str]]


class Outcome(enum.StrEnum):
    """What the engine decided for an exchange."""

    ALLOW = "allow"  # nothing matched that blocks
    BLOCK = "block"  # answer with ``status``; do not forward (or stop forwarding)
    DETECT = "detect"  # would have blocked, but the mode (or the rule) is detect-only


@dataclass(frozen=True)
class RuleMatch:
    """One rule that matched: id, message, tags, the CVE if a virtual patch, and where."""

    rule_id: int
    message: str
    severity: int | None = None  # ModSecurity severity 0 (emergency) .. 7 (debug)
    tags: tuple[str, ...] = ()
    cve: str | None = None
    variable: str | None = None  # e.g. "REQUEST_HEADERS:Content-Type"
    value_prefix: str | None = None  # the matched value, redacted to a short prefix
    phase: int | None = None


@dataclass(frozen=True)
class Decision:
    """The verdict after a phase: block (with status) or detect, and the rules behind it."""

    outcome: Outcome
    status: int = 403
    matches: tuple[RuleMatch, ...] = field(default=())
    redirect: str | None = None


class Inspection(Protocol):
    """One HTTP exchange inside the engine (a ModSecurity transaction)."""

    def request_headers(self, method: str, uri: str, version: str,
                        headers: Headers) -> Decision | None: ...

    def request_body(self, chunk: bytes) -> None: ...

    def request_end(self) -> Decision | None: ...

    def response_headers(self, status: int, version: str, headers: Headers) -> Decision | None: ...

    def response_body(self, chunk: bytes) -> None: ...

    def response_end(self) -> Decision | None: ...

    def close(self) -> tuple[RuleMatch, ...]:
        """The logging phase; every rule that matched during the exchange."""
        ...


class Inspector(Protocol):
    """An engine with its rules loaded; thread-safe ``begin``."""

    def begin(self, client: tuple[str, int], server: tuple[str, int]) -> Inspection: ...
