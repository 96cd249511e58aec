"""``yoroi appcontrol run`` as an administrator runs it, on a test tmpfs (root only)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root]


def runs(path: Path) -> bool:
    """Does the program run? (A refused exec is EPERM at exec time.)"""
    try:
        return subprocess.run([str(path)], timeout=30, check=False).returncode == 0
    except PermissionError:
        return False


def test_enforce_runs_what_was_there_and_refuses_a_new_binary(
    tmpfs_mount: Path, tmp_path: Path
) -> None:
    known = tmpfs_mount / "known-true"
    shutil.copy("/bin/true", known)
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "yoroi", "--home", str(tmp_path / "home"), "appcontrol", "run",
         "--path", str(tmpfs_mount), "--mode", "enforce", "--events", str(events),
         "--decision-timeout", "5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(proc.stderr or []), daemon=True)
    reader.start()
    new = tmpfs_mount / "new-tool"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("running" in line for line in said):
            time.sleep(0.1)  # the inventory is taken: from now on new files are strangers
        shutil.copy("/bin/true", new)
        assert not runs(new)
        assert runs(known)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
    stderr = "".join(said)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    denied = [json.loads(line) for line in events.read_text().splitlines()]
    assert any(e["process"]["file"]["path"] == str(new) and e["status_id"] == 2 for e in denied)
    assert runs(new)  # stopped: nothing is enforced any more
