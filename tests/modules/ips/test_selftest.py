"""``yoroi ips selftest``: go-ftw tests through the engine, on the CRS 3.3.4 suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from yoroi.cli import cli
from yoroi.modules.ips.crs import DEBIAN_CRS
from yoroi.modules.ips.selftest import (
    default_exceptions,
    load_exceptions,
    regression_engine,
    run_suite,
)

SUITE = Path(__file__).parents[4] / "shared" / "crs-regression-3.3.4"
pytestmark = pytest.mark.skipif(not (DEBIAN_CRS / "rules").is_dir(),
                                reason="Debian's modsecurity-crs is not installed")

SMALL = """\
meta: {author: yoroi, enabled: true, name: small.yaml}
tests:
  - test_title: small-1
    stages:
      - stage:
          input: {method: POST, uri: /, headers: {Host: localhost}, data: "a=1 OR 1=1"}
          output: {log_contains: 'id "942100"'}
  - test_title: small-2
    stages:
      - stage:
          input: {method: GET, uri: /, headers: {Host: localhost, User-Agent: test}}
          output: {no_log_contains: 'id "942100"', status: 200}
  - test_title: small-3
    stages:
      - stage:
          input: {method: GET, uri: "/?q=hello", headers: {Host: localhost}}
          output: {log_contains: 'id "941100"'}
"""


def run(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli, ["ips", "selftest", *args])
    return result.exit_code, result.output.splitlines()


def test_json_output_and_exit_status(tmp_path: Path) -> None:
    (tmp_path / "small.yaml").write_text(SMALL)
    code, lines = run("--tests", str(tmp_path), "--json")
    assert code == 1
    assert json.loads(lines[-1]) == {"passed": 2, "total": 3, "failed": ["small-3"],
                                     "expected_failures": []}
    assert any(line.startswith("FAIL small-3") and "941100" in line for line in lines)


def test_all_passing_exits_zero(tmp_path: Path) -> None:
    (tmp_path / "small.yaml").write_text(SMALL.split("  - test_title: small-3")[0])
    assert run("--tests", str(tmp_path))[0] == 0


def test_broken_test_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("tests: [\n")
    result = CliRunner().invoke(cli, ["ips", "selftest", "--tests", str(tmp_path)])
    assert result.exit_code == 2 and "bad.yaml" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.skipif(not SUITE.is_dir(), reason="the shared CRS regression suite is absent")
def test_crs_regression_suite_through_the_engine() -> None:
    known = load_exceptions(default_exceptions())
    report = run_suite(SUITE, regression_engine(), known)
    assert report.total > 2000
    assert report.failures == (), [f"{f.title}: {f.reason}" for f in report.failures]
    assert report.rate >= 97.5  # raw rate; every other test is a documented exception
    assert len(report.expected) <= 50
