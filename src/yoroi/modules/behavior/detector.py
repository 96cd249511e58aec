"""The ransomware detector: file activity and content profiles in, evidence and a verdict out.

Pure logic, no I/O: the caller attributes each file event to a process family, profiles the
content before and after (``content.profile``), and asks for the score or the verdict of a
family. Signals and weights are described in docs/behavior.md, "How ransomware is recognised".
"""

from __future__ import annotations

import os.path
import time as clock
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from yoroi.modules.behavior import changes
from yoroi.modules.behavior.scoring import Bounded, Tally
from yoroi.modules.behavior.settings import DetectorSettings
from yoroi.modules.behavior.types import Activity, ContentProfile, Evidence, FileEvent, Signal

__all__ = ["Detector", "DetectorSettings", "Verdict"]

_T = TypeVar("_T", "_Written", "_Deleted")
_FILE_SIGNALS = frozenset(Signal) - {Signal.RANSOM_NOTE, Signal.DECOY}
_NOTE_KINDS = frozenset({"text", "html", "xml"})
_MAX_FAMILIES = 4096


@dataclass(frozen=True)
class Verdict:
    """A family judged ransomware: its score when the threshold was passed, and the evidence."""

    family: int
    score: float
    threshold: float
    time: float
    summary: Mapping[str, object]
    kind: str = "ransomware"


@dataclass(frozen=True)
class _Written:
    """A new file of ciphertext, waiting for the deletion of the original it replaces."""

    time: float
    size: int
    pid: int


@dataclass(frozen=True)
class _Deleted:
    """A deleted file of plain content, waiting for the ciphertext that replaced it."""

    time: float
    size: int | None


@dataclass
class _Family:
    """What the detector remembers about one process family."""

    family: int
    tally: Tally
    memory: int
    keys: Bounded[str, str] = field(init=False)  # path -> the path the file had when first seen
    created: Bounded[str, float] = field(init=False)
    written: Bounded[str, _Written] = field(init=False)
    deleted: Bounded[str, _Deleted] = field(init=False)
    renamed: Bounded[str, str] = field(init=False)  # new path -> its new, unusual extension
    notes: Bounded[tuple[object, ...], set[str]] = field(init=False)
    noted: bool = False
    verdict: Verdict | None = None

    def __post_init__(self) -> None:
        for name in ("keys", "created", "written", "deleted", "renamed", "notes"):
            setattr(self, name, Bounded(self.memory))

    def key(self, path: str) -> str:
        return self.keys.get(path, path)


