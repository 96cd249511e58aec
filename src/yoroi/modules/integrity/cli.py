"""``yoroi integrity``: baselines, checks and accepting changes, in the foreground.

Exit status: 0 no change, 1 changes found, 2 usage or runtime error (a tampered baseline too).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import IO

import click

from yoroi.errors import BaselineTampered, UsageError
from yoroi.home import Home
from yoroi.modules.integrity.baseline import BaselineStore, default_jobs, scan
from yoroi.modules.integrity.changelog import ChangeLog
from yoroi.modules.integrity.check import CheckReport, accept, accept_all, change_json, check
from yoroi.modules.integrity.entities import diff as entity_diff
from yoroi.modules.integrity.entities import dumps as entity_dumps
from yoroi.modules.integrity.entities import loads as entity_loads
from yoroi.modules.integrity.entities import snapshot as entity_snapshot
from yoroi.modules.integrity.policy import IntegrityPolicy, RulePolicy
from yoroi.modules.integrity.realtime import GapReason, RealtimeChange, RealtimeWatcher
from yoroi.modules.integrity.records import ENTITIES_FILE, keep_texts, with_diff
from yoroi.modules.integrity.rules import Rule, compile_rule, expand
from yoroi.modules.integrity.types import ChangeKind, EntityChange, FileChange
from yoroi.modules.integrity.whodata import WhoResolver
from yoroi.platform.linux.dpkg import DpkgDatabase
from yoroi.platform.linux.proc_connector import ProcConnector
from yoroi.platform.linux.process import Processes
from yoroi.yamldoc import read_yaml, validate

EXIT_OK, EXIT_FOUND, EXIT_ERROR = 0, 1, 2
PROGRESS_EVERY = 0.2
_jobs_option = click.option("--jobs", "-j", type=click.IntRange(1, 256), default=None,
                            help="Hashing processes (default: all cores).")
_quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress and no summary.")


@click.group("integrity")
def integrity() -> None:
    """Integrity monitoring: baselines of files, checks against them, accepted changes."""


@integrity.command("baseline")
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Take the rules from this policy's integrity section (default: "
              "<config>/agent.yaml) when no PATH is given.")
@click.option("--hash", "hash_name", type=click.Choice(["sha256", "blake3"]), default=None,
              help="Content hash for PATHs (default sha256).")
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="With PATHs: skip files whose path or name matches GLOB (repeatable).")
@click.option("--suspicious", is_flag=True, help="With PATHs: changes are Detection Findings.")
@click.option("--entities", is_flag=True,
              help="Also record the system entities (users, groups, sudoers, packages, units, "
              "crontabs, listening ports, kernel modules, authorized_keys, sysctls); check then "
              "diffs them too.")
@click.option("--skip-hash-if-unchanged", is_flag=True, default=None,
              help="Checks reuse a hash when size, mtime, ctime and inode are unchanged.")
@_jobs_option
@_quiet_option
@click.pass_obj
def baseline_command(
    home: Home, paths: tuple[str, ...], config_file: Path | None, hash_name: str | None,
    exclude: tuple[str, ...], suspicious: bool, entities: bool,
    skip_hash_if_unchanged: bool | None, jobs: int | None, quiet: bool,
) -> None:
    """Record PATH... (or the policy's rules) as the trusted state, signed.

    Directories are walked without following links or entering /proc-like file systems.
    The baseline goes to <state>/integrity/baseline.msgpack, signed with the agent's Ed25519
    key (<state>/integrity/key, made on first use).
    """
    policy = _policy(home, config_file, paths, hash_name, exclude, suspicious)
    rules = _rules(policy, paths, exclude, suspicious)
    skip = policy.skip_hash_if_unchanged if skip_hash_if_unchanged is None \
        else skip_hash_if_unchanged
    progress = Progress(sys.stderr, enabled=not quiet and sys.stderr.isatty())
    started = time.monotonic()
    made = scan(rules, jobs or policy.jobs or default_jobs(), progress=progress.update)
    made.skip_hash_if_unchanged = skip
    store = _store(home)
    store.save(made)
    keep_texts(store.directory, made)
    entity_file = store.directory / ENTITIES_FILE
    if entities:
        entity_file.write_bytes(entity_dumps(entity_snapshot()))
    else:
        entity_file.unlink(missing_ok=True)
    progress.clear()
    _print_errors(made.errors)
    if not quiet:
        _summary("recorded", len(made.states), time.monotonic() - started,
                 f"baseline: {store.path}")
    raise SystemExit(EXIT_OK)


@integrity.command("check")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per change on stdout.")
@_jobs_option
@_quiet_option
@click.pass_obj
def check_command(home: Home, as_json: bool, jobs: int | None, quiet: bool) -> None:
    """Compare the files now with the verified baseline; print every change.

    Exit 1 when something changed. A baseline whose signature does not verify is never used:
    the check stops with exit 2 (with --json, {"tampered": true, "message": ...} on stdout).
    """
    progress = Progress(sys.stderr, enabled=not quiet and sys.stderr.isatty())
    try:
        report = check(_store(home), jobs or default_jobs(), progress=progress.update)
    except BaselineTampered as exc:
        progress.clear()
        if as_json:
            click.echo(json.dumps({"tampered": True, "message": str(exc)}))
        raise
    progress.clear()
    store = _store(home)
    for change in report.changes:
        record = with_diff(store.directory, change_json(change, report))
        click.echo(json.dumps(record) if as_json else _change_line(change, report))
        if not as_json and record.get("diff"):
            click.echo(record["diff"].rstrip("\n"))
    entity_changes = _entity_changes(store.directory)
    for entity in entity_changes:
        record = {"entity": entity.entity, "key": entity.key, "change": entity.kind.value,
                  "fields": list(entity.fields), "before": entity.before, "after": entity.after}
        click.echo(json.dumps(record, default=str) if as_json else
                   f"{entity.kind.value:8} {entity.entity} {entity.key}"
                   + (f" ({', '.join(entity.fields)})" if entity.fields else ""))
    _print_errors(report.errors)
    if not quiet:
        suspicious = sum(1 for c in report.changes if report.suspicious(c))
        _summary("checked", len(report.current.states), report.elapsed,
                 f"changes: {len(report.changes)} ({suspicious} suspicious)")
    found = report.changes or entity_changes
    raise SystemExit(EXIT_FOUND if found else (EXIT_ERROR if report.errors else EXIT_OK))


@integrity.command("accept")
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option("--all", "everything", is_flag=True, help="Accept every change (a new baseline).")
@_jobs_option
@click.pass_obj
def accept_command(home: Home, paths: tuple[str, ...], everything: bool,
                   jobs: int | None) -> None:
    """Take the current state of PATH... (and below), or of everything, into the baseline."""
    if everything == bool(paths):
        raise UsageError("name the PATHs to accept, or --all (not both)")
    store = _store(home)
    count = accept_all(store, jobs or default_jobs()) if everything else accept(store, paths)
    accepted = store.load()
    keep_texts(store.directory, accepted, None if everything else [
        p for p in accepted.states if any(p == a or p.startswith(a.rstrip("/") + "/")
                                          for a in (os.path.abspath(x) for x in paths))])
    click.echo(f"accepted: {count} entries; baseline re-signed: {store.path}", err=True)
    raise SystemExit(EXIT_OK)


@integrity.command("watch")
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per change on stdout.")
@click.pass_obj
def watch_command(home: Home, paths: tuple[str, ...], as_json: bool) -> None:
    """Report changes under PATH... as they happen, with the process, user and package
    transaction that made them, until Ctrl-C (needs root). Every change is also chained onto
    <state>/integrity/changes.log."""
    home.ensure()
    changes = ChangeLog.at_state(home.state_dir)

    def on_change(change: RealtimeChange) -> None:
        record = change.as_dict()
        changes.append(record)
        click.echo(json.dumps(record) if as_json else _watch_line(change))

    def on_gap(reason: GapReason, watched: tuple[str, ...]) -> None:
        click.echo(f"yoroi: {reason}: changes may have been missed under {', '.join(watched)};"
                   " run 'yoroi integrity check'", err=True)

    who = WhoResolver(Processes(), connector=ProcConnector())
    with RealtimeWatcher(paths, on_change, on_gap, who=who, packages=DpkgDatabase):
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    raise SystemExit(EXIT_OK)


def _watch_line(change: RealtimeChange) -> str:
    actor = change.actor
    who = f"pid {change.pid}"
    if actor is not None:
        process = actor.process
        who += f" {process.exe or '?'} ({process.user or process.uid}/{process.login_user or '-'})"
    moved = f" <- {change.old_path}" if change.old_path else ""
    package = f" [{', '.join(change.packages) or 'package manager'}" \
              f"{', expected' if change.expected else ''}]" if actor and actor.transaction else ""
    return f"{change.kind.value:6} {change.path}{moved} by {who}{package}"


def _entity_changes(directory: Path) -> list[EntityChange]:
    """Entity changes since ``baseline --entities`` (none when it was not asked for)."""
    try:
        recorded = entity_loads((directory / ENTITIES_FILE).read_bytes())
    except FileNotFoundError:
        return []
    return entity_diff(recorded, entity_snapshot())


def _store(home: Home) -> BaselineStore:
    return BaselineStore(home.state_dir / "integrity")


def _policy(home: Home, config_file: Path | None, paths: tuple[str, ...], hash_name: str | None,
            exclude: tuple[str, ...], suspicious: bool) -> IntegrityPolicy:
    if paths:
        return IntegrityPolicy(hash=hash_name or "sha256")
    if exclude or suspicious or hash_name:
        raise UsageError("--exclude, --suspicious and --hash go with PATHs; the policy's "
                         "rules say these themselves")
    path = config_file or home.policy_file
    doc = read_yaml(path)
    section = doc.data.get("integrity") if isinstance(doc.data, dict) else None
    policy = validate(doc, IntegrityPolicy, section, prefix=("integrity",))
    if not policy.templates and not policy.rules:
        raise UsageError(f"{path}: the integrity section has no templates or rules; name "
                         "PATHs or add some")
    return policy


def _rules(policy: IntegrityPolicy, paths: tuple[str, ...], exclude: tuple[str, ...],
           suspicious: bool) -> tuple[Rule, ...]:
    if not paths:
        return expand(policy)
    spec = RulePolicy(name="command-line", paths=tuple(os.path.abspath(p) for p in paths),
                      exclude=exclude, suspicious=suspicious)
    return (compile_rule(spec, policy.hash),)


def _change_line(change: FileChange, report: CheckReport) -> str:
    mark = "!" if report.suspicious(change) else " "
    if change.kind is ChangeKind.MODIFIED:
        return f"{mark} modified {change.path} ({', '.join(change.attributes)})"
    if change.kind is ChangeKind.REMOVED and change.after is not None:
        return f"{mark} renamed  {change.path} -> {change.after.path}"
    if change.kind is ChangeKind.ADDED and change.before is not None:
        return f"{mark} renamed  {change.path} <- {change.before.path}"
    return f"{mark} {change.kind.value:8} {change.path}"


def _print_errors(errors: list[tuple[str, str]]) -> None:
    for path, reason in errors:
        click.echo(f"yoroi: {path}: {reason}", err=True)


def _summary(verb: str, files: int, seconds: float, tail: str) -> None:
    rate = files / seconds if seconds > 0 else 0.0
    click.echo(f"{verb} {files} files in {seconds:.2f} s ({rate:.0f} files/s); {tail}", err=True)


class Progress:
    """One line on a terminal, redrawn a few times a second."""

    def __init__(self, stream: IO[str], enabled: bool) -> None:
        self.stream, self.enabled = stream, enabled
        self._last = 0.0

    def update(self, files: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self._last >= PROGRESS_EVERY:
            self._last = now
            self.stream.write(f"\r\x1b[K{files} files recorded")
            self.stream.flush()

    def clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

