"""The ``yoroi`` command as a user runs it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from yoroi import __version__

YOROI = [sys.executable, "-m", "yoroi"]


def run(*args: str, home: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "YOROI_HOME": str(home)}
    return subprocess.run(
        [*YOROI, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_version(tmp_path: Path) -> None:
    result = run("--version", home=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"yoroi {__version__}"


def test_help_lists_every_module(tmp_path: Path) -> None:
    result = run("--help", home=tmp_path)
    assert result.returncode == 0
    for command in ("up", "agent", "scan", "quarantine", "behavior", "ips", "integrity",
                    "appcontrol", "firewall", "logs", "manager"):
        assert f"  {command} " in result.stdout, command


@pytest.mark.parametrize("argv", [["logs", "replay", "/tmp/x", "--json"], ["firewall", "status"],
                                  ["manager", "run", "--listen", "127.0.0.1:1"]])
def test_module_not_built_says_so_in_one_line(tmp_path: Path, argv: list[str]) -> None:
    result = run(*argv, home=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "not built yet" in lines[0]


def test_not_built_module_still_explains_itself(tmp_path: Path) -> None:
    result = run("integrity", "--help", home=tmp_path)
    assert result.returncode == 0
    assert "Integrity monitoring" in result.stdout


def test_unknown_command_and_option_are_usage_errors(tmp_path: Path) -> None:
    assert run("frobnicate", home=tmp_path).returncode == 2
    assert run("agent", "run", "--bogus", home=tmp_path).returncode == 2


def test_check_accepts_the_shipped_policy(tmp_path: Path) -> None:
    example = Path(__file__).parents[1] / "packaging" / "agent.yaml"
    result = run("agent", "run", "--config", str(example), "--check", "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["valid"] is True
    assert report["enabled"] == []
    assert len(report["fingerprint"]) == 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("agent: [unclosed\n", "YAML syntax error"),
        ("agent:\n  responder:\n    kill_procs: true\n", "agent.responder.kill_procs: unknown key"),
        ("agent:\n  status_interval: often\n", "agent.status_interval:"),
    ],
)
def test_bad_policy_is_one_clear_message_and_exit_2(
    tmp_path: Path, text: str, expected: str
) -> None:
    policy = tmp_path / "agent.yaml"
    policy.write_text(text)
    result = run("agent", "run", "--config", str(policy), "--check", home=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"yoroi: {policy}:")
    assert expected in lines[0]


def test_bad_policy_as_json(tmp_path: Path) -> None:
    policy = tmp_path / "agent.yaml"
    policy.write_text("agent:\n  restart: {max_delay: -1}\n")
    result = run("agent", "run", "--config", str(policy), "--check", "--json", home=tmp_path)
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert report["problems"][0].startswith(f"{policy}:2: agent.restart.max_delay:")


def test_missing_policy_file(tmp_path: Path) -> None:
    result = run("agent", "run", "--check", home=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"yoroi: {tmp_path / 'etc' / 'agent.yaml'}: no such file"
