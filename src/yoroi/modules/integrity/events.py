"""The integrity module's events: File System Activity per change, Detection Findings for
suspicious changes, a tampered baseline and system-entity changes."""

from __future__ import annotations

from typing import Any

from yoroi.events.enums import AnalyticType, FileActivity, Severity
from yoroi.events.model import DetectionFinding, Event, FileSystemActivity
from yoroi.events.objects import Actor, Analytic, File, FindingInfo, Process, User
from yoroi.modules.integrity.realtime import RealtimeChange, RealtimeKind
from yoroi.modules.integrity.types import ChangeKind, EntityChange

_CHECK_ACTIVITY = {ChangeKind.ADDED: FileActivity.CREATE, ChangeKind.REMOVED: FileActivity.DELETE,
                   ChangeKind.MODIFIED: FileActivity.UPDATE}
_REALTIME_ACTIVITY = {
    RealtimeKind.CREATE: FileActivity.CREATE, RealtimeKind.MODIFY: FileActivity.UPDATE,
    RealtimeKind.ATTRIB: FileActivity.SET_ATTRIBUTES, RealtimeKind.DELETE: FileActivity.DELETE,
    RealtimeKind.RENAME: FileActivity.RENAME, RealtimeKind.LINK: FileActivity.CREATE,
}


def checked(change: dict[str, Any]) -> Event:
    """A change a scheduled check found (``change_json`` of it)."""
    kind = ChangeKind(change["change"])
    attributes = ", ".join(change["attributes"]) or kind.value
    return FileSystemActivity(
        message=f"{change['path']}: {kind.value} ({attributes}) since the baseline",
        activity_id=_CHECK_ACTIVITY[kind],
        severity_id=Severity.MEDIUM if change["suspicious"] else Severity.INFORMATIONAL,
        file=File(path=change["path"]),
        unmapped={"integrity": change},
    )


def realtime(change: RealtimeChange) -> Event:
    """A change seen as it happened, with who made it."""
    record = change.as_dict()
    actor = None
    if change.actor is not None:
        proc = change.actor.process
        actor = Actor(process=Process(pid=proc.pid, file=File(path=proc.exe),
                                      cmd_line=" ".join(proc.cmdline) if proc.cmdline else None,
                                      user=User(name=proc.user)),
                      user=User(name=proc.login_user) if proc.login_user else None)
    return FileSystemActivity(
        message=f"{change.path}: {change.kind.value} by pid {change.pid}"
                + (" (package manager, expected)" if change.expected else ""),
        activity_id=_REALTIME_ACTIVITY.get(change.kind, FileActivity.OTHER),
        file=File(path=change.path), actor=actor, unmapped={"integrity": record},
    )


def suspicious(path: str, what: str, detail: dict[str, Any]) -> Event:
    """A change where the policy says changes are suspicious (web content, binaries, ssh)."""
    return DetectionFinding(
        message=f"suspicious change: {path} {what}",
        severity_id=Severity.HIGH,
        finding_info=FindingInfo(
            title="Suspicious file change", uid=f"integrity:{path}",
            analytic=Analytic(uid="yoroi.integrity.suspicious-change", name=detail.get(
                "rule", "integrity rule"), type_id=AnalyticType.RULE),
        ),
        file=File(path=path),
        unmapped={"integrity": detail},
    )


def tampered(reason: str) -> Event:
    """The stored baseline failed its signature check."""
    return DetectionFinding(
        message=f"the integrity baseline was tampered with: {reason}",
        severity_id=Severity.CRITICAL,
        finding_info=FindingInfo(
            title="Integrity baseline tampered", uid="integrity:baseline",
            analytic=Analytic(uid="yoroi.integrity.baseline-tampered", name="baseline tampered"),
        ),
        unmapped={"reason": reason},
    )


def entity(change: EntityChange) -> Event:
    """A system entity changed: a new user, a new listening port, a new SUID file, ..."""
    sensitive = change.entity in {"user", "group", "sudoers", "authorized_key", "suid", "port",
                                  "kmod"}
    return DetectionFinding(
        message=f"{change.entity} {change.key} {change.kind.value}"
                + (f" ({', '.join(change.fields)})" if change.fields else ""),
        severity_id=Severity.HIGH if sensitive else Severity.LOW,
        finding_info=FindingInfo(
            title=f"System entity {change.kind.value}: {change.entity}",
            uid=f"entity:{change.entity}:{change.key}",
            analytic=Analytic(uid=f"yoroi.integrity.entity.{change.entity}",
                              name=f"{change.entity} changes", type_id=AnalyticType.RULE),
        ),
        unmapped={"entity": change.entity, "key": change.key, "change": change.kind.value,
                  "before": dict(change.before or {}), "after": dict(change.after or {}),
                  "fields": list(change.fields)},
    )


def gap(reason: str, paths: tuple[str, ...]) -> Event:
    """Realtime events may have been lost (overflow, restart): a check closes the gap."""
    return DetectionFinding(
        message=f"realtime monitoring {reason}: changes may have been missed under "
                f"{', '.join(paths)}; checking against the baseline now",
        severity_id=Severity.LOW,
        finding_info=FindingInfo(
            title="Realtime gap", uid=f"integrity:gap:{reason}",
            analytic=Analytic(uid="yoroi.integrity.realtime-gap", name="realtime gap"),
        ),
        unmapped={"reason": reason, "paths": list(paths)},
    )
