"""The fanotify adapter against the real kernel, on file systems the tests mount themselves.

Every permission-event test answers from a listener thread while a child process opens files,
runs the child with a timeout, and closes the group on every path (the fixture's ``finally``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from yoroi.errors import Unsupported
from yoroi.platform.linux import _fanotify_abi as abi
from yoroi.platform.linux.fanotify import (
    FanClass,
    FanInit,
    FanMask,
    Fanotify,
    FanotifyEvent,
    FanotifyLike,
    PermissionGuard,
    mask_names,
)

ROOT = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs root (CAP_SYS_ADMIN)"),
]


def needs_root(test: Callable[..., object]) -> Callable[..., object]:
    for mark in ROOT:
        test = mark(test)
    return test


CHILD_TIMEOUT = 20.0


def start_child(code: str) -> subprocess.Popen[str]:
    """A Python child running ``code``; it prints one JSON line as its result."""
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish_child(child: subprocess.Popen[str], timeout: float = CHILD_TIMEOUT) -> object:
    """The child's JSON result; kills it (by pid) and fails if it hangs past ``timeout``."""
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        pytest.fail(f"child {child.pid} hung for {timeout}s: a permission event went unanswered")
    assert child.returncode == 0, err
    return json.loads(out)


OPENER = """
import json, sys
results = {}
for path in sys.argv[1:] or PATHS:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        results[path] = 0
    except OSError as exc:
        results[path] = exc.errno
print(json.dumps(results))
"""


def opener(paths: list[Path]) -> str:
    return f"PATHS = {[str(p) for p in paths]!r}\n" + OPENER


class Listener:
    """Reads events in a thread and hands each permission event to ``decide`` (if given)."""

    def __init__(self, fan: FanotifyLike, decide: Callable[[FanotifyEvent], bool] | None) -> None:
        self.fan = fan
        self.decide = decide
        self.events: list[FanotifyEvent] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for event in self.fan.read(timeout=0.05):
                self.events.append(event)
                if event.is_permission and self.decide is not None:
                    self.fan.respond_with(event, self.decide)


@contextmanager
def watchdog(fan: Fanotify, seconds: float = 30.0) -> Iterator[Fanotify]:
    """Close ``fan`` after ``seconds`` if the block has not ended: closing the group releases
    every waiting opener, this process included, so a bug can never hang the suite."""
    timer = threading.Timer(seconds, fan.close)
    timer.daemon = True
    timer.start()
    try:
        yield fan
    finally:
        timer.cancel()


def make_files(directory: Path, count: int) -> list[Path]:
    paths = [directory / f"f{i:05d}" for i in range(count)]
    for path in paths:
        path.write_bytes(b"yoroi")
    return paths


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def files(tmpfs_mount: Path) -> list[Path]:
    """200 files on the test tmpfs, made before any permission mark (our own opens would wait)."""
    return make_files(tmpfs_mount, 200)


@pytest.fixture
def content_group(tmpfs_mount: Path, files: list[Path]) -> Iterator[Fanotify]:
    """A permission (CONTENT) group with FAN_OPEN_PERM on the test tmpfs only."""
    with Fanotify(FanClass.CONTENT, deadman_timeout=5.0) as fan, watchdog(fan):
        fan.mark(tmpfs_mount, FanMask.OPEN_PERM, kind="filesystem")
        yield fan


@needs_root
def test_takes_10000_events_on_a_tmpfs_without_loss(tmpfs_mount: Path) -> None:
    flags = FanInit.REPORT_DFID_NAME | FanInit.UNLIMITED_QUEUE
    masks: dict[str, int] = defaultdict(int)
    with Fanotify(FanClass.NOTIF, flags) as fan:
        fan.mark(tmpfs_mount, FanMask.CREATE | FanMask.CLOSE_WRITE, kind="filesystem")
        child = start_child(
            f"import sys\nfor i in range(10000):\n"
            f"    open({str(tmpfs_mount)!r} + f'/n{{i:05d}}', 'w').close()\nprint(1)"
        )
        deadline = time.monotonic() + 60
        while len(masks) < 10000 or any(m != 0x108 for m in masks.values()):
            assert time.monotonic() < deadline, f"only {len(masks)} names seen"
            for event in fan.read(timeout=0.2):
                assert not event.overflow
                assert event.pid == child.pid
                assert event.path == str(tmpfs_mount / event.name)
                masks[event.name or ""] |= event.mask
        finish_child(child)
        assert fan.stats().overflows == 0
    assert sorted(masks) == [f"n{i:05d}" for i in range(10000)]
    assert set(masks.values()) == {FanMask.CREATE | FanMask.CLOSE_WRITE}


