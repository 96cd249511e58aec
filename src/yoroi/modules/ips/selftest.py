"""Run go-ftw regression tests through Yoroi's reverse proxy and engine, on loopback.

Each stage's request goes byte for byte to an in-process proxy (see
:mod:`~yoroi.modules.ips.selftest_site`); the "log" that ``log_contains`` searches is one
ModSecurity-style line per rule that matched (``[id "942100"] [msg "..."] ...``) and the
status is what the client got. The site is set up as the CRS project sets up its own
regression runs (``tests/docker-compose.yml`` of the coreruleset repository): rule engine in
DetectionOnly, paranoia level 4 and its argument and file limits, an httpbin-like backend.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from yoroi.errors import ConfigError
from yoroi.modules.ips.crs import RuleSet, data_dir
from yoroi.modules.ips.engine import Engine, Mode
from yoroi.modules.ips.ftw import FtwTest, Stage, load_tests
from yoroi.modules.ips.selftest_site import Site, regression_site
from yoroi.modules.ips.types import RuleMatch

REGRESSION_PARANOIA = 4
# The CRS regression setup's limits and checks (BLOCKING_PARANOIA: 4, ARG_LENGTH,
# TOTAL_ARG_LENGTH, MAX_FILE_SIZE, COMBINED_FILE_SIZES, VALIDATE_UTF8_ENCODING).
REGRESSION_SETTINGS: dict[str, str | int] = {
    "arg_length": 400,
    "total_arg_length": 6400,
    "max_file_size": 64100,
    "combined_file_sizes": 65535,
    "crs_validate_utf8_encoding": 1,
}


@dataclass(frozen=True)
class Failure:
    """A test that did not pass, and why."""

    title: str
    source: Path
    reason: str


@dataclass(frozen=True)
class KnownFailure:
    """A test listed as an expected failure: its class and why it cannot pass here."""

    title: str
    kind: str
    reason: str


@dataclass(frozen=True)
class Report:
    """The outcome of a self-test run; ``expected`` are failures listed as known."""

    total: int
    failures: tuple[Failure, ...]
    expected: tuple[Failure, ...] = ()

    @property
    def passed(self) -> int:
        """How many tests passed."""
        return self.total - len(self.failures) - len(self.expected)

    @property
    def rate(self) -> float:
        """The pass rate in percent."""
        return 100.0 * self.passed / self.total if self.total else 0.0

    def summary(self) -> dict[str, object]:
        """The machine-readable last line of ``yoroi ips selftest --json``."""
        return {"passed": self.passed, "total": self.total,
                "failed": [f.title for f in self.failures],
                "expected_failures": [f.title for f in self.expected]}


def default_exceptions() -> Path:
    """Yoroi's list of CRS 3.3.4 tests that the engine alone cannot pass."""
    return data_dir() / "selftest-exceptions.yaml"


def load_exceptions(path: Path) -> dict[str, KnownFailure]:
    """A go-ftw style overrides file: ``test_overrides`` with ``expect_failure: true``."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        entries = document.get("test_overrides") or []
        return {str(e["name"]): KnownFailure(str(e["name"]), str(e.get("class", "unclassified")),
                                             str(e.get("reason") or ""))
                for e in entries if e.get("expect_failure")}
    except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a valid overrides file: {exc}") from exc


def regression_engine(rules: RuleSet | None = None,
                      paranoia: int = REGRESSION_PARANOIA) -> Engine:
    """An engine configured as the CRS project's own regression runs."""
    # Without Yoroi's virtual patches: the suite checks the CRS, the patches have their own tests.
    chosen = rules or replace(RuleSet.default(), patches=())
    return Engine(chosen, Mode.PREVENT, paranoia=paranoia,
                  crs_settings=REGRESSION_SETTINGS)


def run_suite(directory: Path, engine: Engine,
              known: Mapping[str, KnownFailure] | None = None) -> Report:
    """Run every test under ``directory`` through ``engine`` behind Yoroi's reverse proxy."""
    return run_tests(load_tests(directory), engine, known)


def run_tests(tests: Iterable[FtwTest], engine: Engine,
              known: Mapping[str, KnownFailure] | None = None) -> Report:
    """Run ``tests`` through ``engine``; a test fails at its first failing stage."""
    return asyncio.run(_run_tests(list(tests), engine, known or {}))


async def _run_tests(tests: list[FtwTest], engine: Engine,
                     known: Mapping[str, KnownFailure]) -> Report:
    failures: list[Failure] = []
    expected: list[Failure] = []
    async with regression_site(engine) as site:
        for test in tests:
            failure = await run_test(site, test)
            if failure is not None:
                (expected if test.title in known else failures).append(failure)
    return Report(len(tests), tuple(failures), tuple(expected))


async def run_test(site: Site, test: FtwTest) -> Failure | None:
    """The first failing stage of ``test``, or None when every stage passes."""
    for number, stage in enumerate(test.stages, 1):
        reason = await run_stage(site, stage)
        if reason is not None:
            where = f"stage {number}: " if len(test.stages) > 1 else ""
            return Failure(test.title, test.source, where + reason)
    return None


async def run_stage(site: Site, stage: Stage) -> str | None:
    """Why the stage fails, or None when it passes."""
    expect = stage.expect
    if stage.request is None:
        return f"cannot build the request: {stage.malformed}"
    status, matches = await site.exchange(stage.request)
    if expect.expect_error:
        return None if status is None else f"expected an error, the proxy answered {status}"
    if status is None:
        return "no answer (connection closed or timed out)"
    log = "\n".join(log_line(m) for m in matches)
    if expect.status and status not in expect.status:
        return f"status {status}, expected {sorted(expect.status)}"
    if expect.log_contains and not re.search(expect.log_contains, log):
        return f"log lacks {expect.log_contains!r} (matched: {_ids(matches)})"
    if expect.no_log_contains and re.search(expect.no_log_contains, log):
        return f"log contains {expect.no_log_contains!r}"
    return None


def log_line(match: RuleMatch) -> str:
    """A match as ModSecurity writes it in the error log (what ``log_contains`` searches)."""
    tags = " ".join(f'[tag "{tag}"]' for tag in match.tags)
    return (f'[id "{match.rule_id}"] [msg "{match.message}"] '
            f'[severity "{match.severity}"] {tags}').rstrip()


def _ids(matches: tuple[RuleMatch, ...]) -> str:
    return ", ".join(str(m.rule_id) for m in matches) or "none"
