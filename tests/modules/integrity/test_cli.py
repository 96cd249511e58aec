"""``yoroi integrity baseline|check|accept|watch``: exit status, output and JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from yoroi.cli import cli


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    for name in ("a", "b", "c"):
        (root / name).write_text(name)
    return root


def run(tmp_path: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "integrity", *args])


def test_baseline_then_clean_check(tmp_path: Path, tree: Path) -> None:
    made = run(tmp_path, "baseline", str(tree))
    assert made.exit_code == 0, made.stderr
    assert "recorded 4 files" in made.stderr
    assert (tmp_path / "home" / "var" / "integrity" / "baseline.msgpack").exists()
    checked = run(tmp_path, "check")
    assert (checked.exit_code, checked.stdout) == (0, "")
    assert "changes: 0" in checked.stderr


def test_changes_exit_1_with_text_and_json(tmp_path: Path, tree: Path) -> None:
    run(tmp_path, "baseline", "--suspicious", str(tree))
    (tree / "a").write_text("changed")
    os.rename(tree / "b", tree / "b2")
    text = run(tmp_path, "check")
    assert text.exit_code == 1
    assert f"! modified {tree / 'a'} (sha256, size, mtime)" in text.stdout
    assert f"! renamed  {tree / 'b'} -> {tree / 'b2'}" in text.stdout
    as_json = run(tmp_path, "check", "--json")
    assert as_json.exit_code == 1
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(o["path"], o["change"]) for o in lines] == [
        (str(tree / "a"), "modified"), (str(tree / "b"), "removed"), (str(tree / "b2"), "added")]
    assert lines[0]["attributes"] == ["sha256", "size", "mtime"] and lines[0]["suspicious"]
    assert lines[1]["renamed_to"] == str(tree / "b2")
    assert lines[2]["renamed_from"] == str(tree / "b")
    assert lines[0]["before"]["sha256"] != lines[0]["after"]["sha256"]


def test_tampered_baseline_is_refused_with_exit_2(tmp_path: Path, tree: Path) -> None:
    run(tmp_path, "baseline", str(tree))
    stored = tmp_path / "home" / "var" / "integrity" / "baseline.msgpack"
    blob = bytearray(stored.read_bytes())
    blob[-3] ^= 0x01
    stored.write_bytes(bytes(blob))
    text = run(tmp_path, "check")
    assert text.exit_code == 2 and text.stdout == ""
    assert "signature does not match" in text.stderr and "Traceback" not in text.stderr
    as_json = run(tmp_path, "check", "--json")
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout)["tampered"] is True


def test_accept_path_and_all(tmp_path: Path, tree: Path) -> None:
    run(tmp_path, "baseline", str(tree))
    (tree / "a").write_text("A!")
    (tree / "d").write_text("new")
    assert run(tmp_path, "accept", str(tree / "a")).exit_code == 0
    after = run(tmp_path, "check", "--json")
    assert [json.loads(line)["path"] for line in after.stdout.splitlines()] == [str(tree / "d")]
    accepted = run(tmp_path, "accept", "--all")
    assert accepted.exit_code == 0 and "re-signed" in accepted.stderr
    assert run(tmp_path, "check").exit_code == 0


def test_baseline_from_policy(tmp_path: Path, tree: Path) -> None:
    policy = tmp_path / "agent.yaml"
    policy.write_text(f"integrity:\n  rules:\n    - name: mine\n      paths: [{tree}]\n"
                      f"      exclude: [c]\n      suspicious: true\n")
    assert run(tmp_path, "baseline", "--config", str(policy)).exit_code == 0
    (tree / "c").write_text("excluded, so not reported")
    (tree / "a").chmod(0o600)
    checked = run(tmp_path, "check", "--json")
    (change,) = [json.loads(line) for line in checked.stdout.splitlines()]
    assert (change["rule"], change["attributes"], change["suspicious"]) == ("mine", ["mode"], True)


def test_policy_error_names_file_and_line(tmp_path: Path) -> None:
    policy = tmp_path / "agent.yaml"
    policy.write_text("integrity:\n  templates: [etc]\n  shedule: 1h\n")
    result = run(tmp_path, "baseline", "--config", str(policy))
    assert result.exit_code == 2
    assert f"{policy}:3: integrity.shedule: unknown key" in result.stderr


@pytest.mark.parametrize("args, words", [
    (("check",), "no baseline"),
    (("accept",), "name the PATHs"),
    (("baseline", "--exclude", "x"), "go with PATHs"),
    (("watch",), "Missing argument"),
])
def test_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...], words: str) -> None:
    (tmp_path / "home" / "etc").mkdir(parents=True)
    (tmp_path / "home" / "etc" / "agent.yaml").write_text("integrity: {templates: [etc]}\n")
    result = run(tmp_path, *args)
    assert result.exit_code == 2 and words in result.stderr, result.stderr


def test_check_shows_a_masked_diff_of_a_changed_config_file(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "app.conf"
    config.write_text("listen = 80\ndb_password = hunter2\n")
    home = tmp_path / "home"
    base = subprocess.run([sys.executable, "-m", "yoroi", "--home", str(home), "integrity",
                           "baseline", str(etc)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert base.returncode == 0, base.stderr
    config.write_text("listen = 8080\ndb_password = swordfish\n")
    checked = subprocess.run([sys.executable, "-m", "yoroi", "--home", str(home), "integrity",
                              "check", "--json"], capture_output=True, text=True, timeout=60,
                             check=False)
    assert checked.returncode == 1
    [record] = [json.loads(line) for line in checked.stdout.splitlines()]
    diff = record["diff"]
    assert "-listen = 80" in diff and "+listen = 8080" in diff
    assert "hunter2" not in diff and "swordfish" not in diff


def test_check_diffs_system_entities_recorded_with_the_baseline(tmp_path: Path) -> None:
    import socket

    watched = tmp_path / "w"
    watched.mkdir()
    home = tmp_path / "home"
    command = [sys.executable, "-m", "yoroi", "--home", str(home), "integrity"]
    base = subprocess.run([*command, "baseline", "--entities", str(watched)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert base.returncode == 0, base.stderr
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        checked = subprocess.run([*command, "check", "--json"], capture_output=True, text=True,
                                 timeout=60, check=False)
    assert checked.returncode == 1, checked.stderr
    records = [json.loads(line) for line in checked.stdout.splitlines()]
    assert {"entity": "port", "key": f"tcp/127.0.0.1:{port}", "change": "added"}.items() <= \
        next(r for r in records if r.get("key") == f"tcp/127.0.0.1:{port}").items()
