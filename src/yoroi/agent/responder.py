"""The responder: carries out the actions modules ask for, refuses what is unsafe, audits all.

Process actions (stop, kill, continue a process tree) and response scripts are done here;
file and network actions are done by the module that owns them (anti-malware quarantines, the
firewall bans), which registers a handler. Whatever happens, one Remediation Activity event
records the action, who asked, and the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from yoroi.agent import audit
from yoroi.agent.actions import (
    Action,
    ActionResult,
    BanAddress,
    ContinueProcessTree,
    KillProcessTree,
    Quarantine,
    Restore,
    RunScript,
    StopProcessTree,
)
from yoroi.agent.module import ActionHandler
from yoroi.config import ResponderSettings
from yoroi.errors import ActionError, ActionRefused, YoroiError
from yoroi.events.model import Event
from yoroi.platform.linux.process import ProcessesLike

log = logging.getLogger(__name__)

# Which policy switch allows which action.
_GATES: dict[type[Any], str] = {
    KillProcessTree: "kill_processes",
    StopProcessTree: "kill_processes",
    ContinueProcessTree: "kill_processes",
    Quarantine: "quarantine_files",
    Restore: "quarantine_files",
    BanAddress: "ban_addresses",
    RunScript: "run_scripts",
}


class Responder:
    """Executes actions with safety checks; every outcome is published as an audit event."""

    def __init__(
        self,
        settings: ResponderSettings,
        processes: ProcessesLike,
        publish: Callable[[Event], None],
        script_dir: Path,
    ) -> None:
        self.settings = settings
        self._processes = processes
        self._publish = publish
        self._script_dir = settings.script_dir or script_dir
        self._handlers: dict[type[Any], tuple[ActionHandler, str]] = {
            KillProcessTree: (self._kill, "agent"),
            StopProcessTree: (self._stop, "agent"),
            ContinueProcessTree: (self._continue, "agent"),
            RunScript: (self._run_script, "agent"),
        }
        self.counters: dict[str, int] = {"done": 0, "refused": 0, "failed": 0}

    def handle(self, action_type: type[Any], handler: ActionHandler, owner: str) -> None:
        """Let a module carry out an action type (the firewall: BanAddress)."""
        self._handlers[action_type] = (handler, owner)

    def forget(self, owner: str) -> None:
        """Remove a module's handlers (it stopped)."""
        self._handlers = {t: h for t, h in self._handlers.items() if h[1] != owner}

    async def request(self, action: Action, requester: str) -> ActionResult:
        """Carry out ``action`` for ``requester``; never raises."""
        try:
            self._check(action)
            result = await self._dispatch(action)
        except ActionRefused as exc:
            result = ActionResult(action, ok=False, detail=str(exc), refused=True)
        except YoroiError as exc:
            result = ActionResult(action, ok=False, detail=str(exc))
        except Exception as exc:
            log.exception("action %r failed", action)
            result = ActionResult(action, ok=False, detail=f"{type(exc).__name__}: {exc}")
        self._count(result)
        self._publish(audit.remediation_event(result, requester))
        return result

    def _count(self, result: ActionResult) -> None:
        key = "done" if result.ok else ("refused" if result.refused else "failed")
        self.counters[key] += 1

    def _check(self, action: Action) -> None:
        gate = _GATES.get(type(action))
        if gate is not None and not getattr(self.settings, gate):
            raise ActionRefused(f"the policy forbids this action (agent.responder.{gate}: false)")
        if isinstance(action, BanAddress) and self.settings.is_protected_address(action.address):
            raise ActionRefused(
                f"{action.address} is protected "
                "(loopback, the manager or agent.responder.never_ban)"
            )

    async def _dispatch(self, action: Action) -> ActionResult:
        entry = self._handlers.get(type(action))
        if entry is None:
            raise ActionError(
                f"no enabled module carries out {type(action).__name__}; enable the module "
                "that owns it in the policy"
            )
        return await entry[0](action)

    def _refuse_protected(self, pid: int) -> None:
        exe = self._processes.read(pid).exe
        if exe is not None and exe in self.settings.protected_executables:
            raise ActionRefused(
                f"pid {pid} runs {exe}, listed in agent.responder.protected_executables"
            )

    async def _kill(self, action: KillProcessTree) -> ActionResult:
        self._refuse_protected(action.pid)
        pids = await asyncio.to_thread(self._processes.kill_tree, action.pid)
        return ActionResult(action, True, f"killed {len(pids)} processes", affected=tuple(pids))

    async def _stop(self, action: StopProcessTree) -> ActionResult:
        self._refuse_protected(action.pid)
        pids = await asyncio.to_thread(self._processes.stop_tree, action.pid)
        return ActionResult(action, True, f"froze {len(pids)} processes", affected=tuple(pids))

    async def _continue(self, action: ContinueProcessTree) -> ActionResult:
        pids = await asyncio.to_thread(self._processes.continue_tree, action.pid)
        return ActionResult(action, True, f"resumed {len(pids)} processes", affected=tuple(pids))

    async def _run_script(self, action: RunScript) -> ActionResult:
        path = self._script_path(action.script)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "YOROI_REASON": action.reason}
        proc = await asyncio.create_subprocess_exec(
            str(path), *action.args, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.settings.script_timeout)
        except TimeoutError:
            # the script's own session: kill it with whatever it started, or a child holding
            # the output pipe would keep us waiting
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise ActionError(
                f"script {path} ran over {self.settings.script_timeout:g}s and was killed"
            ) from None
        text = out.decode(errors="replace").strip()[-500:]
        ok = proc.returncode == 0
        return ActionResult(action, ok, f"exit {proc.returncode}: {text}", affected=(str(path),))

    def _script_path(self, name: str) -> Path:
        """Only a plain name in the script directory, root-owned and not writable by others."""
        if not name or "/" in name or name in (".", ".."):
            raise ActionRefused(f"script {name!r} must be a plain file name in {self._script_dir}")
        path = self._script_dir / name
        try:
            info = path.stat()
        except OSError:
            raise ActionError(f"script {path} does not exist") from None
        if not stat.S_ISREG(info.st_mode) or not os.access(path, os.X_OK):
            raise ActionError(f"script {path} is not an executable file")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_uid not in (0, os.geteuid()):
            raise ActionRefused(f"script {path} is writable by others or not ours; fix its mode")
        return path
