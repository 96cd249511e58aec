"""FakeFanotify behaves like the real group for the code built on it.

The same small consumer (an allow/deny on-access check) runs against the fake and, as root on a
test tmpfs, against the real kernel: both must give the same answers.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from yoroi.errors import PlatformError, Unsupported
from yoroi.platform.fakes.fanotify import FakeFanotify
from yoroi.platform.linux.fanotify import (
    FanClass,
    FanInit,
    FanMask,
    Fanotify,
    FanotifyEvent,
    FanotifyLike,
)


def deny_bad(event: FanotifyEvent) -> bool:
    return not (event.path or "").endswith(".bad")


def on_access_round(fan: FanotifyLike, timeout: float = 5.0) -> dict[str, bool]:
    """The consumer: read one batch, answer every permission event, report the verdicts."""
    verdicts: dict[str, bool] = {}
    for event in fan.read(timeout=timeout):
        if event.is_permission:
            verdicts[event.path or "?"] = fan.respond_with(event, deny_bad)
    return verdicts


def test_inject_read_respond_is_recorded(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.txt", tmp_path / "evil.bad"
    with FakeFanotify(FanClass.CONTENT) as fan:
        fan.mark(tmp_path, FanMask.OPEN_PERM, kind="mount")
        fan.inject(FanMask.OPEN_PERM, good, pid=4242)
        fan.inject(FanMask.OPEN_PERM, bad, pid=4242)
        assert on_access_round(fan) == {str(good): True, str(bad): False}
        assert [(r.event.path, r.allow) for r in fan.responses] == [
            (str(good), True),
            (str(bad), False),
        ]
        assert fan.marks[0].mask == FanMask.OPEN_PERM and fan.marks[0].kind == "mount"
        assert fan.stats().denied == 1 and fan.pending == 0


OPEN_ONE = """
import sys
try:
    open(sys.argv[1], "rb").close()
except OSError as exc:
    sys.exit(exc.errno)
"""


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="the real fanotify needs root")
def test_real_group_gives_the_same_answers(tmpfs_mount: Path) -> None:
    good, bad = tmpfs_mount / "good.txt", tmpfs_mount / "evil.bad"
    good.write_text("ok")
    bad.write_text("ko")
    with Fanotify(FanClass.CONTENT) as real:
        real.mark(tmpfs_mount, FanMask.OPEN_PERM, kind="filesystem")
        # If a bug left an event unanswered, closing the group releases every opener.
        watchdog = threading.Timer(30, real.close)
        watchdog.start()
        openers = [subprocess.Popen([sys.executable, "-c", OPEN_ONE, str(p)]) for p in (good, bad)]
        try:
            real_verdicts: dict[str, bool] = {}
            deadline = time.monotonic() + 20
            while len(real_verdicts) < 2 and time.monotonic() < deadline:
                real_verdicts |= on_access_round(real, timeout=0.2)
            codes = [child.wait(timeout=20) for child in openers]
        finally:
            watchdog.cancel()
            for child in openers:
                if child.poll() is None:
                    child.kill()
                    child.wait()
    # Only now: the fake opens injected paths, and this process must not wait on its own mark.
    with FakeFanotify(FanClass.CONTENT) as fake:
        fake.inject(FanMask.OPEN_PERM, good)
        fake.inject(FanMask.OPEN_PERM, bad)
        assert real_verdicts == on_access_round(fake) == {str(good): True, str(bad): False}
    assert codes == [0, errno.EPERM]


def test_event_fd_reads_the_file_and_is_closed_at_next_read(tmp_path: Path) -> None:
    path = tmp_path / "scan.me"
    path.write_bytes(b"EICAR")
    with FakeFanotify() as fan:
        fan.inject(FanMask.CLOSE_WRITE, path)
        (event,) = fan.read()
        assert event.fd is not None and os.pread(event.fd, 5, 0) == b"EICAR"
        assert fan.read() == []
        with pytest.raises(OSError):
            os.fstat(event.fd)


def test_fid_mode_reports_names_without_descriptors(tmp_path: Path) -> None:
    with FakeFanotify(flags=FanInit.REPORT_DFID_NAME) as fan:
        fan.inject(FanMask.CREATE, tmp_path / "new.txt")
        (event,) = fan.read()
    assert (event.fd, event.name, event.names) == (None, "new.txt", ("FAN_CREATE",))


def test_deadman_double_answers_and_raising_decisions() -> None:
    overdue: list[FanotifyEvent] = []
    with FakeFanotify(FanClass.CONTENT, deadman_timeout=1.0, on_deadman=overdue.append) as fan:
        slow, twice, broken = (fan.inject(FanMask.OPEN_PERM, f"/x/{n}") for n in "abc")
        fan.read()
        assert fan.respond(twice, allow=False, errno=errno.EIO) is True
        assert fan.respond(twice, allow=True) is False
        assert fan.respond_with(broken, lambda event: 1 / 0 > 0) is True
        assert fan.advance(0.5) == 0 and fan.advance(0.6) == 1
        assert overdue == [slow]
        assert [(r.event.path, r.allow, r.errno, r.deadman) for r in fan.responses] == [
            ("/x/b", False, errno.EIO, False),
            ("/x/c", True, None, False),
            ("/x/a", True, None, True),
        ]
        stats = fan.stats()
        assert (stats.deadman_allowed, stats.decision_errors, stats.denied) == (1, 1, 1)


def test_close_allows_everything_pending() -> None:
    fan = FakeFanotify(FanClass.PRE_CONTENT)
    fan.inject(FanMask.PRE_ACCESS, "/x/a", range=(0, 4096))
    (event,) = fan.read()
    fan.close()
    assert [(r.event, r.allow) for r in fan.responses] == [(event, True)]
    assert event.range == (0, 4096)
    with pytest.raises(PlatformError):
        fan.read()


def test_refuses_permission_marks_on_a_notification_group() -> None:
    with FakeFanotify() as fan, pytest.raises(Unsupported, match="FAN_OPEN_PERM"):
        fan.mark("/srv", FanMask.OPEN_PERM | FanMask.CLOSE_WRITE)


def test_overflow_is_flagged() -> None:
    with FakeFanotify() as fan:
        fan.inject_overflow()
        (event,) = fan.read()
        assert event.overflow and fan.stats().overflows == 1


async def test_fileno_plugs_into_asyncio() -> None:
    loop = asyncio.get_running_loop()
    got: asyncio.Queue[FanotifyEvent] = asyncio.Queue()
    with FakeFanotify() as fan:
        loop.add_reader(fan.fileno(), lambda: [got.put_nowait(e) for e in fan.read()])
        try:
            fan.inject(FanMask.MODIFY, "/nowhere/file")
            event = await asyncio.wait_for(got.get(), timeout=5)
        finally:
            loop.remove_reader(fan.fileno())
    assert event.path == "/nowhere/file" and event.fd is None
