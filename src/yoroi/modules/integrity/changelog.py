"""The change log: an append-only, hash-chained record of every integrity change.

``<state>/integrity/changes.log`` is JSON lines. The first line is a header holding a random
``genesis`` value; every further line is one record::

    {"format": "yoroi-integrity-changes", "version": 1, "genesis": "<64 hex>", "created": ...}
    {"seq": 1, "time": 1760000000.123, "prev": "<genesis>", "change": {...}, "hash": "<64 hex>"}
    {"seq": 2, "time": ..., "prev": "<hash of record 1>", "change": {...}, "hash": "..."}

``hash`` is the sha256 of the record's canonical JSON (sorted keys, no spaces) without the
``hash`` field, so it covers ``seq``, ``time``, ``prev`` and the change; ``prev`` is the hash
of the record before (the genesis for the first). :meth:`ChangeLog.verify` walks the chain and
names the first broken link: an edited record fails its own hash, a deleted one breaks the
``seq`` run and the next record's ``prev``, a replaced header breaks the first record.

Limits: whoever can write the file can rewrite the whole chain from the edit onwards, and a
cut of the newest records leaves a valid shorter chain. Both are caught only by comparing with
a head kept elsewhere: send :meth:`ChangeLog.head` to the manager (or print it) and pass it to
``verify(expected_head=...)`` later. Appends take an exclusive ``flock`` so that the agent and
a CLI run can write one log.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yoroi.errors import PlatformError

__all__ = ["ChangeLog", "Head", "LogRecord", "Verification", "log_path"]

FORMAT = "yoroi-integrity-changes"
VERSION = 1
_TAIL_CHUNK = 64 * 1024


def log_path(state_dir: Path) -> Path:
    """Where the change log lives under a state directory."""
    return state_dir / "integrity" / "changes.log"


@dataclass(frozen=True, slots=True)
class Head:
    """The newest link of a chain: how many records, and the last hash (genesis when none)."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One verified record of the log."""

    seq: int
    time: float
    change: Mapping[str, Any]
    hash: str


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of :meth:`ChangeLog.verify`: ``ok``, or the first broken link and why."""

    ok: bool
    records: int  # records verified before the first broken link (all of them when ok)
    head: Head | None
    broken_line: int | None = None  # 1-based line number in the file
    reason: str | None = None


def _canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    """sha256 of the record's canonical JSON without its ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


class ChangeLog:
    """Append records to, read and verify one hash-chained change log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: tuple[int, Head] | None = None  # file size after our last append -> head

    @classmethod
    def at_state(cls, state_dir: Path) -> ChangeLog:
        """The log under ``state_dir`` (``<state>/integrity/changes.log``)."""
        return cls(log_path(state_dir))

    def append(self, change: Mapping[str, Any], *, when: float | None = None) -> LogRecord:
        """Chain ``change`` (any JSON-serialisable mapping) onto the log; the record written."""
        with self._locked() as fd:
            head = self._head_locked(fd)
            record: dict[str, Any] = {
                "seq": head.seq + 1,
                "time": time.time() if when is None else when,
                "prev": head.hash,
                "change": dict(change),
            }
            record["hash"] = record_hash(record)
            size = _write_line(fd, _canonical(record))
            self._known = (size, Head(record["seq"], record["hash"]))
        return LogRecord(record["seq"], record["time"], record["change"], record["hash"])

    def head(self) -> Head:
        """The newest link (to keep elsewhere and compare in :meth:`verify`)."""
        with self._locked() as fd:
            return self._head_locked(fd)

    def records(self) -> Iterator[LogRecord]:
        """Every record in order, as written (use :meth:`verify` to trust them)."""
        for _, record in self._lines()[1:]:
            yield LogRecord(record["seq"], record["time"], record["change"], record["hash"])

    def verify(self, expected_head: Head | None = None) -> Verification:
        """Walk the chain from the genesis; report the first broken link, if any."""
        try:
            lines = self._lines()
        except ValueError as exc:
            return Verification(False, 0, None, _line_of(exc), str(exc))
        if not lines:
            return Verification(False, 0, None, 1, "the header line is missing")
        header = lines[0][1]
        if header.get("format") != FORMAT or not isinstance(header.get("genesis"), str):
            return Verification(False, 0, None, 1, "the header is not a change-log header")
        head = Head(0, header["genesis"])
        for number, record in lines[1:]:
            problem = _link_problem(record, head)
            if problem:
                return Verification(False, head.seq, head, number, problem)
            head = Head(record["seq"], record["hash"])
        if expected_head is not None and expected_head != head:
            reason = f"the chain ends at record {head.seq}, not at the kept head {expected_head}"
            return Verification(False, head.seq, head, len(lines), reason)
        return Verification(True, head.seq, head)

    def _head_locked(self, fd: int) -> Head:
        size = os.fstat(fd).st_size
        if self._known is not None and self._known[0] == size:
            return self._known[1]
        if size == 0:
            genesis = secrets.token_hex(32)
            header = {"format": FORMAT, "version": VERSION, "genesis": genesis,
                      "created": time.time()}  # fmt: skip
            size = _write_line(fd, _canonical(header))
            head = Head(0, genesis)
        else:
            head = _last_head(fd, size)
        self._known = (size, head)
        return head

    def _lines(self) -> list[tuple[int, dict[str, Any]]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        out: list[tuple[int, dict[str, Any]]] = []
        for number, line in enumerate(raw.splitlines(), start=1):
            out.append((number, _parse(line, number)))
        return out

    def _locked(self) -> _Locked:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return _Locked(self.path)


class _Locked:
    """The log opened for append under an exclusive flock."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1

    def __enter__(self) -> int:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            self._fd = os.open(self._path, flags, 0o600)
        except OSError as exc:
            raise PlatformError(f"cannot open the change log {self._path}: {exc}") from exc
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self._fd

    def __exit__(self, *exc_info: object) -> None:
        os.close(self._fd)  # closing drops the lock


def _write_line(fd: int, line: bytes) -> int:
    os.write(fd, line + b"\n")
    return os.fstat(fd).st_size


def _last_head(fd: int, size: int) -> Head:
    start = max(0, size - _TAIL_CHUNK)
    tail = os.pread(fd, size - start, start)
    while start > 0 and tail.count(b"\n") < 2:
        start = max(0, start - _TAIL_CHUNK)
        tail = os.pread(fd, size - start, start)
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        record = json.loads(last)
    except ValueError as exc:
        raise PlatformError(
            f"the last line of the change log is damaged ({exc}); run verify and move the file"
            " aside to start a new chain"
        ) from exc
    if "genesis" in record:
        return Head(0, str(record["genesis"]))
    return Head(int(record["seq"]), str(record["hash"]))


class _BadLine(ValueError):
    def __init__(self, number: int, message: str) -> None:
        super().__init__(message)
        self.number = number


def _line_of(exc: ValueError) -> int | None:
    return exc.number if isinstance(exc, _BadLine) else None


def _parse(line: bytes, number: int) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise _BadLine(number, f"line {number} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise _BadLine(number, f"line {number} is not a JSON object")
    return value


def _link_problem(record: Mapping[str, Any], head: Head) -> str | None:
    if record.get("seq") != head.seq + 1:
        return f"record {record.get('seq')!r} follows record {head.seq}: records were removed"
    if record.get("prev") != head.hash:
        return f"record {head.seq + 1} does not chain from the record before it"
    if record.get("hash") != record_hash(record):
        return f"record {head.seq + 1} was edited: its hash does not match its content"
    return None
