"""A bounded on-disk FIFO of encoded events: what a sink could not take yet.

The spool is a directory of segment files (``<seq>.jsonl``, one JSON event a line). New lines
are appended to the newest segment; lines are read from the oldest and *committed* only once
the sink has taken them, so a crash re-sends rather than loses. ``position`` remembers how far
the oldest segment has been committed across restarts.
"""

from __future__ import annotations

import os
from pathlib import Path

FIRST_SEQ = 10**12  # room below for segments put in front (see prepend)
POSITION = "position"


class Spool:
    """A bounded FIFO of lines on disk; ``max_bytes`` bounds the files' total size."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = max(64 * 1024, max_bytes // 8)
        self.count = 0  # lines not yet committed
        self.size = 0  # bytes on disk
        self._segments: list[int] = []
        self._offset = 0  # committed offset in the oldest segment
        self._fd: int | None = None  # append fd of the newest segment
        self._tail_size = 0

    def open(self) -> None:
        """Create the directory (0o750) or pick up what a previous run left."""
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        self._segments = sorted(int(p.stem) for p in self.directory.glob("*.jsonl"))
        self._offset = self._read_position()
        self.count = self.size = 0
        for seq in self._segments:
            self._repair(seq)
            data = self._path(seq).read_bytes()
            skip = self._offset if seq == self._segments[0] else 0
            self.count += data.count(b"\n", skip)
            self.size += len(data)
        if not self._segments:
            self._segments = [FIRST_SEQ]
        self._open_tail()

    def _read_position(self) -> int:
        try:
            seq, offset = (self.directory / POSITION).read_text().split()
        except (OSError, ValueError):
            return 0
        return int(offset) if self._segments and int(seq) == self._segments[0] else 0

    def _repair(self, seq: int) -> None:
        # A crash in the middle of an append can leave a partial last line: cut it off.
        path = self._path(seq)
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            os.truncate(path, data.rfind(b"\n") + 1)

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:020d}.jsonl"

    def _open_tail(self) -> None:
        path = self._path(self._segments[-1])
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(path, flags, 0o640)
        self._tail_size = os.fstat(self._fd).st_size

    def append(self, line: bytes) -> bool:
        """Add one line (ending in a newline); False when the spool is full."""
        if self._fd is None or self.size + len(line) > self.max_bytes:
            return False
        if self._tail_size >= self.segment_bytes:
            self._roll()
        os.write(self._fd, line)
        self._tail_size += len(line)
        self.size += len(line)
        self.count += 1
        return True

    def _roll(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        self._segments.append(self._segments[-1] + 1)
        self._open_tail()

    def prepend(self, lines: list[bytes]) -> int:
        """Put ``lines`` in front of everything spooled; returns how many fitted."""
        fitted: list[bytes] = []
        room = self.max_bytes - self.size
        for line in lines:
            if len(line) > room:
                break
            fitted.append(line)
            room -= len(line)
        if fitted:
            self._write_front(b"".join(fitted))
            self.count += len(fitted)
        return len(fitted)

    def _write_front(self, data: bytes) -> None:
        # A partly committed oldest segment is cut down first so that the new front
        # segment does not end up before already-sent lines.
        self._compact_head()
        seq = self._segments[0] - 1
        self._path(seq).write_bytes(data)
        os.chmod(self._path(seq), 0o640)
        self._segments.insert(0, seq)
        self.size += len(data)

    def _compact_head(self) -> None:
        if self._offset == 0:
            return
        head = self._segments[0]
        data = self._path(head).read_bytes()[self._offset :]
        if len(self._segments) == 1:
            self._reset_tail()
            self._append_raw(data)
            return
        self._path(head).write_bytes(data)
        self.size -= self._offset
        self._offset = 0

    def _append_raw(self, data: bytes) -> None:
        assert self._fd is not None
        os.write(self._fd, data)
        self._tail_size += len(data)
        self.size += len(data)

    def peek(self, limit: int) -> tuple[list[bytes], int]:
        """Up to ``limit`` uncommitted lines from the oldest segment and their byte length."""
        if self.count == 0:
            return [], 0
        while True:
            with open(self._path(self._segments[0]), "rb") as handle:
                handle.seek(self._offset)
                lines = [line for _, line in zip(range(limit), handle, strict=False)]
            if lines or len(self._segments) == 1:
                return lines, sum(len(line) for line in lines)
            self._drop_head()

    def commit(self, lines: int, nbytes: int) -> None:
        """The sink took the ``lines`` (``nbytes``) that :meth:`peek` returned: forget them."""
        self._offset += nbytes
        self.count -= lines
        head = self._path(self._segments[0])
        if self._offset < head.stat().st_size:
            return
        if len(self._segments) > 1:
            self._drop_head()
        else:
            self._reset_tail()

    def _drop_head(self) -> None:
        head = self._path(self._segments.pop(0))
        self.size -= head.stat().st_size
        head.unlink()
        self._offset = 0

    def _reset_tail(self) -> None:
        assert self._fd is not None
        self.size -= self._tail_size
        os.ftruncate(self._fd, 0)
        self._tail_size = 0
        self._offset = 0

    def close(self) -> None:
        """Remember the committed position and close the files."""
        if self._fd is None:
            return
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        position = self.directory / POSITION
        tmp = position.with_suffix(".tmp")
        tmp.write_text(f"{self._segments[0]} {self._offset}\n")
        os.replace(tmp, position)
        if self.count == 0:
            for seq in self._segments:
                self._path(seq).unlink(missing_ok=True)
            position.unlink()
