"""The behaviour module's events: ransomware findings, exploitation tells, restores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from yoroi.events.enums import AnalyticType, FileActivity, Severity, Status
from yoroi.events.model import DetectionFinding, Event, FileSystemActivity
from yoroi.events.objects import Actor, Analytic, File, FindingInfo, Process, User
from yoroi.modules.behavior.undo import UndoReport

RANSOMWARE_RULE = "yoroi.behavior.ransomware"


def process_of(described: Mapping[str, Any]) -> Process:
    """An OCSF process from ``ProcessTree.describe``."""
    cmdline = described.get("cmdline")
    return Process(
        pid=described.get("pid"),
        name=described.get("name"),
        file=File(path=described.get("exe")) if described.get("exe") else None,
        cmd_line=" ".join(cmdline) if isinstance(cmdline, list | tuple) else cmdline,
        user=User(name=described.get("user")) if described.get("user") else None,
    )


def ransomware(
    family: Mapping[str, Any],
    summary: Mapping[str, Any],
    actions: list[str],
    undone: UndoReport | None,
) -> Event:
    """One finding for a stopped ransomware family, with the evidence and what was done."""
    process = process_of(family)
    restored = len(undone.restored) if undone else 0
    message = (
        f"ransomware behaviour by {process.name or process.pid} (pid {process.pid}): "
        f"{', '.join(actions) or 'alert only'}; {restored} file(s) restored"
    )
    unmapped: dict[str, Any] = {
        "family": dict(family),
        "evidence": dict(summary),
        "actions": actions,
    }
    if undone is not None:
        unmapped["restore"] = {
            "restored": undone.restored,
            "removed": undone.removed,
            "failed": undone.failed,
            "lost": undone.lost,
        }
    return DetectionFinding(
        message=message,
        severity_id=Severity.CRITICAL,
        finding_info=FindingInfo(
            title="Ransomware behaviour",
            uid=f"ransomware:{process.pid}",
            analytic=Analytic(
                uid=RANSOMWARE_RULE, name="ransomware behaviour", type_id=AnalyticType.BEHAVIORAL
            ),
            types=["Ransomware"],
        ),
        actor=Actor(process=process),
        process=process,
        unmapped=unmapped,
    )


def tell(
    kind: str,
    title: str,
    detail: str,
    severity: Severity,
    described: Mapping[str, Any],
    parent: Mapping[str, Any] | None,
) -> Event:
    """An exploitation tell: a server started a shell, code ran from /tmp, ..."""
    process = process_of(described)
    if parent is not None:
        process = Process(
            pid=process.pid,
            name=process.name,
            file=process.file,
            cmd_line=process.cmd_line,
            user=process.user,
            parent_process=process_of(parent),
        )
    return DetectionFinding(
        message=f"{title}: {detail}",
        severity_id=severity,
        finding_info=FindingInfo(
            title=title,
            uid=f"{kind}:{process.pid}",
            analytic=Analytic(
                uid=f"yoroi.behavior.{kind}", name=title, type_id=AnalyticType.BEHAVIORAL
            ),
            types=["Exploitation"],
        ),
        actor=Actor(process=process.parent_process) if process.parent_process else None,
        process=process,
        unmapped={"tell": kind, "detail": detail},
    )


def restored(path: str, family_pid: int) -> Event:
    """File System Activity: a file put back after a ransomware family was stopped."""
    return FileSystemActivity(
        message=f"restored {path} after ransomware (pid {family_pid}) was stopped",
        activity_id=FileActivity.UPDATE,
        file=File(path=path),
        status_id=Status.SUCCESS,
        unmapped={"restore": True, "family_pid": family_pid},
    )


def backup_refused(path: str, pid: int, reason: str) -> Event:
    """A protected file could not be backed up (size cap or disk budget)."""
    return DetectionFinding(
        message=f"no backup of {path} before pid {pid} changed it: {reason}",
        severity_id=Severity.MEDIUM,
        finding_info=FindingInfo(
            title="Backup refused",
            uid=f"backup:{path}",
            analytic=Analytic(uid="yoroi.behavior.backup-refused", name="backup refused"),
        ),
        file=File(path=path),
        actor=Actor(process=Process(pid=pid)),
        unmapped={"reason": reason},
    )
