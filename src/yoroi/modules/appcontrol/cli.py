"""``yoroi appcontrol``: the trust database from the command line.

``inventory`` records the software on the host, ``allow`` adds explicit trust, ``status`` counts
what is trusted. Exit status: 0 ok, 1 something was refused (``allow --package`` found files
that differ from dpkg's record), 2 usage or runtime error.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click

from yoroi.errors import UsageError
from yoroi.home import Home
from yoroi.modules.appcontrol.inventory import (
    InventoryProgress,
    InventoryReport,
    file_entry,
    host_packages,
    package_entries,
    run_inventory,
)
from yoroi.modules.appcontrol.policy import AppcontrolPolicy
from yoroi.modules.appcontrol.trust import TrustDatabase
from yoroi.modules.appcontrol.types import Source, TrustEntry
from yoroi.platform.linux.dpkg import PackageDatabase
from yoroi.yamldoc import read_yaml, validate

EXIT_OK, EXIT_FOUND, EXIT_ERROR = 0, 1, 2
SECTION = "appcontrol"
_config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
    help="Policy file whose appcontrol section to use (default: <config>/agent.yaml).")


@click.group("appcontrol")
def appcontrol() -> None:
    """Application control: only approved software runs.

    The trust database lives in <state>/appcontrol/trust.msgpack.
    """


@appcontrol.command("inventory")
@click.argument("dirs", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--jobs", "-j", type=click.IntRange(1, 256), default=None,
              help="Hashing threads (default: all cores).")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no summary on stderr.")
@_config_option
@click.pass_obj
def inventory_command(home: Home, dirs: tuple[str, ...], as_json: bool, jobs: int | None,
                      quiet: bool, config_file: Path | None) -> None:
    """Trust the software now under DIR... (default: the policy's inventory_dirs, else PATH
    directories, /usr/lib*, /lib*, /opt and /usr/local).

    Executables, shared libraries and scripts with a shebang are recorded; files of installed
    packages whose MD5 matches dpkg's record are marked as package files. Nothing is refused:
    what runs today keeps running. Running it again refreshes the record of those directories.
    """
    policy = load_policy(home, config_file)
    chosen = list(dirs) or (list(policy.inventory_dirs) if policy and policy.inventory_dirs
                            else None)
    db = TrustDatabase.at_state(home.state_dir)
    packages = host_packages()
    progress = _Progress(sys.stderr, enabled=not quiet and sys.stderr.isatty())
    report = run_inventory(db, chosen, packages=packages, jobs=jobs, progress=progress.update)
    progress.clear()
    refused = _policy_packages(db, policy, packages)
    if as_json:
        click.echo(json.dumps({**report.as_dict(), "database": str(db.path),
                               "policy_packages_refused": refused}))
    if not quiet:
        _inventory_summary(report, db)
    raise SystemExit(EXIT_OK)


@appcontrol.command("allow")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--hash", "hashes", multiple=True, metavar="SHA256",
              help="Trust this content anywhere (repeatable).")
@click.option("--package", "package_names", multiple=True, metavar="NAME",
              help="Trust the installed package's files that match dpkg's MD5 (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print what was trusted as JSON.")
@click.pass_obj
def allow_command(home: Home, paths: tuple[Path, ...], hashes: tuple[str, ...],
                  package_names: tuple[str, ...], as_json: bool) -> None:
    """Trust PATH... (their content, anywhere), --hash SHA256 or --package NAME.

    Exit 1 when a package file differs from dpkg's record: that file is not trusted.
    """
    if not (paths or hashes or package_names):
        raise UsageError("name a PATH to allow, or --hash SHA256, or --package NAME")
    db = TrustDatabase.at_state(home.state_dir)
    files = [file_entry(path, Source.HASH) for path in paths]
    for sha in hashes:
        _trust_hash(db, sha.lower())
    for entry, _ in files:
        db.trust_hash(entry.sha256)
    db.add(files)
    trusted, refused = _packages(db, package_names, host_packages())
    db.save()
    result = {"files": [entry_json(e) for e, _ in files], "hashes": [h.lower() for h in hashes],
              "packages": trusted, "refused": refused, "database": str(db.path)}
    click.echo(json.dumps(result) if as_json else _allow_text(result))
    raise SystemExit(EXIT_FOUND if refused else EXIT_OK)


@appcontrol.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@_config_option
@click.pass_obj
def status_command(home: Home, as_json: bool, config_file: Path | None) -> None:
    """What is trusted (by source), when the inventory last ran, and the policy's mode."""
    db = TrustDatabase.at_state(home.state_dir)
    policy = load_policy(home, config_file)
    when = db.inventory_time
    status = {
        "database": str(db.path), "exists": db.path.exists(),
        "entries": sum(v for k, v in db.counts().items() if k != "hashes"),
        "by_source": {k: v for k, v in db.counts().items() if k != "hashes"},
        "hashes": db.counts()["hashes"],
        "last_inventory": datetime.fromtimestamp(when, UTC).isoformat() if when else None,
        "inventory_dirs": db.inventory_dirs,
        "mode": policy.mode.value if policy else None,
        "enabled": policy.enabled if policy else None,
    }
    click.echo(json.dumps(status) if as_json else _status_text(status))
    raise SystemExit(EXIT_OK)


@appcontrol.command("run")
@click.option("--path", "paths", multiple=True, required=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Directory whose executions are judged (repeatable); its content is trusted "
              "at start (inventory).")
