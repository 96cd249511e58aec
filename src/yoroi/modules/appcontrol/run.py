"""``yoroi appcontrol run``: application control in the foreground, in a process of its own.

The enforcer runs in a process that spawns nothing (a child forked by the enforcing process
between fork and exec would wait on its own group): the inventory of the given directories is
taken first (what is there now is trusted), then every execution under them is judged until
SIGTERM or Ctrl-C. Each denied or unrecognised execution is one Process Activity event.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

import click

from yoroi.events.enums import ProcessActivityId, Severity, Status
from yoroi.events.model import Event, ProcessActivity, encode_json
from yoroi.events.objects import File, Process
from yoroi.home import Home
from yoroi.modules.appcontrol.enforcer import Enforcer
from yoroi.modules.appcontrol.inventory import host_packages, run_inventory
from yoroi.modules.appcontrol.loaders import Execution
from yoroi.modules.appcontrol.trust import TrustDatabase
from yoroi.modules.appcontrol.types import Decision, Mode


def execution_event(decision: Decision, execution: Execution, mode: Mode) -> Event:
    """Process Activity (Launch) for a denied or unrecognised execution."""
    parent = execution.parents[0] if execution.parents else None
    verb = "denied" if not decision.allow else "allowed (audit)"
    return ProcessActivity(
        message=f"{execution.kind} of {decision.path} {verb}: {decision.reason}"
                + (f" ({decision.rule})" if decision.rule else ""),
        activity_id=ProcessActivityId.LAUNCH,
        severity_id=Severity.HIGH if not decision.allow else Severity.MEDIUM,
        status_id=Status.FAILURE if not decision.allow else Status.SUCCESS,
        process=Process(
            pid=execution.pid, file=File(path=decision.path),
            cmd_line=" ".join(execution.cmdline) or None,
            parent_process=Process(pid=parent[0], file=File(path=parent[1])) if parent else None,
        ),
        unmapped={
            "appcontrol": {"mode": mode.value, "reason": str(decision.reason),
                           "rule": decision.rule, "sha256": decision.sha256,
                           "kind": str(execution.kind), "opener": execution.exe,
                           "parents": [list(p) for p in execution.parents]},
        },
    )


def run_enforcer(home: Home, paths: tuple[Path, ...], mode: Mode, events_file: Path | None,
                 as_json: bool, decision_timeout: float) -> int:
    """Inventory, then enforce until SIGTERM/SIGINT; the exit status."""
    home.ensure()
    db = TrustDatabase.at_state(home.state_dir)
    dirs = [str(p.resolve()) for p in paths]
    report = run_inventory(db, dirs, packages=host_packages())
    db.save()
    trusted = sum(report.recorded.values())
    click.echo(f"yoroi: appcontrol: {trusted} files of {', '.join(dirs)} trusted; "
               f"{mode.value} mode", err=True)
    sink = open(events_file, "ab") if events_file else None  # closed in the finally below
    try:
        enforcer = Enforcer(db, mode, dirs, decision_timeout=decision_timeout,
                            on_decision=_reporter(mode, sink, as_json))
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        with enforcer:
            click.echo("yoroi: appcontrol: running; Ctrl-C to stop", err=True)
            stop.wait()
    finally:
        if sink is not None:
            sink.close()
    click.echo("yoroi: appcontrol: stopped", err=True)
    return 0


def _reporter(mode: Mode, sink: IO[bytes] | None,
              as_json: bool) -> Callable[[Decision, Execution], None]:
    lock = threading.Lock()

    def report(decision: Decision, execution: Execution) -> None:
        event = execution_event(decision, execution, mode)
        line = encode_json(event)
        with lock:
            if sink is not None:
                sink.write(line + b"\n")
                sink.flush()
            click.echo(line.decode() if as_json else f"yoroi: appcontrol: {event.message}",
                       err=not as_json)

    return report
