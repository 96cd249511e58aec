"""The responder carries out actions, refuses unsafe ones, and audits every outcome."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from yoroi.agent.actions import (
    ActionResult,
    BanAddress,
    ContinueProcessTree,
    KillProcessTree,
    Quarantine,
    RunScript,
    StopProcessTree,
)
from yoroi.agent.responder import Responder
from yoroi.config import ResponderSettings
from yoroi.events.enums import Status
from yoroi.events.model import (
    Event,
    FileRemediationActivity,
    NetworkRemediationActivity,
    ProcessRemediationActivity,
)
from yoroi.platform.fakes.process import FakeProcesses
from yoroi.platform.linux.process import Processes


def make(settings: ResponderSettings | None = None, processes: object = None,
         script_dir: Path = Path("/nonexistent")) -> tuple[Responder, list[Event], FakeProcesses]:
    fake = FakeProcesses(self_pid=500)
    fake.add(500, comm="yoroi")  # the agent itself
    events: list[Event] = []
    chosen = processes if processes is not None else fake
    responder = Responder(settings or ResponderSettings(), chosen, events.append, script_dir)  # type: ignore[arg-type]
    return responder, events, fake


async def test_kill_tree_kills_the_family_and_audits() -> None:
    responder, events, fake = make()
    fake.add(100, comm="ransom")
    fake.add(101, ppid=100, comm="ransom")
    fake.add(102, ppid=101, comm="ransom")
    result = await responder.request(KillProcessTree(100, "encrypting files"), "behavior")
    assert result.ok
    assert set(result.affected) == {100, 101, 102}
    assert {(p, s) for p, s in fake.signals if s == signal.SIGKILL} == {
        (100, signal.SIGKILL), (101, signal.SIGKILL), (102, signal.SIGKILL)}
    [event] = events
    assert isinstance(event, ProcessRemediationActivity)
    assert event.process.pid == 100
    assert event.status_id == Status.SUCCESS
    assert event.unmapped["requested_by"] == "behavior"
    assert event.unmapped["reason"] == "encrypting files"


@pytest.mark.parametrize("pid", [1, 500])
async def test_never_kills_init_or_the_agent(pid: int) -> None:
    responder, events, fake = make()
    result = await responder.request(KillProcessTree(pid, "bad idea"), "behavior")
    assert not result.ok and result.refused
    assert fake.signals == []
    assert events[0].status_id == Status.FAILURE
    assert events[0].unmapped["outcome"] == "refused"


async def test_protected_executable_is_not_stopped() -> None:
    settings = ResponderSettings(protected_executables=("/usr/sbin/sshd",))
    responder, _, fake = make(settings)
    fake.add(200, comm="sshd", exe="/usr/sbin/sshd")
    result = await responder.request(StopProcessTree(200, "test"), "behavior")
    assert result.refused and "protected_executables" in result.detail
    assert fake.signals == []


async def test_policy_switch_forbids_process_actions() -> None:
    responder, _, fake = make(ResponderSettings(kill_processes=False))
    fake.add(300)
    result = await responder.request(KillProcessTree(300, "x"), "behavior")
    assert result.refused and "kill_processes: false" in result.detail
    assert fake.signals == []


async def test_stop_then_continue() -> None:
    responder, _, fake = make()
    fake.add(400)
    fake.add(401, ppid=400)
    assert (await responder.request(StopProcessTree(400, "x"), "t")).ok
    assert (await responder.request(ContinueProcessTree(400, "false alarm"), "t")).ok
    assert [s for _, s in fake.signals] == [signal.SIGSTOP] * 2 + [signal.SIGCONT] * 2


async def test_action_without_a_module_fails_clearly() -> None:
    responder, events, _ = make()
    result = await responder.request(Quarantine("/tmp/x", "eicar"), "behavior")
    assert not result.ok and not result.refused
    assert "enable the module" in result.detail
    assert isinstance(events[0], FileRemediationActivity)


async def test_module_handler_carries_out_bans_but_never_loopback() -> None:
    responder, events, _ = make(ResponderSettings(never_ban=("203.0.113.0/24",)))  # type: ignore[arg-type]
    banned: list[str] = []

    async def ban(action: BanAddress) -> ActionResult:
        banned.append(action.address)
        return ActionResult(action, True, "banned")

    responder.handle(BanAddress, ban, "firewall")  # type: ignore[arg-type]
    assert (await responder.request(BanAddress("198.51.100.7", 600, "brute force"), "logs")).ok
    assert (await responder.request(BanAddress("127.0.0.1", 600, "x"), "logs")).refused
    assert (await responder.request(BanAddress("203.0.113.9", 600, "x"), "logs")).refused
    assert banned == ["198.51.100.7"]
    assert all(isinstance(e, NetworkRemediationActivity) for e in events)
    responder.forget("firewall")
    assert not (await responder.request(BanAddress("198.51.100.8", 60, "x"), "logs")).ok


async def test_run_script_only_from_the_script_dir(tmp_path: Path) -> None:
    script = tmp_path / "notify.sh"
    script.write_text('#!/bin/sh\necho "reason=$YOROI_REASON arg=$1"\n')
    script.chmod(0o700)
    slow = tmp_path / "slow.sh"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o700)
    settings = ResponderSettings(run_scripts=True, script_timeout=0.5)
    responder, _, _ = make(settings, script_dir=tmp_path)
    result = await responder.request(RunScript("notify.sh", "ransomware", ("web-01",)), "t")
    assert result.ok and "reason=ransomware arg=web-01" in result.detail
    assert (await responder.request(RunScript("../notify.sh", "x"), "t")).refused
    assert not (await responder.request(RunScript("absent.sh", "x"), "t")).ok
    started = time.monotonic()
    timed_out = await responder.request(RunScript("slow.sh", "x"), "t")
    assert not timed_out.ok and "killed" in timed_out.detail
    assert time.monotonic() - started < 5
    script.chmod(0o777)
    assert (await responder.request(RunScript("notify.sh", "x"), "t")).refused


async def test_scripts_are_off_by_default(tmp_path: Path) -> None:
    responder, _, _ = make(script_dir=tmp_path)
    assert (await responder.request(RunScript("any.sh", "x"), "t")).refused


async def test_kill_a_real_process_tree() -> None:
    """The responder with the real adapter kills a shell and the children it started."""
    proc = subprocess.Popen(["/bin/sh", "-c", "sleep 60 & sleep 60 & wait"])
    try:
        deadline = time.monotonic() + 5
        while len(Processes().descendants(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        children = Processes().descendants(proc.pid)
        assert len(children) == 2
        responder, _, _ = make(processes=Processes())
        result = await responder.request(KillProcessTree(proc.pid, "test"), "t")
        assert result.ok and set(result.affected) == {proc.pid, *children}
        assert proc.wait(timeout=5) == -signal.SIGKILL
        for child in children:
            deadline = time.monotonic() + 5
            while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
                time.sleep(0.01)  # reaped by init once the shell is gone
            assert not Path(f"/proc/{child}/status").exists() or "zombie" in Path(
                f"/proc/{child}/status").read_text()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