@click.option("--mode", type=click.Choice(["audit", "enforce"]), required=True,
              help="audit: allow and report; enforce: deny and report.")
@click.option("--events", "events_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Append one OCSF JSON event per judged execution to FILE.")
@click.option("--json", "as_json", is_flag=True, help="Events on stdout as JSON lines.")
@click.option("--decision-timeout", type=float, default=0.25, show_default=True,
              help="Seconds before a late decision is allowed (and reported).")
@click.pass_obj
def run_command(home: Home, paths: tuple[Path, ...], mode: str, events_file: Path | None,
                as_json: bool, decision_timeout: float) -> None:
    """Trust what is under --path now, then judge every execution there until Ctrl-C
    (needs root). Runs in its own process: start it from a shell or systemd, not from code
    that forks while it runs."""
    from yoroi.modules.appcontrol.run import run_enforcer
    from yoroi.modules.appcontrol.types import Mode

    raise SystemExit(run_enforcer(home, paths, Mode(mode), events_file, as_json,
                                  decision_timeout))


def load_policy(home: Home, config_file: Path | None) -> AppcontrolPolicy | None:
    """The appcontrol section of the policy file, or None when there is none."""
    path = config_file or home.policy_file
    if config_file is None and not path.exists():
        return None
    doc = read_yaml(path)
    section = doc.data.get(SECTION) if isinstance(doc.data, dict) else None
    if section is None:
        return None
    return validate(doc, AppcontrolPolicy, section, prefix=(SECTION,))


def _trust_hash(db: TrustDatabase, sha: str) -> None:
    try:
        db.trust_hash(sha)
    except ValueError as exc:
        raise UsageError(f"--hash {sha}: {exc}") from None


def _packages(db: TrustDatabase, names: tuple[str, ...],
              packages: PackageDatabase | None) -> tuple[dict[str, int], list[str]]:
    trusted: dict[str, int] = {}
    refused: list[str] = []
    if not names:
        return trusted, refused
    if packages is None:
        raise UsageError("--package needs dpkg's database (/var/lib/dpkg), which this host lacks")
    for name in names:
        if not packages.files(name) and not packages.md5sums(name):
            raise UsageError(f"--package {name}: not installed (see 'dpkg -l')")
        entries, bad = package_entries(packages, name)
        trusted[name] = db.add(entries)
        refused.extend(bad)
    return trusted, refused


def _policy_packages(db: TrustDatabase, policy: AppcontrolPolicy | None,
                     packages: PackageDatabase | None) -> list[str]:
    """The policy's {package: NAME} rules, resolved into entries (installed ones only)."""
    names = policy.rule_set().packages if policy else ()
    if not names or packages is None:
        return []
    refused: list[str] = []
    for name in names:
        entries, bad = package_entries(packages, name)
        db.add(entries)
        refused.extend(bad)
    db.save()
    return refused


def _inventory_summary(report: InventoryReport, db: TrustDatabase) -> None:
    for path in report.package_mismatches:
        click.echo(f"yoroi: warning: {path}: differs from its package's record; trusted as "
                   "found (check it)", err=True)
    for path, error in report.errors:
        click.echo(f"yoroi: {path}: {error} (not recorded)", err=True)
    sources = ", ".join(f"{k} {v}" for k, v in sorted(report.recorded.items())) or "none"
    click.echo(f"recorded {report.total} files ({sources}) in {report.elapsed:.1f}s; read "
               f"{report.hashed} ({report.bytes / 1e6:.1f} MB), unchanged {report.reused}; "
               f"trust database: {db.path}", err=True)


def _allow_text(result: dict[str, Any]) -> str:
    lines = [f"trusted {f['path']} (sha256 {f['sha256']})" for f in result["files"]]
    lines += [f"trusted sha256 {h}" for h in result["hashes"]]
    lines += [f"trusted package {name}: {count} files" for name, count in
              result["packages"].items()]
    lines += [f"refused {path}: differs from its package's record" for path in result["refused"]]
    return "\n".join(lines)


def _status_text(status: dict[str, Any]) -> str:
    if not status["exists"]:
        return (f"no trust database yet at {status['database']}; "
                "run 'yoroi appcontrol inventory'")
    sources = ", ".join(f"{k} {v}" for k, v in status["by_source"].items())
    mode = status["mode"] or "no policy section"
    return "\n".join([
        f"trust database: {status['database']}",
        f"entries: {status['entries']} ({sources}); hashes trusted anywhere: {status['hashes']}",
        f"last inventory: {status['last_inventory'] or 'never'} "
        f"({', '.join(status['inventory_dirs']) or '-'})",
        f"mode: {mode}",
    ])


class _Progress:
    """A one-line counter on a terminal, at most every 0.2 s."""

    def __init__(self, stream: IO[str], enabled: bool) -> None:
        self.stream, self.enabled, self.last = stream, enabled, 0.0

    def update(self, progress: InventoryProgress) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.2:
            self.last = now
            self.stream.write(f"\r{progress.seen} files, {progress.hashed} read "
                              f"({progress.bytes / 1e6:.0f} MB)\x1b[K")
            self.stream.flush()

    def clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def entry_json(entry: TrustEntry) -> dict[str, Any]:
    """A trust entry as JSON."""
    return {"path": entry.path, "sha256": entry.sha256, "size": entry.size,
            "mode": f"{entry.mode:04o}", "source": entry.source.value, "package": entry.package}
