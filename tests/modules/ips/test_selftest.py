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


HTTP_LAYER = """\
tests:
  - test_title: http-1
    desc: a request line h11 refuses gets the proxy's 400, as from Apache
    stages:
      - stage:
          input: {method: "     GET", uri: /, headers: {Host: localhost}}
          output: {status: 400}
  - test_title: http-2
    desc: DetectionOnly as the CRS runs its suite - the rule matches, the backend answers
    stages:
      - stage:
          input: {method: POST, uri: /post, headers: {Host: localhost}, data: "a=1 OR 1=1"}
          output: {status: 200, log_contains: 'id "942100"'}
  - test_title: http-3
    desc: httpbin (the CRS harness backend) answers 404 off its routes, HEAD has no body
    stages:
      - stage:
          input: {method: HEAD, uri: /nowhere, headers: {Host: localhost}}
          output: {status: 404}
  - test_title: http-4
    desc: a body that never comes leaves the client without an answer (an error)
    stages:
      - stage:
          input: {method: POST, uri: /, headers: {Host: localhost, Content-Length: "50"},
                  stop_magic: true}
          output: {expect_error: true}
  - test_title: http-5
    desc: raw bytes go out as written, bare LF and all (which the proxy refuses)
    stages:
      - stage:
          input: {raw_request: "GET /?q=<script>alert(1)</script> HTTP/1.1\\nHost: x\\n\\n"}
          output: {status: 400, no_log_contains: 'id "941100"'}
"""


def test_requests_go_through_the_proxy_http_layer(tmp_path: Path) -> None:
    (tmp_path / "http.yaml").write_text(HTTP_LAYER)
    report = run_suite(tmp_path, regression_engine())
    assert [f"{f.title}: {f.reason}" for f in report.failures] == []
    assert report.passed == 5


def test_utf8_header_bytes_reach_the_rules(tmp_path: Path) -> None:
    # The proxy hands headers over as ISO 8859-1 text; the engine must see the original bytes.
    (tmp_path / "cookie.yaml").write_text("""\
tests:
  - test_title: cookie-1
    stages:
      - stage:
          input:
            headers: {Host: localhost,
                      Cookie: "\\uff1cscript \\uff1ealert(1)\\uff1c/script\\uff1e=v"}
          output: {log_contains: 'id "941110"'}
""")
    report = run_suite(tmp_path, regression_engine())
    assert report.failures == (), report.failures[0].reason


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
    assert report.rate >= 99.0  # real passes; every other test is a documented exception
    assert len(report.expected) <= 6
