"""Undoing a family's damage: originals back at their original paths, its new files removed."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from yoroi.modules.behavior.backup import BackupRecord, BackupStore
from yoroi.modules.behavior.ledger import Damage

log = logging.getLogger(__name__)


@dataclass
class UndoReport:
    """What was put back, removed, and what could not be."""

    restored: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)  # harmed, and no copy was kept

    @property
    def ok(self) -> bool:
        return not self.failed and not self.lost


def undo(
    damage: Damage,
    records: list[BackupRecord],
    store: BackupStore,
    inside: Callable[[str], bool],
) -> UndoReport:
    """Restore every original the family harmed, then remove what it created.

    ``inside(path)`` limits removals to the protected locations (never delete elsewhere).
    """
    report = UndoReport()
    oldest = _oldest_by_target(damage, records)
    for target, record in sorted(oldest.items()):
        try:
            store.restore(record, to=Path(target))
            report.restored.append(target)
        except Exception as exc:  # one failure must not stop the others
            report.failed[target] = str(exc)
    harmed = {damage.original(p) for p in damage.changed} | damage.deleted
    report.lost = sorted(harmed - set(oldest))
    for path in sorted(damage.created - set(oldest)):
        _remove(path, inside, report)
    return report


def _oldest_by_target(damage: Damage, records: list[BackupRecord]) -> dict[str, BackupRecord]:
    harmed = {damage.original(p) for p in damage.changed} | damage.deleted
    chosen: dict[str, BackupRecord] = {}
    for record in sorted(records, key=lambda r: r.created):
        target = damage.original(record.path)
        if target in harmed and target not in chosen:
            chosen[target] = record
    return chosen


def _remove(path: str, inside: Callable[[str], bool], report: UndoReport) -> None:
    if not inside(path):
        report.failed[path] = "outside the protected locations; left in place"
        return
    try:
        os.unlink(path)
        report.removed.append(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        report.failed[path] = exc.strerror or str(exc)
