"""``yoroi appcontrol inventory|allow|status|run``: exit status, output and JSON."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from yoroi.cli import cli
from yoroi.modules.appcontrol.inventory import host_packages


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    shutil.copy2("/bin/true", root / "true")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "notes.txt").write_text("data\n")
    return root


def run(tmp_path: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "appcontrol", *args])


def test_inventory_json_then_status(tmp_path: Path, tree: Path) -> None:
    made = run(tmp_path, "inventory", "--json", str(tree))
    assert made.exit_code == 0, made.output
    report = json.loads(made.stdout)
    assert report["recorded"] == 2 and report["by_source"] == {"inventory": 2}
    assert report["database"].endswith("home/var/appcontrol/trust.msgpack")
    assert "recorded 2 files" in made.stderr
    status = run(tmp_path, "status", "--json")
    assert status.exit_code == 0
    shown = json.loads(status.stdout)
    assert shown["entries"] == 2 and shown["by_source"]["inventory"] == 2
    assert shown["inventory_dirs"] == [str(tree)] and shown["last_inventory"]
    assert shown["mode"] is None


def test_status_without_database_or_policy(tmp_path: Path) -> None:
    shown = run(tmp_path, "status")
    assert shown.exit_code == 0 and "no trust database yet" in shown.stdout


def test_status_shows_the_policy_mode(tmp_path: Path) -> None:
    (tmp_path / "home" / "etc").mkdir(parents=True)
    (tmp_path / "home" / "etc" / "agent.yaml").write_text("appcontrol:\n  mode: enforce\n")
    shown = json.loads(run(tmp_path, "status", "--json").stdout)
    assert shown["mode"] == "enforce"


def test_a_bad_policy_is_exit_2_with_line_and_key(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("appcontrol:\n  mode: block\n")
    shown = run(tmp_path, "status", "--config", str(policy))
    assert shown.exit_code == 2 and f"{policy}:2: appcontrol.mode" in shown.stderr


def test_inventory_takes_the_policy_dirs(tmp_path: Path, tree: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(f"appcontrol:\n  inventory_dirs: [{tree}]\n")
    made = run(tmp_path, "inventory", "--json", "--config", str(policy))
    assert made.exit_code == 0 and json.loads(made.stdout)["dirs"] == [str(tree)]


def test_allow_path_and_hash(tmp_path: Path, tree: Path) -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    allowed = run(tmp_path, "allow", "--json", str(tree / "notes.txt"), "--hash", sha.upper())
    assert allowed.exit_code == 0, allowed.output
    result = json.loads(allowed.stdout)
    assert result["files"][0]["path"] == str(tree / "notes.txt")
    assert result["files"][0]["source"] == "hash" and result["hashes"] == [sha]
    shown = json.loads(run(tmp_path, "status", "--json").stdout)
    assert shown["by_source"]["hash"] == 1 and shown["hashes"] == 2


@pytest.mark.parametrize("args", [
    (), ("--hash", "nothex"), ("/no/such/file",), ("--package", "no-such-package-here"),
])
def test_allow_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    refused = run(tmp_path, "allow", *args)
    assert refused.exit_code == 2 and refused.stderr.startswith("yoroi: error:")


@pytest.mark.skipif(host_packages() is None, reason="no dpkg database on this host")
def test_allow_package(tmp_path: Path) -> None:
    allowed = run(tmp_path, "allow", "--json", "--package", "coreutils")
    if allowed.exit_code == 2 and "not installed" in allowed.stderr:
        pytest.skip("coreutils is not installed from a package here")
    result = json.loads(allowed.stdout)
    assert result["packages"]["coreutils"] > 10
    assert allowed.exit_code == (1 if result["refused"] else 0)
