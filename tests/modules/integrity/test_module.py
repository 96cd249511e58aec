"""The integrity module in the agent: baseline, scheduled checks, realtime who-data."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.agent.helpers import start_agent, wait_until
from yoroi.agent.daemon import Agent
from yoroi.events.model import DetectionFinding, Event, FileSystemActivity
from yoroi.modules.integrity.baseline import BASELINE_FILE


def running(agent: Agent) -> bool:
    runner = agent.runners.get("integrity")
    return runner is not None and runner.status().detail.endswith(("s", "realtime"))


def file_events(seen: list[Event], path: Path) -> list[FileSystemActivity]:
    return [e for e in seen if isinstance(e, FileSystemActivity) and e.file.path == str(path)]


async def test_scheduled_checks_report_each_change_once_and_a_tampered_baseline(
    tmp_path: Path
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    page = www / "index.html"
    page.write_text("<a href='/download'>Download</a>")
    policy = f"""
agent: {{status_interval: 0}}
integrity:
  enabled: true
  entities: false
  schedule: 300ms
  rules: [{{name: web, paths: ["{www}"], attributes: [content, perms, owner], suspicious: true}}]
"""
    agent, seen, task = start_agent(tmp_path / "home", policy)
    try:
        await wait_until(lambda: running(agent), timeout=30)
        stat = page.stat()
        page.write_text("<a href='//evil.example/x.exe'>Download</a>")
        os.utime(page, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the mtime put back
        await wait_until(lambda: len(file_events(seen, page)) == 1, timeout=15)
        checks = agent.statuses()["integrity"].counters["checks"]
        await wait_until(lambda: agent.statuses()["integrity"].counters["checks"] > checks + 1)
        assert len(file_events(seen, page)) == 1  # reported once, not at every check
        [finding] = [e for e in seen if isinstance(e, DetectionFinding)]
        assert finding.file is not None and finding.file.path == str(page)
        assert "sha256" in finding.unmapped["integrity"]["attributes"]
        assert "+<a href='//evil.example/x.exe'>Download</a>" in finding.unmapped["integrity"][
            "diff"]
        log = tmp_path / "home" / "var" / "integrity" / "changes.log"
        assert str(page) in log.read_text()  # chained onto the change log

        baseline = tmp_path / "home" / "var" / "integrity" / BASELINE_FILE
        data = bytearray(baseline.read_bytes())
        data[-1] ^= 0xFF
        baseline.write_bytes(bytes(data))
        await wait_until(lambda: any(
            isinstance(e, DetectionFinding) and "tampered" in e.message for e in seen))
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(task, 30) == 0


@pytest.mark.root
async def test_realtime_changes_carry_the_process(tmpfs_mount: Path, tmp_path: Path) -> None:
    policy = f"""
agent: {{status_interval: 0}}
integrity:
  enabled: true
  entities: false
  realtime: true
  schedule: 1h
  rules: [{{name: srv, paths: ["{tmpfs_mount}"], attributes: [content]}}]
"""
    agent, seen, task = start_agent(tmp_path / "home", policy)
    target = tmpfs_mount / "sshd_config"
    try:
        await wait_until(lambda: running(agent), timeout=30)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", f"open({str(target)!r}, 'w').write('PermitRootLogin yes')")
        assert await asyncio.wait_for(child.wait(), 30) == 0
        await wait_until(lambda: any(e.actor is not None for e in file_events(seen, target)))
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
    event = next(e for e in file_events(seen, target) if e.actor is not None)
    assert event.actor is not None and event.actor.process is not None
    assert event.actor.process.pid == child.pid
    log = tmp_path / "home" / "var" / "integrity" / "changes.log"
    assert str(target) in log.read_text()
