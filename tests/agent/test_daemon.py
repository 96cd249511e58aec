"""The agent as systemd runs it: a real process, real signals, the sd_notify protocol."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from yoroi.events.model import ApplicationLifecycle, decode_json


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(20)
    yield sock
    sock.close()


def receive_until(sock: socket.socket, key: str) -> list[str]:
    """Collect notifications until one carries ``key`` (e.g. READY=1)."""
    seen: list[str] = []
    while True:
        message = sock.recv(4096).decode()
        seen.append(message)
        if key in message.splitlines():
            return seen


def test_agent_signals_and_notifications(tmp_path: Path, notify_socket: socket.socket) -> None:
    policy = tmp_path / "agent.yaml"
    policy.write_text("agent: {name: sig-test, status_interval: 0}\n")
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "200000",
        "YOROI_HOME": str(tmp_path),
    }
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "yoroi", "agent", "run", "--config", str(policy)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        ready = receive_until(notify_socket, "READY=1")
        assert any("STATUS=0 module(s)" in m for m in ready)
        assert "WATCHDOG=1" in receive_until(notify_socket, "WATCHDOG=1")[-1]

        policy.write_text("agent: {name: sig-test-2, status_interval: 0}\n")
        proc.send_signal(signal.SIGHUP)
        reloading = receive_until(notify_socket, "RELOADING=1")
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading[-1].splitlines())
        receive_until(notify_socket, "READY=1")

        proc.send_signal(signal.SIGTERM)
        receive_until(notify_socket, "STOPPING=1")
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    events = [decode_json(line) for line in (tmp_path / "var" / "events.jsonl").read_bytes()
              .splitlines()]
    lifecycle = [e.message for e in events if isinstance(e, ApplicationLifecycle)]
    assert lifecycle == ["agent sig-test started", "agent sig-test-2 reloaded",
                         "agent sig-test-2 stopped"]


def test_agent_refuses_to_start_on_a_bad_policy(tmp_path: Path) -> None:
    policy = tmp_path / "agent.yaml"
    policy.write_text("agent: {name: ''}\n")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "yoroi", "--home", str(tmp_path), "agent", "run", "--config",
         str(policy)], capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"yoroi: {policy}:1: agent.name:")
    assert time.monotonic() - started < 30