@needs_root
def test_reports_path_and_pid_and_closes_event_fds(tmpfs_mount: Path) -> None:
    target = tmpfs_mount / "report.txt"
    before = open_fd_count()
    with Fanotify() as fan:
        fan.mark(tmpfs_mount, FanMask.CLOSE_WRITE, kind="mount")
        child = start_child(f"open({str(target)!r}, 'w').write('x'); print(1)")
        finish_child(child)
        (event,) = fan.read(timeout=5)
        assert event.names == ("FAN_CLOSE_WRITE",)
        assert (event.path, event.pid) == (str(target), child.pid)
        assert event.fd is not None and os.readlink(f"/proc/self/fd/{event.fd}") == str(target)
        assert fan.read() == []  # the previous batch's descriptors are closed now
        assert open_fd_count() == before + 1  # only the group's own descriptor is left
    assert open_fd_count() == before


@needs_root
def test_reports_dfid_name_for_create_delete_and_rename(tmpfs_mount: Path) -> None:
    (tmpfs_mount / "d").mkdir()
    with Fanotify(flags=FanInit.REPORT_DFID_NAME | FanInit.REPORT_FID) as fan:
        watched = FanMask.CREATE | FanMask.DELETE | FanMask.RENAME | FanMask.ONDIR
        fan.mark(tmpfs_mount / "d", watched)
        (tmpfs_mount / "d" / "a").write_text("x")
        (tmpfs_mount / "d" / "a").rename(tmpfs_mount / "d" / "b")
        (tmpfs_mount / "d" / "b").unlink()
        events = fan.read(timeout=5)
    seen = [(e.names, e.old_path, e.path) for e in events]
    d = str(tmpfs_mount / "d")
    assert seen == [
        (("FAN_CREATE",), None, f"{d}/a"),
        (("FAN_RENAME",), f"{d}/a", f"{d}/b"),
        (("FAN_DELETE",), None, f"{d}/b"),
    ]
    assert all(e.fd is None and e.handle for e in events)


@needs_root
def test_answers_every_permission_event(content_group: Fanotify, files: list[Path]) -> None:
    paths = files
    with Listener(content_group, lambda event: True) as listener:
        child = start_child(opener(paths))
        assert finish_child(child) == {str(p): 0 for p in paths}
    perm = [e for e in listener.events if e.is_permission]
    assert {e.path for e in perm} == {str(p) for p in paths}
    assert {e.pid for e in perm} == {child.pid}
    stats = content_group.stats()
    assert (stats.permission_events, stats.allowed, stats.deadman_allowed) == (200, 200, 0)
    assert content_group.pending == 0


@needs_root
def test_deny_gives_the_opener_eperm(content_group: Fanotify, files: list[Path]) -> None:
    good, bad = files[:2]
    with Listener(content_group, lambda event: event.path != str(bad)):
        result = finish_child(start_child(opener([good, bad])))
    assert result == {str(good): 0, str(bad): errno.EPERM}
    assert content_group.stats().denied == 1


@needs_root
def test_a_raising_decision_still_allows(content_group: Fanotify, files: list[Path]) -> None:
    paths = files[:3]

    def broken(event: FanotifyEvent) -> bool:
        raise RuntimeError("decision engine bug")

    with Listener(content_group, broken):
        assert finish_child(start_child(opener(paths))) == {str(p): 0 for p in paths}
    assert content_group.stats().decision_errors == 3


@needs_root
def test_deadman_allows_a_decision_that_never_comes(tmpfs_mount: Path) -> None:
    (path,) = make_files(tmpfs_mount, 1)
    overdue: list[FanotifyEvent] = []
    group = Fanotify(FanClass.CONTENT, deadman_timeout=0.3, on_deadman=overdue.append)
    with group as fan, watchdog(fan):
        fan.mark(tmpfs_mount, FanMask.OPEN_PERM, kind="filesystem")
        with Listener(fan, decide=None):
            started = time.monotonic()
            assert finish_child(start_child(opener([path]))) == {str(path): 0}
            assert time.monotonic() - started >= 0.3
        assert fan.stats().deadman_allowed == 1
        assert [e.path for e in overdue] == [str(path)]
        assert fan.pending == 0