class Detector:
    """Scores process families from their file activity; decides which one is ransomware."""

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()
        self._families: dict[int, _Family] = {}
        self._profiles: Bounded[str, ContentProfile] = Bounded(self.settings.memory)
        self._extensions: Bounded[str, dict[str, int]] = Bounded(self.settings.memory)
        self._handlers: dict[Activity, _Handler] = {
            Activity.OPEN: self._on_open,
            Activity.CREATE: self._on_create,
            Activity.WRITE: self._on_write,
            Activity.DELETE: self._on_delete,
            Activity.RENAME: self._on_rename,
        }

    def trusts(self, name: str) -> bool:
        """True if a process of that name is trusted by the policy (the caller skips it)."""
        return self.settings.trusts(name)

    def observe(
        self,
        family: int,
        event: FileEvent,
        before: ContentProfile | None,
        after: ContentProfile | None,
    ) -> list[Evidence]:
        """Take in one file event of ``family``; return the new evidence it gives.

        ``before`` is the content as it was before the change (from a backup or a first-open
        snapshot; None if unknown or a new file), ``after`` the content now (None if deleted
        or not profiled). An OPEN with a profile records the content as it stands.
        """
        state = self._family(family)
        found = self._handlers[event.activity](state, event, before, after)
        return [e for e in found if self._count(state, e, event.time)]

    def decoy_touched(
        self, family: int, path: str, pid: int, time: float | None = None
    ) -> list[Evidence]:
        """A decoy planted by the module was modified, renamed or deleted by ``family``.

        ``time`` is on the ``time.monotonic()`` clock of the events (default: now).
        """
        now = clock.monotonic() if time is None else time
        evidence = Evidence(Signal.DECOY, path, pid, self.settings.weight(Signal.DECOY), "decoy")
        state = self._family(family)
        return [evidence] if self._count(state, evidence, now) else []

    def score(self, family: int, now: float) -> float:
        """The family's decayed score at ``now`` (0 for an unknown family)."""
        state = self._families.get(family)
        return state.tally.score(now) if state else 0.0

    def verdict(self, family: int, now: float) -> Verdict | None:
        """The ransomware verdict once the score has passed the threshold; it then stays."""
        state = self._families.get(family)
        if state is None:
            return None
        if state.verdict is None:
            score = state.tally.score(now)
            if score >= self.settings.threshold:
                summary = self._summary(family, state, now)
                state.verdict = Verdict(family, score, self.settings.threshold, now, summary)
        return state.verdict

    def forget(self, family: int) -> None:
        """Drop everything known about ``family`` (it exited, or was handled)."""
        self._families.pop(family, None)

    def summary(self, family: int) -> dict[str, object]:
        """Counts per signal, sample paths, pids and score, for the Detection Finding.

        The score is taken at the time of the family's latest evidence.
        """
        state = self._families.get(family)
        if state is None:
            return {"family": family, "score": 0.0, "signals": {}, "files": 0, "paths": []}
        return self._summary(family, state, state.tally.last_time)

    def _summary(self, family: int, state: _Family, now: float) -> dict[str, object]:
        tally = state.tally
        return {
            "family": family,
            "score": round(tally.score(now), 2),
            "threshold": self.settings.threshold,
            "signals": {str(signal): n for signal, n in sorted(tally.counts.items())},
            "files": tally.files,
            "paths": list(tally.paths),
            "pids": sorted(tally.pids),
        }

    def _family(self, family: int) -> _Family:
        state = self._families.get(family)
        if state is None:
            if len(self._families) >= _MAX_FAMILIES:
                self._drop_idlest()
            settings = self.settings
            tally = Tally(settings.per_file_cap, settings.half_life, settings.memory)
            state = self._families[family] = _Family(family, tally, settings.memory)
        return state

    def _drop_idlest(self) -> None:
        candidates = [(s.tally.last_time, f) for f, s in self._families.items() if not s.verdict]
        if candidates:
            del self._families[min(candidates)[1]]

    def _count(self, state: _Family, evidence: Evidence, time: float) -> bool:
        key = state.key(evidence.path) if evidence.signal in _FILE_SIGNALS else None
        return state.tally.add(evidence, time, key)

    def _evidence(self, signal: Signal, event: FileEvent, detail: str, path: str = "") -> Evidence:
        weight = self.settings.weight(signal)
        return Evidence(signal, path or event.path, event.pid, weight, detail)

    # -- one handler per activity -------------------------------------------------------------

    def _on_open(
        self,
        state: _Family,
        event: FileEvent,
        before: ContentProfile | None,
        after: ContentProfile | None,
    ) -> list[Evidence]:
        current = after or before
        if current is not None:
            self._profiles[event.path] = current
        self._see_extension(event.path, None)
        return []

    def _on_create(
        self,
        state: _Family,
        event: FileEvent,
        before: ContentProfile | None,
        after: ContentProfile | None,
    ) -> list[Evidence]:
        state.created[event.path] = event.time
        self._see_extension(event.path, state.family)
        return []

    def _on_write(
        self,
        state: _Family,
        event: FileEvent,
        before: ContentProfile | None,
        after: ContentProfile | None,
    ) -> list[Evidence]:
        if after is None:
            return []
        known = before or self._profiles.get(event.path)
        self._profiles[event.path] = after
        created = state.created.get(event.path)
        is_new = known is None or (
            created is not None and event.time - created <= self.settings.pair_window
        )
        if not is_new and known is not None:
            found = self._overwrite(event, known, after)
        elif changes.encrypted_looking(after):
            state.written[event.path] = _Written(event.time, after.size, event.pid)
            found = self._pair(state, event, new=event.path)
        else:
            found = self._note(state, event, after)
        return found + self._pending_rename(state, event, after, bool(found))

    def _overwrite(
        self, event: FileEvent, before: ContentProfile, after: ContentProfile, path: str = ""
    ) -> list[Evidence]:
        signals = changes.assess(
            before, after, self.settings.entropy_rise, self.settings.page_kinds
        )
        if not signals:
            return []
        signals.append((Signal.IN_PLACE_OVERWRITE, "an existing file's content destroyed"))
        return [self._evidence(signal, event, detail, path) for signal, detail in signals]

    def _on_delete(
        self,
        state: _Family,
        event: FileEvent,
        before: ContentProfile | None,
        after: ContentProfile | None,
    ) -> list[Evidence]:
        known = before or self._profiles.get(event.path)
        self._profiles.pop(event.path, None)
        state.written.pop(event.path, None)
        if known is not None and changes.encrypted_looking(known):
            return []  # deleting ciphertext or an archive destroys nothing readable
        state.deleted[event.path] = _Deleted(event.time, known.size if known else None)
        return self._pair(state, event, old=event.path)

    def _on_rename(
        self,
        state: _Family,
        event: FileEvent,
        before: ContentProfile | None,
        after: ContentProfile | None,
    ) -> list[Evidence]:
        old, new = event.old_path or event.path, event.path
        moved = self._profiles.pop(old, None)
        current = after or moved
        replaced = self._profiles.get(new)  # a file the rename overwrote
        state.keys[new] = state.keys.pop(old, old)
        if old in state.created:
            state.created[new] = state.created.pop(old)
        if old in state.written:
            state.written[new] = state.written.pop(old)
        found: list[Evidence] = []
        if current is not None:
            self._profiles[new] = current
            if replaced is not None and new != old:
                found = self._overwrite(event, replaced, current)
        return found + self._rename_extension(state, event, current)

    # -- correlations ---------------------------------------------------------------------------

    def _pair(
        self, state: _Family, event: FileEvent, new: str = "", old: str = ""
    ) -> list[Evidence]:
        """Pair a new ciphertext file with the deletion of the file it replaced, either order."""
        horizon = event.time - self.settings.pair_window
        _expire(state.written, horizon)
        _expire(state.deleted, horizon)
        written, deleted = state.written.get(new), state.deleted.get(old)
        if written is not None:
            old = next(
                (p for p, d in state.deleted.items() if _replaces(new, written.size, p, d.size)), ""
            )
        elif deleted is not None:
            new = next(
                (p for p, w in state.written.items() if _replaces(p, w.size, old, deleted.size)), ""
            )
        if not (new and old and new in state.written and old in state.deleted):
            return []
        del state.written[new], state.deleted[old]
        return [self._evidence(Signal.WRITE_NEW_DELETE, event, f"replaces deleted {old}", new)]

    def _note(self, state: _Family, event: FileEvent, after: ContentProfile) -> list[Evidence]:
        """The same small text file (by name or by content) dropped in many directories."""
        smallest, largest = self.settings.note_sizes
        if after.kind not in _NOTE_KINDS or not smallest <= after.size <= largest:
            return []
        directory, name = os.path.split(event.path)
        shape = ("content", after.size, round(after.entropy, 4))
        for key in (("name", name.lower()), shape):
            places = state.notes.get(key) or set()
            places.add(directory)
            state.notes[key] = places
            if len(places) >= self.settings.note_directories and not state.noted:
                state.noted = True
                detail = f"{key[0]} seen in {len(places)} directories"
                return [self._evidence(Signal.RANSOM_NOTE, event, detail)]
        return []

    def _rename_extension(
        self, state: _Family, event: FileEvent, current: ContentProfile | None
    ) -> list[Evidence]:
        extension = _extension(event.path)
        if extension == _extension(event.old_path or "") or not self._unusual(
            event.path, state.family
        ):
            return []
        if current is not None and changes.encrypted_looking(current):
            return [self._evidence(Signal.RENAME_EXTENSION, event, f"renamed to .{extension}")]
        state.renamed[event.path] = extension
        return []

    def _pending_rename(
        self, state: _Family, event: FileEvent, after: ContentProfile, damaged: bool
    ) -> list[Evidence]:
        extension = state.renamed.pop(event.path, None)
        if extension is None or not (damaged or changes.encrypted_looking(after)):
            return []
        return [self._evidence(Signal.RENAME_EXTENSION, event, f"renamed to .{extension}")]

    def _unusual(self, path: str, family: int) -> bool:
        """A new extension: of no known type, and not already in the directory before."""
        extension = _extension(path)
        if not extension or extension.isdigit() or extension in self.settings.known_extensions:
            return False
        introduced_by = self._see_extension(path, family)
        return introduced_by == family

    def _see_extension(self, path: str, family: int | None) -> int | None:
        """Record that ``path``'s extension occurs in its directory; who introduced it."""
        directory = os.path.dirname(path)
        seen = self._extensions.get(directory)
        if seen is None:
            seen = self._extensions[directory] = {}
        return seen.setdefault(_extension(path), -1 if family is None else family)


_Handler = Callable[
    [_Family, FileEvent, ContentProfile | None, ContentProfile | None], list[Evidence]
]


def _expire(table: Bounded[str, _T], horizon: float) -> None:
    """Drop the entries older than ``horizon`` (the tables are in time order)."""
    while table and next(iter(table.values())).time < horizon:
        table.popitem(last=False)


def _extension(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[1][1:].lower()


def _replaces(new: str, new_size: int, old: str, old_size: int | None) -> bool:
    """``new`` looks like the encrypted replacement of ``old``: same directory, derived name
    (``a.docx`` -> ``a.docx.locked`` or ``a.locked``), or else a size just above the original's.
    """
    new_dir, new_name = os.path.split(new)
    old_dir, old_name = os.path.split(old)
    if new_dir != old_dir:
        return False
    stem = os.path.splitext(old_name)[0]
    if old_name in new_name or (len(stem) >= 3 and new_name.startswith(stem)):
        return True
    return old_size is not None and 0 <= new_size - old_size <= 64 * 1024 + old_size // 16
