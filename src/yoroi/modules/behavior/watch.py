"""From file events to verdicts: attribute each event to a process family, profile the
content, score the evidence. Runs in one worker thread fed by the file monitor.

Every event counts at each level of the acting process's chain below its boundary (the process,
its parent, ... up to the interactive shell or service manager), so that a fork-per-file run
and a script calling ``openssl`` per file both add up in one place. When a level passes the
threshold, the family acted on is chosen by :meth:`ProcessTree.choose_family`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from yoroi.modules.behavior import content
from yoroi.modules.behavior.backup import BackupRecord
from yoroi.modules.behavior.decoys import Decoys
from yoroi.modules.behavior.detector import Detector, Verdict
from yoroi.modules.behavior.ledger import Ledger
from yoroi.modules.behavior.process_tree import ProcessTree
from yoroi.modules.behavior.types import Activity, ContentProfile, FileEvent

log = logging.getLogger(__name__)
VerdictHandler = Callable[[int, Verdict], None]
_STOP = object()
_PROFILED_LIMIT = 4096


class Watch:
    """The scoring pipeline; ``submit`` is safe from any thread."""

    def __init__(
        self,
        tree: ProcessTree,
        detector: Detector,
        decoys: Decoys,
        trusted: tuple[str, ...],
        on_verdict: VerdictHandler,
    ) -> None:
        self.tree, self.detector, self.decoys = tree, detector, decoys
        self.trusted, self.on_verdict = trusted, on_verdict
        self.ledger = Ledger()
        self.chains: dict[int, tuple[int, ...]] = {}
        self.counters = {"events": 0, "trusted": 0, "verdicts": 0}
        self._before: dict[str, ContentProfile] = {}
        self._profiled: OrderedDict[str, ContentProfile] = OrderedDict()  # by copy id
        self._judged: set[int] = set()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="yoroi-behavior", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def submit(self, event: FileEvent) -> None:
        """From the monitor's reader thread: queue, never block."""
        self._queue.put(event)

    def remember_original(self, record: BackupRecord, blob: Path) -> None:
        """From a backup worker: the content as it was, for the coming write's comparison.

        Profiled here, off the scoring thread (which must keep up with the writer), and once
        per copy: a copy claimed again reuses its profile.
        """
        with self._lock:
            profile = self._profiled.get(record.id)
        if profile is None:
            profile = _profile(blob)
            if profile is None:
                return
        with self._lock:
            self._before[record.path] = profile
            self._profiled[record.id] = profile
            if len(self._profiled) > _PROFILED_LIMIT:
                self._profiled.popitem(last=False)

    def family_pids(self, root: int) -> set[int]:
        """Every process seen acting on behalf of ``root``, living or gone."""
        with self._lock:
            seen = {pid for pid, chain in self.chains.items() if root in chain}
        return seen | {root} | set(self.tree_descendants(root))

    def tree_descendants(self, root: int) -> list[int]:
        found: list[int] = []
        pending = [root]
        while pending:
            children = self.tree.children(pending.pop())
            found.extend(children)
            pending.extend(children)
        return found

    def settle(self, root: int, pids: set[int]) -> None:
        """A family was answered for: drop its evidence here and in every level above it."""
        with self._lock:
            levels = {level for pid in pids for level in self.chains.get(pid, ())}
            for pid in pids:
                self.chains.pop(pid, None)
        for level in levels | {root}:
            self.detector.forget(level)
        self.ledger.forget(pids)

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            assert isinstance(item, FileEvent)
            try:
                self._handle(item)
            except Exception:
                log.exception("behavior: could not judge %s", item)

    def _handle(self, event: FileEvent) -> None:
        self.counters["events"] += 1
        if self.tree.trusted(event.pid, self.trusted):
            self.counters["trusted"] += 1
            return
        chain = tuple(self.tree.chain_below_boundary(event.pid))
        with self._lock:
            self.chains.setdefault(event.pid, chain)
        self.ledger.record(event)
        if self._touches_decoy(event):
            for level in chain:
                self.detector.decoy_touched(level, event.path, event.pid, event.time)
        else:
            before, after = self._profiles(event)
            for level in chain:
                self.detector.observe(level, event, before, after)
        self._judge(event, chain)

    def _touches_decoy(self, event: FileEvent) -> bool:
        return event.activity is not Activity.OPEN and (
            self.decoys.is_decoy(event.path) or self.decoys.is_decoy(event.old_path))

    def _profiles(self, event: FileEvent) -> tuple[ContentProfile | None, ContentProfile | None]:
        with self._lock:
            if event.activity is Activity.RENAME:  # the original follows the file to its
                before = None  # new name and waits there for the write that changes it
                if event.old_path in self._before:
                    self._before.setdefault(event.path, self._before.pop(event.old_path))
            else:
                before = self._before.pop(event.path, None)
        if event.activity is Activity.DELETE:
            return before, None
        try:
            return before, content.profile_of(event.path)
        except OSError:
            return before, None

    def _judge(self, event: FileEvent, chain: tuple[int, ...]) -> None:
        now = time.monotonic()
        if not any(self.detector.verdict(level, now) for level in chain):
            return
        root = self.tree.choose_family(
            event.pid, lambda p: self.detector.verdict(p, now) is not None)
        verdict = self.detector.verdict(root, now)
        if verdict is None or root in self._judged:
            return
        self._judged.add(root)
        self.counters["verdicts"] += 1
        self.on_verdict(root, verdict)


def _profile(path: Path) -> ContentProfile | None:
    try:
        return content.profile_of(str(path))
    except OSError:  # the copy was released meanwhile
        return None