@needs_root
def test_close_releases_a_waiting_opener(tmpfs_mount: Path) -> None:
    (path,) = make_files(tmpfs_mount, 1)
    fan = Fanotify(FanClass.CONTENT, deadman_timeout=60)
    try:
        fan.mark(tmpfs_mount, FanMask.OPEN_PERM, kind="filesystem")
        child = start_child(opener([path]))
        (event,) = fan.read(timeout=10)
        assert fan.pending == 1 and event.pid == child.pid
    finally:
        fan.close()  # the event is still pending: close must answer it
    assert finish_child(child, timeout=5) == {str(path): 0}
    assert fan.stats().allowed == 1
    assert fan.respond(event, allow=False) is False  # a late answer is ignored


@needs_root
def test_double_answers_are_ignored(content_group: Fanotify, files: list[Path]) -> None:
    path = files[0]
    child = start_child(opener([path]))
    (event,) = content_group.read(timeout=10)
    assert content_group.respond(event, allow=True, audit=True) is True
    assert content_group.respond(event, allow=False) is False
    assert finish_child(child) == {str(path): 0}
    assert content_group.stats().denied == 0


@needs_root
def test_pre_access_on_ext4_reports_the_range(ext4_mount: Path) -> None:
    path = ext4_mount / "content.bin"
    path.write_bytes(b"x" * 8192)
    try:
        fan = Fanotify(FanClass.PRE_CONTENT, deadman_timeout=5)
    except Unsupported as exc:
        pytest.skip(f"no pre-content class here: {exc}")
    with fan, watchdog(fan):
        try:
            fan.mark(ext4_mount, FanMask.PRE_ACCESS, kind="filesystem")
        except Unsupported as exc:
            pytest.skip(f"kernel lacks FAN_PRE_ACCESS: {exc}")
        with Listener(fan, lambda event: True) as listener:
            assert finish_child(start_child(opener([path]))) == {str(path): 0}
    pre = [e for e in listener.events if e.mask & FanMask.PRE_ACCESS]
    assert pre and {e.path for e in pre} == {str(path)}
    assert all(e.range is not None for e in pre)


@needs_root
def test_pre_access_on_tmpfs_is_unsupported_naming_the_flag(tmpfs_mount: Path) -> None:
    with Fanotify(FanClass.PRE_CONTENT) as fan, pytest.raises(Unsupported, match="PRE_ACCESS"):
        fan.mark(tmpfs_mount, FanMask.PRE_ACCESS)


@needs_root
def test_fid_reporting_with_a_permission_class_names_the_flag() -> None:
    with pytest.raises(Unsupported, match="FAN_REPORT_FID"):
        Fanotify(FanClass.CONTENT, FanInit.REPORT_FID)


@needs_root
def test_queue_overflow_surfaces_as_a_flagged_event(tmpfs_mount: Path) -> None:
    with Fanotify(flags=FanInit.REPORT_DFID_NAME) as fan:
        fan.mark(tmpfs_mount, FanMask.CREATE, kind="filesystem")
        for i in range(16384 + 100):  # the default queue holds 16384 events
            os.close(os.open(tmpfs_mount / f"o{i}", os.O_CREAT | os.O_WRONLY, 0o600))
        events: list[FanotifyEvent] = []
        while batch := fan.read():
            events += batch
    assert events[-1].overflow and events[-1].names == ("FAN_Q_OVERFLOW",)
    assert fan.stats().overflows == 1


@needs_root
async def test_plugs_into_asyncio(tmpfs_mount: Path) -> None:
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[FanotifyEvent] = asyncio.Queue()
    with Fanotify() as fan:
        fan.mark(tmpfs_mount, FanMask.CLOSE_WRITE, kind="mount")
        loop.add_reader(fan.fileno(), lambda: [got.put_nowait(e) for e in fan.read()])
        try:
            (tmpfs_mount / "async.txt").write_text("x")
            event = await asyncio.wait_for(got.get(), timeout=5)
        finally:
            loop.remove_reader(fan.fileno())
    assert event.path == str(tmpfs_mount / "async.txt") and event.pid == os.getpid()


