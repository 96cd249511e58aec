"""What each process did to the files, so that a family's damage can be undone.

Per process: files it created, changed, deleted and renamed. After a verdict, the family's
ledger says which originals to put back (and where: a file renamed to ``x.locked`` goes back to
``x``) and which of its new files to remove (ransom notes, encrypted copies).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from yoroi.modules.behavior.types import Activity, FileEvent


@dataclass
class Damage:
    """A family's effect on the file system, ready to be undone."""

    created: set[str] = field(default_factory=set)  # new paths (remove them)
    changed: set[str] = field(default_factory=set)  # existing files rewritten (restore)
    deleted: set[str] = field(default_factory=set)  # originals removed or renamed away
    origin: dict[str, str] = field(default_factory=dict)  # current path -> original path

    def original(self, path: str) -> str:
        """Where the content now at ``path`` lived before the family moved it."""
        return self.origin.get(path, path)

    @property
    def touched(self) -> int:
        """Distinct original files harmed (changed, deleted or moved)."""
        return len({self.original(p) for p in self.changed} | self.deleted)


class Ledger:
    """File events by pid, folded into :class:`Damage` for any set of pids."""

    def __init__(self) -> None:
        self._events: dict[int, list[FileEvent]] = {}
        self._order: list[FileEvent] = []
        self._lock = threading.Lock()

    def record(self, event: FileEvent) -> None:
        with self._lock:
            self._events.setdefault(event.pid, []).append(event)
            self._order.append(event)

    def pids(self) -> set[int]:
        with self._lock:
            return set(self._events)

    def damage(self, pids: Iterable[int]) -> Damage:
        """Replay the events of ``pids`` in the order they happened."""
        wanted = set(pids)
        with self._lock:
            events = [e for e in self._order if e.pid in wanted]
        damage = Damage()
        for event in events:
            _apply(damage, event)
        return damage

    def forget(self, pids: Iterable[int]) -> None:
        """Drop the events of processes judged honest, or already answered for."""
        gone = set(pids)
        with self._lock:
            for pid in gone:
                self._events.pop(pid, None)
            self._order = [e for e in self._order if e.pid not in gone]


def _apply(damage: Damage, event: FileEvent) -> None:
    path = event.path
    if event.activity is Activity.CREATE:
        if path not in damage.deleted:
            damage.created.add(path)
    elif event.activity is Activity.WRITE:
        if path not in damage.created:
            damage.changed.add(path)
    elif event.activity is Activity.DELETE:
        _delete(damage, path)
    elif event.activity is Activity.RENAME and event.old_path is not None:
        _rename(damage, event.old_path, path)


def _delete(damage: Damage, path: str) -> None:
    if path in damage.created:
        damage.created.discard(path)
        if path in damage.origin:  # a moved original, now gone: its source stays deleted
            damage.origin.pop(path)
        return
    damage.changed.discard(path)
    damage.deleted.add(path)


def _rename(damage: Damage, old: str, new: str) -> None:
    original = damage.origin.pop(old, old)
    if old in damage.created and old not in damage.origin.values():
        damage.created.discard(old)
        if original == old:  # a file of the family's own, moved: still its own
            damage.created.add(new)
            return
    damage.changed.discard(old)
    damage.deleted.add(original)
    damage.created.add(new)
    damage.origin[new] = original
