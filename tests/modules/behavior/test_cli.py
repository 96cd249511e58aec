"""``yoroi behavior run`` in the foreground, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root]


def started(events: Path) -> bool:
    """The module's own start event is in the file: it listens from now on."""
    if not events.exists():
        return False
    return any(json.loads(line).get("message", "").startswith("module behavior started")
               for line in events.read_text().splitlines())


def test_behavior_run_reports_a_server_shell_and_stops_cleanly(tmp_path: Path) -> None:
    watched = tmp_path / "srv"
    watched.mkdir()
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "yoroi", "--home", str(tmp_path / "home"), "behavior", "run",
         "--watch", str(watched), "--events", str(events), "--json", "--no-decoys"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not started(events):
            time.sleep(0.1)
        java = tmp_path / "java"
        java.write_text("#!/bin/sh\n/bin/sh -c 'id > /dev/null; sleep 0.3'\n")
        java.chmod(0o755)
        subprocess.run([str(java)], check=True, timeout=30)
        found = False
        while time.monotonic() < deadline and not found:
            lines = events.read_text().splitlines()
            found = any(json.loads(line).get("unmapped", {}).get("tell") == "server_shell"
                        for line in lines)
            time.sleep(0.1)
        assert found, events.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    printed = [json.loads(line) for line in stdout.splitlines()]
    assert any(e.get("unmapped", {}).get("tell") == "server_shell" for e in printed)
    assert not os.listdir(watched)  # nothing left behind


def test_behavior_run_needs_existing_directories(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "yoroi", "--home", str(tmp_path), "behavior", "run",
         "--watch", str(tmp_path / "absent")], capture_output=True, text=True, timeout=30,
        check=False)
    assert result.returncode == 2
    assert "does not exist" in result.stderr
