"""FileMonitor against the real kernel, on file systems the tests mount themselves.

Every child process runs with a timeout; the monitor answers from its own threads; a watchdog
stops the monitor (answering and closing its groups) if a test wedges.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from yoroi.modules.behavior.backup import BackupStore, Refusal, RefusalReason
from yoroi.modules.behavior.monitor import FileMonitor
from yoroi.modules.behavior.types import Activity, FileEvent

pytestmark = pytest.mark.root
MIB = 1024 * 1024
ORIGINAL_MTIME_NS = 1_600_000_000_000_000_000
CHILD_TIMEOUT = 20
WATCHDOG = 45.0


class Recorder:
    """Collects FileEvents from the reader thread."""

    def __init__(self) -> None:
        self.events: list[FileEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: FileEvent) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, pid: int) -> list[FileEvent]:
        with self._lock:
            return [e for e in self.events if e.pid == pid]

    def wait_for(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)


MonitorFactory = Callable[..., FileMonitor]


@pytest.fixture
def start_monitor() -> Iterator[MonitorFactory]:
    if os.geteuid() != 0:
        pytest.skip("fanotify needs root")
    started: list[FileMonitor] = []

    def start(*args: object, **kwargs: object) -> FileMonitor:
        monitor = FileMonitor(*args, **kwargs)  # type: ignore[arg-type]
        monitor.start()
        started.append(monitor)
        return monitor

    watchdog = threading.Timer(WATCHDOG, lambda: [m.stop() for m in started])
    watchdog.daemon = True
    watchdog.start()
    try:
        yield start
    finally:
        watchdog.cancel()
        for monitor in started:
            monitor.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BackupStore]:
    backups = BackupStore(tmp_path / "backups", max_file_size=MIB, budget_bytes=8 * MIB)
    yield backups
    backups.close()


def child(code: str, cwd: Path) -> int:
    """Run ``code`` in a Python child in ``cwd``; return its pid once it has exited."""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=cwd)
    try:
        assert proc.wait(timeout=CHILD_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.pid


def protected(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    os.utime(path, ns=(ORIGINAL_MTIME_NS, ORIGINAL_MTIME_NS))
    return path


def everyone(path: str, pid: int) -> bool:
    return True


def restore_for(store: BackupStore, pid: int) -> list[str]:
    report = store.restore_all(store.records_for(pid))
    assert report.ok, report.failed
    return sorted(report.restored)


@pytest.mark.parametrize(
    "damage",
    [
        "f = open('doc.txt', 'r+b'); f.write(b'ENCRYPTED'); f.close()",
        "open('doc.txt', 'w').write('ENCRYPTED')",
        "import os; os.truncate('doc.txt', 3)",
    ],
    ids=["overwrite-in-place", "open-truncate", "truncate"],
)
def test_ext4_original_is_kept_before_the_write(
    ext4_mount: Path, store: BackupStore, start_monitor: MonitorFactory, damage: str
) -> None:
    path = protected(ext4_mount, "doc.txt", b"original content " * 50)
    monitor = start_monitor([ext4_mount], Recorder(), protect=everyone, backup=store)
    assert monitor.guard is not None and set(monitor.guard.modes.values()) == {"pre-content"}

    pid = child(damage, ext4_mount)

    assert path.read_bytes() != b"original content " * 50
    assert restore_for(store, pid) == [str(path)]
    assert path.read_bytes() == b"original content " * 50
    assert path.stat().st_mtime_ns == ORIGINAL_MTIME_NS


def test_ext4_backup_dir_on_the_watched_file_system(
    ext4_mount: Path, start_monitor: MonitorFactory
) -> None:
    store = BackupStore(ext4_mount / ".backups", max_file_size=MIB, budget_bytes=MIB)
    path = protected(ext4_mount, "a.txt", b"keep me")
    start_monitor([ext4_mount], Recorder(), protect=everyone, backup=store)

    pid = child("open('a.txt', 'w').write('gone')", ext4_mount)

    assert restore_for(store, pid) == [str(path)]
    assert path.read_bytes() == b"keep me"
    store.close()


def test_ext4_untrusted_reader_then_delete_is_restorable(
    ext4_mount: Path, store: BackupStore, start_monitor: MonitorFactory
) -> None:
    path = protected(ext4_mount, "r.txt", b"read me, then lose me")
    start_monitor([ext4_mount], Recorder(), protect=everyone, backup=store)

    pid = child("import os; open('r.txt','rb').read(); os.unlink('r.txt')", ext4_mount)

    assert not path.exists()
    assert restore_for(store, pid) == [str(path)]
    assert path.read_bytes() == b"read me, then lose me"


def test_ext4_reads_are_held_not_copied(
    ext4_mount: Path, store: BackupStore, start_monitor: MonitorFactory
) -> None:
    path = protected(ext4_mount, "r.txt", b"only read" * 100)
    monitor = start_monitor([ext4_mount], Recorder(), protect=everyone, backup=store)

    pid = child("open('r.txt', 'rb').read(); open('r.txt', 'rb').read()", ext4_mount)

    assert store.records() == [] and store.usage() == 0
    assert monitor.guard is not None and monitor.guard.counters["copied"] == 0
    assert [r.path for r in store.records_for(pid)] == [str(path)]  # still restorable


def test_ext4_new_files_are_not_copied(
    ext4_mount: Path, store: BackupStore, start_monitor: MonitorFactory
) -> None:
    start_monitor([ext4_mount], Recorder(), protect=everyone, backup=store)

    pid = child("open('new.txt', 'wb').write(b'fresh'); open('new.txt', 'ab').write(b'!')",
                ext4_mount)

    assert store.records_for(pid) == [] and store.records() == []


def test_ext4_copy_file_range_copies_only_the_destination(
    ext4_mount: Path, store: BackupStore, start_monitor: MonitorFactory
) -> None:
    src = protected(ext4_mount, "src.txt", b"source " * 100)
    dst = protected(ext4_mount, "dst.txt", b"destination " * 100)
    start_monitor([ext4_mount], Recorder(), protect=everyone, backup=store)

    pid = child(
        "import os; s = os.open('src.txt', os.O_RDONLY); d = os.open('dst.txt', os.O_WRONLY);"
        "os.copy_file_range(s, d, 700)",
        ext4_mount,
    )

    assert [r.path for r in store.records()] == [str(dst)]  # the source is only held
    assert restore_for(store, pid) == sorted([str(dst), str(src)])
    assert dst.read_bytes() == b"destination " * 100


def test_trusted_processes_and_other_paths_are_not_copied(
    ext4_mount: Path, store: BackupStore, start_monitor: MonitorFactory
) -> None:
    (ext4_mount / "watched").mkdir()
    (ext4_mount / "outside").mkdir()
    protected(ext4_mount / "watched", "t.txt", b"trusted")
    protected(ext4_mount / "outside", "o.txt", b"outside")
    start_monitor([ext4_mount / "watched"], Recorder(), protect=lambda p, pid: False,
                  backup=store)

    child("open('watched/t.txt','w').write('x'); open('outside/o.txt','w').write('y')",
          ext4_mount)

    assert store.records() == []


def test_tmpfs_open_fallback_keeps_the_original(
    tmpfs_mount: Path, store: BackupStore, start_monitor: MonitorFactory
) -> None:
    doc = protected(tmpfs_mount, "doc.txt", b"tmpfs original")
    gone = protected(tmpfs_mount, "gone.txt", b"opened, then deleted")
    monitor = start_monitor([tmpfs_mount], Recorder(), protect=everyone, backup=store)
    assert monitor.guard is not None and set(monitor.guard.modes.values()) == {"open"}

    pid = child(
        "import os; open('doc.txt', 'w').write('XXXX');"
        "open('gone.txt', 'rb').close(); os.unlink('gone.txt')",
        tmpfs_mount,
    )

    assert not gone.exists()
    assert restore_for(store, pid) == sorted([str(doc), str(gone)])
    assert doc.read_bytes() == b"tmpfs original"
    assert gone.read_bytes() == b"opened, then deleted"
    assert doc.stat().st_mtime_ns == ORIGINAL_MTIME_NS


def test_one_copy_per_file_and_process(
    tmpfs_mount: Path, store: BackupStore, start_monitor: MonitorFactory
) -> None:
    protected(tmpfs_mount, "f.txt", b"v1")
    start_monitor([tmpfs_mount], Recorder(), protect=everyone, backup=store)

    first = child("for i in range(5): open('f.txt', 'a').write(str(i))", tmpfs_mount)
    second = child("open('f.txt', 'rb').read(); open('f.txt', 'rb').read()", tmpfs_mount)

    (copy,) = store.records_for(first)
    assert store.restore(copy).read_bytes() == b"v1"
    (later,) = store.records_for(second)  # the version the second process found
    assert later.id != copy.id and later.size == len(b"v101234")


def test_refusals_are_reported(
    tmpfs_mount: Path, tmp_path: Path, start_monitor: MonitorFactory
) -> None:
    store = BackupStore(tmp_path / "b", max_file_size=100, budget_bytes=150)
    protected(tmpfs_mount, "big", b"b" * 101)
    protected(tmpfs_mount, "fits", b"f" * 100)
    protected(tmpfs_mount, "over", b"o" * 60)
    refusals: list[Refusal] = []
    start_monitor([tmpfs_mount], Recorder(), protect=everyone, backup=store,
                  on_refusal=refusals.append)

    child("for n in ('big', 'fits', 'over'): open(n, 'w').close()", tmpfs_mount)

    deadline = time.monotonic() + 5
    while len(refusals) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    reasons = {r.path.rsplit("/", 1)[1]: r.reason for r in refusals}
    assert reasons == {"big": RefusalReason.SIZE_CAP, "over": RefusalReason.BUDGET}
    store.close()


def test_events_carry_the_child_pid_and_paths(
    tmpfs_mount: Path, start_monitor: MonitorFactory
) -> None:
    recorder = Recorder()
    start_monitor([tmpfs_mount], recorder)
    root = str(tmpfs_mount)

    pid = child(
        "import os; os.mkdir('d'); open('d/a.txt', 'w').write('x');"
        "os.rename('d/a.txt', 'd/b.txt'); os.unlink('d/b.txt')",
        tmpfs_mount,
    )

    recorder.wait_for(lambda: any(e.activity is Activity.DELETE for e in recorder.of(pid)))
    seen = [(e.activity, e.path, e.old_path) for e in recorder.of(pid)]
    assert seen == [
        (Activity.CREATE, f"{root}/d", None),
        (Activity.CREATE, f"{root}/d/a.txt", None),
        (Activity.WRITE, f"{root}/d/a.txt", None),
        (Activity.RENAME, f"{root}/d/b.txt", f"{root}/d/a.txt"),
        (Activity.DELETE, f"{root}/d/b.txt", None),
    ]


def test_only_watched_directories_are_reported(
    tmpfs_mount: Path, start_monitor: MonitorFactory
) -> None:
    (tmpfs_mount / "in").mkdir()
    (tmpfs_mount / "out").mkdir()
    recorder = Recorder()
    start_monitor([tmpfs_mount / "in"], recorder)

    pid = child("open('out/x', 'w').close(); open('in/y', 'w').close()", tmpfs_mount)

    recorder.wait_for(lambda: len(recorder.of(pid)) >= 2)
    time.sleep(0.2)
    assert {e.path for e in recorder.of(pid)} == {str(tmpfs_mount / "in" / "y")}


def test_two_thousand_quick_operations_none_lost(
    ext4_mount: Path, store: BackupStore, start_monitor: MonitorFactory
) -> None:
    recorder = Recorder()
    start_monitor([ext4_mount], recorder, protect=everyone, backup=store)
    files = 500  # create + write/close, rename, delete: 4 operations each

    pid = child(
        "import os\n"
        f"for i in range({files}):\n"
        "    with open(f'f{i}', 'w') as f: f.write('x')\n"
        f"for i in range({files}): os.rename(f'f{{i}}', f'g{{i}}')\n"
        f"for i in range({files}): os.unlink(f'g{{i}}')\n",
        ext4_mount,
    )

    def count(activity: Activity) -> int:
        return sum(e.activity is activity for e in recorder.of(pid))

    recorder.wait_for(lambda: count(Activity.DELETE) == files)
    assert {a: count(a) for a in Activity if a is not Activity.OPEN} == {
        Activity.CREATE: files, Activity.WRITE: files,
        Activity.RENAME: files, Activity.DELETE: files,
    }
    renames = {e.old_path: e.path for e in recorder.of(pid) if e.activity is Activity.RENAME}
    assert renames[f"{ext4_mount}/f7"] == f"{ext4_mount}/g7"


def test_a_long_lived_writer_is_reported_before_it_closes(
    tmpfs_mount: Path, start_monitor: MonitorFactory
) -> None:
    recorder = Recorder()
    start_monitor([tmpfs_mount], recorder, open_write_delay=0.2)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; f = open('log', 'w'); f.write('x'); f.flush();"
         "sys.stdin.read(); f.close()"],
        cwd=tmpfs_mount, stdin=subprocess.PIPE,
    )
    try:
        recorder.wait_for(lambda: any(e.activity is Activity.WRITE for e in recorder.events))
        assert [e.activity for e in recorder.of(proc.pid)] == [Activity.CREATE, Activity.WRITE]
    finally:
        proc.communicate(b"", timeout=CHILD_TIMEOUT)
    recorder.wait_for(lambda: len(recorder.of(proc.pid)) == 3)
    assert [e.activity for e in recorder.of(proc.pid)][-1] is Activity.WRITE
