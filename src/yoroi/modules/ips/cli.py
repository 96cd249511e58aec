"""``yoroi ips``: intrusion prevention from the command line (selftest, rules, proxy)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from yoroi.home import Home
from yoroi.modules.ips.crs import RuleSet, install_crs
from yoroi.modules.ips.engine import Engine
from yoroi.modules.ips.selftest import (
    Report,
    default_exceptions,
    load_exceptions,
    regression_engine,
    run_suite,
)

EXIT_OK, EXIT_FOUND = 0, 1


@click.group()
def ips() -> None:
    """Intrusion prevention: ModSecurity v3 with the OWASP CRS and virtual patches."""


@ips.command()
@click.option("--tests", "tests_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Directory of go-ftw YAML tests (e.g. the CRS regression suite).")
@click.option("--json", "as_json", is_flag=True,
              help='Last line: {"passed": N, "total": M, "failed": [...]}.')
@click.option("--paranoia", type=click.IntRange(1, 4), default=4, show_default=True,
              help="CRS paranoia level (the CRS project runs its suite at 4).")
@click.option("--rules", "crs_dir", type=click.Path(exists=True, path_type=Path),
              help="CRS release directory to test instead of the installed one.")
@click.option("--exceptions", type=click.Path(dir_okay=False, path_type=Path),
              help="go-ftw overrides file of expected failures (default: Yoroi's list).")
@click.option("--strict", is_flag=True, help="Count listed exceptions as failures too.")
@click.pass_obj
def selftest(home: Home, tests_dir: Path, as_json: bool, paranoia: int, crs_dir: Path | None,
             exceptions: Path | None, strict: bool) -> None:
    """Run go-ftw regression tests straight through the engine (no network).

    Exit status 0 when every test passes or is a listed exception, 1 otherwise.
    """
    rules = RuleSet.from_crs(crs_dir) if crs_dir else None
    engine = regression_engine(rules, paranoia=paranoia)
    known = {} if strict else load_exceptions(exceptions or default_exceptions())
    with _quiet_stderr():  # libxml2 prints parse errors of test bodies on fd 2
        report = run_suite(tests_dir, engine, known)
    _print_report(report, as_json)
    raise SystemExit(EXIT_FOUND if report.failures else EXIT_OK)


def _print_report(report: Report, as_json: bool) -> None:
    for failure in report.failures:
        click.echo(f"FAIL {failure.title} ({failure.source.name}): {failure.reason}")
    for failure in report.expected:
        click.echo(f"known {failure.title}: {failure.reason}")
    click.echo(f"{report.passed}/{report.total} passed ({report.rate:.2f} %), "
               f"{len(report.failures)} failed, {len(report.expected)} known exceptions")
    if as_json:
        click.echo(json.dumps(report.summary()))


@ips.group()
def rules() -> None:
    """The rule sets the engine loads."""


@rules.command("install")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.pass_obj
def rules_install(home: Home, source: Path) -> None:
    """Install a CRS release (directory or tarball) after loading it in a fresh engine."""
    home.ensure()
    target = install_crs(source, home.state_dir, Engine)
    click.echo(f"installed {source} as {target}; new engines load it")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@ips.command("proxy")
@click.option("--listen", required=True, help="HOST:PORT to listen on, e.g. 0.0.0.0:8080.")
@click.option("--upstream", required=True, help="The application's URL, e.g. http://127.0.0.1:8000.")
@click.option("--mode", type=click.Choice(["prevent", "detect"]), default="prevent",
              show_default=True, help="Block what the rules deny, or only report it.")
@click.option("--rules", "rules_dir", type=click.Path(exists=True, path_type=Path),
              help="CRS release directory (default: the installed CRS).")
@click.option("--events", type=click.Path(dir_okay=False, path_type=Path),
              help="Append OCSF events (one JSON object a line) to FILE.")
@click.option("--log-all", is_flag=True, help="An HTTP Activity event for every exchange.")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Terminate TLS with this certificate chain (PEM).")
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The certificate's private key (PEM), if not in --cert.")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker processes sharing the port (SO_REUSEPORT).")
@click.option("--paranoia", type=click.IntRange(1, 4), default=1, show_default=True,
              help="CRS paranoia level.")
@click.option("--body-limit", type=click.IntRange(0), default=13_107_200, show_default=True,
              help="Largest request body in bytes (more is answered 413).")
@click.option("--timeout", type=click.FloatRange(0.1), default=60.0, show_default=True,
              help="Seconds to wait for the upstream's response (then 504).")
@click.pass_obj
def proxy(home: Home, /, **options: Any) -> None:
    """Reverse proxy that inspects every exchange (SIGHUP reloads rules, SIGTERM stops)."""
    from yoroi.modules.ips.proxy_cli import run_proxy

    raise SystemExit(run_proxy(home, **options))
