"""Actions a module asks the responder for, and their results.

A detection in one layer becomes a block in another through these: behaviour monitoring asks
for ``KillProcessTree`` and ``Quarantine``; log inspection asks for ``BanAddress``, which the
firewall module carries out. Each action is an immutable value; the responder audits every one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KillProcessTree:
    """Freeze a process and all its descendants, then kill them all."""

    pid: int
    reason: str


@dataclass(frozen=True)
class StopProcessTree:
    """Freeze (SIGSTOP) a process and all its descendants, so nothing more happens."""

    pid: int
    reason: str


@dataclass(frozen=True)
class ContinueProcessTree:
    """Let a frozen process family run again (a false alarm, or after a backup)."""

    pid: int
    reason: str


@dataclass(frozen=True)
class Quarantine:
    """Move a file into the encrypted quarantine store."""

    path: str
    reason: str
    detection: str = ""


@dataclass(frozen=True)
class Restore:
    """Put a quarantined item (by its id) back at its original path."""

    item_id: str
    reason: str


@dataclass(frozen=True)
class BanAddress:
    """Drop traffic from an address for ``ttl`` seconds."""

    address: str
    ttl: int
    reason: str


@dataclass(frozen=True)
class RunScript:
    """Run an administrator's response script from the configured script directory."""

    script: str
    reason: str
    args: tuple[str, ...] = ()


Action = (
    KillProcessTree
    | StopProcessTree
    | ContinueProcessTree
    | Quarantine
    | Restore
    | BanAddress
    | RunScript
)


@dataclass(frozen=True)
class ActionResult:
    """What became of an action: done, refused or failed, with a human-readable detail."""

    action: Action
    ok: bool
    detail: str
    refused: bool = False
    affected: tuple[int | str, ...] = field(default=())
