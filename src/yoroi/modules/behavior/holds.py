"""Files that untrusted processes only read: held open instead of copied.

Reading changes nothing, so a read needs no copy -- unless the reader then deletes the file,
and ``unlink`` raises no permission event to copy it on. So for a read the pre-write guard
*holds* a duplicate of the event's descriptor (cheap: no data moves). A held file stays
readable after it is unlinked, and the copy is taken only when it is needed: when the holds
of a process family are asked for before a restore, or when a hold is evicted from the bounded
table while its file is already unlinked (``st_nlink == 0``).

The table is bounded (``limit`` descriptors, oldest evicted first), so a process that reads
and deletes more files than that before anyone asks loses the copies of the earliest ones; a
ransomware run is stopped long before. A hold keeps an unlinked file's blocks allocated on its
file system until it is copied or dropped.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

HoldKey = tuple[int, int, int]  # dev, ino, pid


@dataclass(frozen=True)
class Held:
    """A descriptor of ``path`` read by ``pid``, as the file was (``info``) at ``since``."""

    path: str
    fd: int
    pid: int
    info: os.stat_result
    since: float  # time.time() of the first read


class Holds:
    """A bounded, thread-safe table of held descriptors, one per (file, process)."""

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self._held: OrderedDict[HoldKey, Held] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: HoldKey) -> bool:
        return key in self._held

    def __len__(self) -> int:
        return len(self._held)

    def add(self, path: str, fd: int, pid: int, info: os.stat_result) -> list[Held]:
        """Hold a duplicate of ``fd``; return evicted holds whose file is unlinked.

        The caller owns the returned holds (copy them, then close their descriptors).
        """
        key = (info.st_dev, info.st_ino, pid)
        if key in self._held:
            return []
        held = Held(path, os.dup(fd), pid, info, time.time())
        with self._lock:
            if key in self._held:  # another thread held it meanwhile
                os.close(held.fd)
                return []
            self._held[key] = held
            evicted = [self._held.popitem(last=False)[1]
                       for _ in range(len(self._held) - self.limit)]
        return [h for h in evicted if _keep_unlinked(h)]

    def take(self, pids: Iterable[int]) -> list[Held]:
        """Remove and return the holds of ``pids`` (the caller closes their descriptors)."""
        wanted = set(pids)
        with self._lock:
            keys = [k for k in self._held if k[2] in wanted]
            return [self._held.pop(k) for k in keys]

    def drop(self, pids: Iterable[int]) -> int:
        """Close the holds of ``pids``; returns how many."""
        taken = self.take(pids)
        for held in taken:
            os.close(held.fd)
        return len(taken)

    def close(self) -> None:
        """Close every held descriptor."""
        with self._lock:
            held, self._held = list(self._held.values()), OrderedDict()
        for entry in held:
            os.close(entry.fd)


def _keep_unlinked(held: Held) -> bool:
    """True (the caller copies it) when ``held``'s file is unlinked; else close it."""
    try:
        unlinked = os.fstat(held.fd).st_nlink == 0
    except OSError:
        unlinked = False
    if not unlinked:
        os.close(held.fd)
    return unlinked
