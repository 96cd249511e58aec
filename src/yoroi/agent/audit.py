"""The agent's own events: what the responder did, and the life of the agent and its modules."""

from __future__ import annotations

import uuid
from typing import Any

from yoroi.agent.actions import (
    ActionResult,
    BanAddress,
    ContinueProcessTree,
    KillProcessTree,
    Quarantine,
    Restore,
    RunScript,
    StopProcessTree,
)
from yoroi.agent.module import Health
from yoroi.events.enums import LifecycleActivity, RemediationActivity, Severity, Status
from yoroi.events.model import (
    ApplicationLifecycle,
    Event,
    FileRemediationActivity,
    NetworkRemediationActivity,
    ProcessRemediationActivity,
)
from yoroi.events.objects import Endpoint, Feature, File, Process, Product

# The D3FEND-style tactic each action is.
_TACTIC: dict[type[object], RemediationActivity] = {
    KillProcessTree: RemediationActivity.EVICT,
    StopProcessTree: RemediationActivity.ISOLATE,
    ContinueProcessTree: RemediationActivity.RESTORE,
    Quarantine: RemediationActivity.ISOLATE,
    Restore: RemediationActivity.RESTORE,
    BanAddress: RemediationActivity.ISOLATE,
    RunScript: RemediationActivity.OTHER,
}


def remediation_event(result: ActionResult, requester: str) -> Event:
    """One Remediation Activity event for an action, whatever its outcome."""
    action = result.action
    outcome = "done" if result.ok else ("refused" if result.refused else "failed")
    common: dict[str, Any] = {
        "message": f"{type(action).__name__} {outcome}: {result.detail}",
        "activity_id": _TACTIC[type(action)],
        "command_uid": str(uuid.uuid4()),
        "status_id": Status.SUCCESS if result.ok else Status.FAILURE,
        "status_detail": result.detail,
        "severity_id": Severity.INFORMATIONAL if result.ok else Severity.MEDIUM,
        "unmapped": {"requested_by": requester, "reason": action.reason, "outcome": outcome,
                     "affected": list(result.affected)},
    }
    if isinstance(action, KillProcessTree | StopProcessTree | ContinueProcessTree):
        return ProcessRemediationActivity(process=Process(pid=action.pid), **common)
    if isinstance(action, Quarantine):
        return FileRemediationActivity(file=File(path=action.path), **common)
    if isinstance(action, Restore):
        return FileRemediationActivity(file=File(uid=action.item_id), **common)
    if isinstance(action, BanAddress):
        return NetworkRemediationActivity(src_endpoint=Endpoint(ip=action.address), **common)
    return ProcessRemediationActivity(process=Process(name=action.script), **common)


def agent_event(agent_name: str, what: str, detail: str | None) -> Event:
    """The agent started, stopped, reloaded its policy or refused a reload."""
    activity = {
        "started": LifecycleActivity.START,
        "stopped": LifecycleActivity.STOP,
    }.get(what, LifecycleActivity.UPDATE)
    failed = what == "reload refused"
    return ApplicationLifecycle(
        message=f"agent {agent_name} {what}",
        activity_id=activity,
        status_id=Status.FAILURE if failed else Status.SUCCESS,
        status_detail=detail,
        severity_id=Severity.MEDIUM if failed else Severity.INFORMATIONAL,
        app=Product(feature=Feature(name="agent")),
    )


def module_event(
    agent_name: str, module: str, what: str, health: Health, error: str | None
) -> Event:
    """A module started, stopped, crashed (and will restart) or rejected its policy."""
    failed = health is Health.FAILED
    activity = LifecycleActivity.START if health is Health.RUNNING else LifecycleActivity.STOP
    return ApplicationLifecycle(
        message=f"module {module} {what} on {agent_name}",
        activity_id=activity,
        status_id=Status.FAILURE if failed else Status.SUCCESS,
        status_detail=error,
        severity_id=Severity.HIGH if failed else Severity.INFORMATIONAL,
        app=Product(feature=Feature(name=module)),
    )
