"""Checks: the file system now against the verified baseline, as exact changes.

Every difference in a recorded attribute is reported, and nothing else: atime never, and ctime
never on its own (it moves whenever anything else does, and also when nothing visible changed,
e.g. a chmod to the same mode; it only serves to decide whether a hash may be reused). A rename
is a removal and an addition; when the two share inode, type, mtime and content they are paired:
the REMOVED change then carries the new state in ``after`` and the ADDED change the old state in
``before``, so each names the other. ``accept`` moves the baseline forward and signs it again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from yoroi.modules.antimalware.walker import pseudo_devices
from yoroi.modules.integrity.baseline import (
    Baseline,
    BaselineStore,
    Progress,
    record_paths,
    scan,
)
from yoroi.modules.integrity.rules import Rule, walk_under
from yoroi.modules.integrity.types import Attribute, ChangeKind, FileChange, FileState

# Attribute -> FileState field, in report order; ctime left out on purpose (see above).
_COMPARED: tuple[tuple[Attribute, str], ...] = (
    (Attribute.TYPE, "type"), (Attribute.SHA256, "sha256"), (Attribute.BLAKE3, "blake3"),
    (Attribute.SIZE, "size"), (Attribute.MODE, "mode"), (Attribute.UID, "uid"),
    (Attribute.GID, "gid"), (Attribute.MTIME, "mtime_ns"), (Attribute.INODE, "inode"),
    (Attribute.NLINK, "nlink"), (Attribute.LINK, "link"), (Attribute.XATTRS, "xattrs"),
    (Attribute.ACL, "acl"), (Attribute.CAPS, "caps"),
)


@dataclass
class CheckReport:
    """The changes found, with the baselines they came from and how long it took."""

    changes: list[FileChange]
    baseline: Baseline
    current: Baseline
    elapsed: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)

    def rule_of(self, change: FileChange) -> Rule:
        """The rule that covers the changed path (now, or in the baseline when removed)."""
        if change.path in self.current.rule_of:
            return self.current.rule_for(change.path)
        return self.baseline.rule_for(change.path)

    def suspicious(self, change: FileChange) -> bool:
        """Policy marks changes here as Detection Findings, not just activity."""
        return self.rule_of(change).suspicious


def differences(before: FileState, after: FileState) -> tuple[str, ...]:
    """The attributes (values of :class:`Attribute`) that differ, in a fixed order."""
    return tuple(a.value for a, name in _COMPARED
                 if getattr(before, name) != getattr(after, name))


def compare(old: Baseline, new: Baseline) -> list[FileChange]:
    """Every change from ``old`` to ``new``, sorted by path."""
    changes: list[FileChange] = []
    removed = [old.states[p] for p in old.states.keys() - new.states.keys()]
    added = [new.states[p] for p in new.states.keys() - old.states.keys()]
    for path in old.states.keys() & new.states.keys():
        before, after = old.states[path], new.states[path]
        changed = differences(before, after)
        if changed:
            changes.append(FileChange(path, ChangeKind.MODIFIED, changed, before, after))
    changes.extend(_renames_or_not(removed, added))
    return sorted(changes, key=lambda c: (c.path, c.kind.value))


def _renames_or_not(removed: list[FileState], added: list[FileState]) -> list[FileChange]:
    by_identity = {_identity(s): s for s in added if s.inode is not None}
    out: list[FileChange] = []
    paired: set[str] = set()
    for gone in removed:
        twin = by_identity.pop(_identity(gone), None) if gone.inode is not None else None
        out.append(FileChange(gone.path, ChangeKind.REMOVED, before=gone, after=twin))
        if twin is not None:
            paired.add(twin.path)
            out.append(FileChange(twin.path, ChangeKind.ADDED, before=gone, after=twin))
    out.extend(FileChange(s.path, ChangeKind.ADDED, after=s) for s in added
               if s.path not in paired)
    return out


def _identity(state: FileState) -> tuple[Any, ...]:
    return (state.inode, state.type, state.mtime_ns, state.sha256, state.blake3, state.link)


def check(store: BaselineStore, jobs: int = 1, progress: Progress | None = None) -> CheckReport:
    """Verify the stored baseline, record the same rules now, and compare."""
    started = time.monotonic()
    old = store.load()
    now = scan(old.rules, jobs, previous=old, progress=progress)
    report = CheckReport(compare(old, now), old, now, errors=now.errors)
    report.elapsed = time.monotonic() - started
    return report


def accept(store: BaselineStore, paths: Iterable[str]) -> int:
    """Take the current state of ``paths`` (and what lies below) into the baseline.

    Returns the number of baseline entries added, replaced or dropped.
    """
    baseline = store.load()
    touched = 0
    skip = pseudo_devices()
    for path in (os.path.abspath(p) for p in paths):
        below = [p for p in baseline.states if p == path or p.startswith(path.rstrip("/") + "/")]
        for gone in below:
            del baseline.states[gone], baseline.rule_of[gone]
        found = record_paths(baseline.rules, walk_under(baseline.rules, path, skip))
        for where, index, state, _error in found:
            if state is not None:
                baseline.states[where], baseline.rule_of[where] = state, index
        touched += len(set(below) | {where for where, _, state, _ in found if state})
    store.save(baseline)
    return touched


def accept_all(store: BaselineStore, jobs: int = 1, progress: Progress | None = None) -> int:
    """A new baseline of the stored rules, from the file system as it is now."""
    old = store.load()
    now = scan(old.rules, jobs, progress=progress)
    now.skip_hash_if_unchanged = old.skip_hash_if_unchanged
    store.save(now)
    return len(compare(old, now))


def change_json(change: FileChange, report: CheckReport) -> dict[str, Any]:
    """One change as a JSON object (``--json`` prints one per line)."""
    rule = report.rule_of(change)
    out: dict[str, Any] = {
        "path": change.path, "change": change.kind.value, "attributes": list(change.attributes),
        "rule": rule.name, "suspicious": rule.suspicious,
        "before": asdict(change.before) if change.before else None,
        "after": asdict(change.after) if change.after else None,
    }
    if change.kind is ChangeKind.REMOVED and change.after is not None:
        out["renamed_to"] = change.after.path
    if change.kind is ChangeKind.ADDED and change.before is not None:
        out["renamed_from"] = change.before.path
    return out