# Decoding and the guard, without the kernel.

# One real event read on this machine: FAN_CREATE|FAN_MODIFY|FAN_CLOSE_WRITE merged, with a
# DFID_NAME record for "hello" (FAN_REPORT_DFID_NAME, so no descriptor).
CAPTURED = bytes.fromhex(
    "40000000030018000a01000000000000ffffffffd5110000"
    "02002800a3652a2b5424844c0c000000010000005efd3889010000000000000068656c6c6f000000"
)


def metadata(mask: int, fd: int = -1, pid: int = 7, records: bytes = b"") -> bytes:
    return struct.pack("=IBBHQii", 24 + len(records), 3, 0, 24, mask, fd, pid) + records


def test_decodes_a_captured_dfid_name_event() -> None:
    (raw,) = abi.iter_events(CAPTURED)
    event = abi.event_from_raw(1, raw, lambda fid: "/mnt" if fid.name == "hello" else None)
    assert event.names == ("FAN_MODIFY", "FAN_CLOSE_WRITE", "FAN_CREATE")
    assert (event.fd, event.pid, event.name, event.path) == (None, 0x11D5, "hello", "/mnt/hello")
    assert event.fsid == 0x4C8424542B2A65A3 and len(event.handle or b"") == 20


def test_overflow_is_a_flagged_event() -> None:
    (raw,) = abi.iter_events(metadata(FanMask.Q_OVERFLOW, pid=0))
    event = abi.event_from_raw(1, raw, lambda fid: None)
    assert event.overflow and not event.is_permission
    assert (event.names, event.fd, event.path) == (("FAN_Q_OVERFLOW",), None, None)


def test_decodes_pidfd_range_and_error_records() -> None:
    pidfd = struct.pack("=BBHi", 4, 0, 8, -2)
    rng = struct.pack("=BBHIQQ", 6, 0, 24, 0, 4096, 512)
    error = struct.pack("=BBHiI", 5, 0, 12, errno.EIO, 3)
    (raw,) = abi.iter_events(metadata(FanMask.PRE_ACCESS, records=pidfd + rng + error))
    event = abi.event_from_raw(1, raw, lambda fid: None)
    assert event.is_permission and event.pidfd is None  # FAN_EPIDFD: the process is gone
    assert (event.range, event.error) == ((4096, 512), (errno.EIO, 3))


def test_mask_names_keep_unknown_bits() -> None:
    assert mask_names(FanMask.OPEN_PERM | FanMask.ONDIR | 0x80000000) == (
        "FAN_OPEN_PERM",
        "FAN_ONDIR",
        "0x80000000",
    )


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_decoding_garbage_raises_only_value_error(head: bytes, tail: bytes) -> None:
    for buf in (head, metadata(int.from_bytes(head[:8] or b"\0", "little"), records=tail)):
        try:
            abi.iter_events(buf)
        except ValueError:
            pass


def test_guard_deadman_thread_allows_late_events_once() -> None:
    answers: list[tuple[int, int]] = []
    overdue: list[FanotifyEvent] = []
    guard = PermissionGuard(
        lambda event, response: answers.append((event.seq, response)),
        timeout=0.05,
        on_deadman=overdue.append,
    )
    events = [FanotifyEvent(seq=n, mask=FanMask.OPEN_PERM, pid=1, fd=100 + n) for n in (1, 2, 3)]
    for event in events:
        guard.track(event)
    assert guard.answer(events[1], abi.deny_response(None)) is True
    deadline = time.monotonic() + 5
    while guard.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    guard.close()
    assert sorted(answers) == [(1, abi.FAN_ALLOW), (2, abi.FAN_DENY), (3, abi.FAN_ALLOW)]
    assert [e.seq for e in overdue] == [1, 3]
    assert guard.answer(events[0], abi.FAN_DENY) is False
    assert guard.counts()["deadman_allowed"] == 2


def test_deny_errno_is_packed_in_the_top_byte() -> None:
    assert abi.deny_response(errno.EIO) == abi.FAN_DENY | errno.EIO << 24
