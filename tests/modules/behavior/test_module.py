"""Behaviour monitoring in the agent, against the real kernel on a loop-mounted ext4 disk:
ransomware is stopped and every original comes back; honest work is left alone."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.helpers import start_agent as run_agent
from tests.agent.helpers import wait_until
from yoroi.agent.daemon import Agent
from yoroi.events.model import DetectionFinding, Event

SIMULATOR = Path(__file__).with_name("simulator.py")
pytestmark = [pytest.mark.root]


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def start_agent(home: Path, watch: Path) -> tuple[Agent, list[Event], asyncio.Task[int]]:
    policy = f"""
agent: {{status_interval: 0}}
behavior:
  enabled: true
  watch: ["{watch}"]
  response: kill
"""
    return run_agent(home, policy)


def ransomware_findings(seen: list[Event]) -> list[DetectionFinding]:
    return [e for e in seen if isinstance(e, DetectionFinding)
            and e.finding_info.analytic is not None
            and e.finding_info.analytic.uid == "yoroi.behavior.ransomware"]


async def running(agent: Agent) -> None:
    await wait_until(lambda: "behavior" in agent.runners
                     and agent.runners["behavior"].status().detail.startswith("watching"),
                     timeout=20)


def prepare(root: Path, files: int = 24) -> Path:
    out = subprocess.run([sys.executable, str(SIMULATOR), "prepare", "--root", str(root),
                          "--files", str(files)], capture_output=True, text=True, check=True,
                         timeout=60)
    return Path(out.stdout.strip())


@pytest.mark.parametrize("variant", ["inplace", "newdelete", "rename", "intermittent",
                                     "multiprocess", "base64", "slow"])
async def test_ransomware_is_stopped_and_every_file_restored(
    variant: str, ext4_mount: Path, tmp_path: Path
) -> None:
    victims = prepare(ext4_mount)
    before = hashes(victims)
    simulator = tmp_path / "sim.py"  # its own copy: the module may quarantine it
    shutil.copy(SIMULATOR, simulator)
    agent, seen, task = start_agent(tmp_path / "home", ext4_mount)
    try:
        await running(agent)
        args = [sys.executable, str(simulator), "encrypt", "--dir", str(victims),
                "--variant", variant, "--delay", "0.2"]
        proc = await asyncio.create_subprocess_exec(*args)
        returncode = await asyncio.wait_for(proc.wait(), 120)
        await wait_until(lambda: len(ransomware_findings(seen)) >= 1, timeout=30)
        finding = ransomware_findings(seen)[0]
        assert returncode != 0, "the simulator ran to its end"
        assert "killed" in finding.unmapped["actions"]
        restore = finding.unmapped["restore"]
        assert restore["lost"] == [] and restore["failed"] == {}
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
    assert hashes(victims) == before  # every original back, ransomware's files gone


HONEST = {
    "tar": "tar czf {d}/../backup.tgz -C {d} .",
    "gzip": "gzip -r {d}/dept0 && gunzip -r {d}/dept0",
    "json": ("for f in {d}/dept1/*.json; do python3 -c 'import json,sys; p=sys.argv[1]; "
             "d=json.load(open(p)); d[\"seen\"]=1; json.dump(d, open(p, \"w\"))' $f; done"),
    "sqlite": ("python3 -c 'import sqlite3,os; c=sqlite3.connect(\"{d}/app.db\"); "
               "c.execute(\"create table t(b)\"); "
               "[c.execute(\"insert into t values (?)\", (os.urandom(4000),)) for _ in range(300)];"
               " c.commit()'"),
    "openssl": ("openssl enc -aes-256-cbc -pbkdf2 -pass pass:x -in {d}/dept2/doc0002.csv "
                "-out {d}/dept2/doc0002.csv.enc"),
}


@pytest.mark.parametrize("workload", sorted(HONEST))
async def test_honest_work_is_not_stopped(workload: str, ext4_mount: Path, tmp_path: Path) -> None:
    if workload == "openssl" and shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    victims = prepare(ext4_mount, files=16)
    agent, seen, task = start_agent(tmp_path / "home", ext4_mount)
    try:
        await running(agent)
        command = HONEST[workload].format(d=victims)
        proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", command)
        assert await asyncio.wait_for(proc.wait(), 120) == 0
        await asyncio.sleep(1.5)  # let the monitor catch up
        assert ransomware_findings(seen) == []
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(task, 30) == 0


async def test_java_starting_a_shell_is_reported(tmp_path: Path) -> None:
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\n/bin/sh -c 'id > /dev/null; sleep 0.3'\n")
    java.chmod(0o755)
    agent, seen, task = start_agent(tmp_path / "home", tmp_path)
    try:
        await running(agent)
        proc = await asyncio.create_subprocess_exec(str(java))
        await asyncio.wait_for(proc.wait(), 30)
        await wait_until(lambda: any(
            isinstance(e, DetectionFinding) and e.unmapped.get("tell") == "server_shell"
            for e in seen), timeout=10)
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
