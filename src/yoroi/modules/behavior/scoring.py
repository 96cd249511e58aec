"""The evidence kept against one process family, and how it adds up to a score.

Each damaged file counts once: the weights of the different signals seen on one file add up to
at most ``per_file_cap``, and a signal seen twice on the same file counts once, so a process
that rewrites one file a hundred times is still one file. Evidence not bound to one file (ransom
notes, decoys) is not capped. Every contribution decays with a half-life, slowly enough that a
low-and-slow run (one file a minute) still accumulates, fast enough that one odd file a day does
not.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from yoroi.modules.behavior.types import Evidence, Signal

K = TypeVar("K")
V = TypeVar("V")

_SAMPLE_PATHS = 10
_NEGLIGIBLE = 1e-3


class Bounded(OrderedDict[K, V], Generic[K, V]):
    """A dict that forgets its least recently set entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass
class _Entry:
    weight: float
    time: float
    signals: set[Signal] = field(default_factory=set)


class Tally:
    """Evidence against one family: capped per file, decayed with time."""

    def __init__(self, per_file_cap: float, half_life: float, limit: int) -> None:
        self._cap = per_file_cap
        self._half_life = half_life
        self._files: Bounded[str, _Entry] = Bounded(limit)
        self._loose: list[tuple[float, float]] = []  # (weight, time) of evidence on no one file
        self.counts: Counter[Signal] = Counter()
        self.paths: list[str] = []
        self.pids: set[int] = set()
        self.last_time = 0.0

    def add(self, evidence: Evidence, time: float, file_key: str | None) -> bool:
        """Count ``evidence``; False if that signal was already counted on that file."""
        if file_key is None:
            self._loose.append((evidence.weight, time))
        else:
            entry = self._files.get(file_key)
            if entry is None:
                entry = self._files[file_key] = _Entry(0.0, time)
            if evidence.signal in entry.signals:
                return False
            entry.signals.add(evidence.signal)
            entry.weight = min(self._cap, entry.weight + evidence.weight)
            entry.time = max(entry.time, time)
        self._remember(evidence, time)
        return True

    def _remember(self, evidence: Evidence, time: float) -> None:
        self.counts[evidence.signal] += 1
        self.pids.add(evidence.pid)
        self.last_time = max(self.last_time, time)
        if evidence.path not in self.paths and len(self.paths) < _SAMPLE_PATHS:
            self.paths.append(evidence.path)

    def score(self, now: float) -> float:
        """The decayed sum of the evidence at time ``now``."""
        files = sum(self._decayed(e.weight, e.time, now) for e in self._files.values())
        loose = sum(self._decayed(weight, time, now) for weight, time in self._loose)
        return files + loose

    @property
    def files(self) -> int:
        """How many distinct files carry evidence."""
        return len(self._files)

    def _decayed(self, weight: float, time: float, now: float) -> float:
        return float(weight * 0.5 ** (max(0.0, now - time) / self._half_life))

    def prune(self, now: float) -> None:
        """Drop evidence that has decayed to nothing."""
        self._loose = [(w, t) for w, t in self._loose if self._decayed(w, t, now) > _NEGLIGIBLE]
        for key in [
            k for k, e in self._files.items() if self._decayed(e.weight, e.time, now) <= _NEGLIGIBLE
        ]:
            del self._files[key]
