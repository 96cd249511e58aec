"""BackupStore: copies by version, claims by pid, refusals, restore with metadata."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from yoroi.modules.behavior.backup import BackupRecord, BackupStore, Refusal, RefusalReason
from yoroi.modules.behavior.holds import Held

MIB = 1024 * 1024


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BackupStore]:
    backups = BackupStore(tmp_path / "backups", max_file_size=MIB, budget_bytes=4 * MIB)
    yield backups
    backups.close()


def original(path: Path, data: bytes, mtime_ns: int = 1_600_000_000_123_456_789) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o640)
    os.utime(path, ns=(1_500_000_000_000_000_000, mtime_ns))
    return path


def keep(store: BackupStore, path: Path, pid: int) -> BackupRecord | Refusal:
    fd = os.open(path, os.O_RDONLY)
    try:
        return store.keep(str(path), fd, pid)
    finally:
        os.close(fd)


def kept(store: BackupStore, path: Path, pid: int) -> BackupRecord:
    outcome = keep(store, path, pid)
    assert isinstance(outcome, BackupRecord), outcome
    return outcome


def test_restore_puts_back_content_mode_and_times(store: BackupStore, tmp_path: Path) -> None:
    path = original(tmp_path / "data" / "report.txt", b"the original")
    record = kept(store, path, pid=100)
    path.write_bytes(b"encrypted garbage, longer than before")
    os.chmod(path, 0o600)

    store.restore(record)

    info = path.stat()
    assert path.read_bytes() == b"the original"
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert info.st_mtime_ns == 1_600_000_000_123_456_789
    assert info.st_atime_ns == 1_500_000_000_000_000_000
    assert [p.name for p in path.parent.iterdir()] == ["report.txt"]  # no temp left behind


def test_restore_recreates_a_deleted_parent_directory(store: BackupStore, tmp_path: Path) -> None:
    path = original(tmp_path / "data" / "deep" / "er" / "f.bin", b"\x00\x01payload")
    record = kept(store, path, pid=100)
    path.unlink()
    path.parent.rmdir()
    path.parent.parent.rmdir()

    store.restore(record)

    assert path.read_bytes() == b"\x00\x01payload"


def test_restore_to_another_place(store: BackupStore, tmp_path: Path) -> None:
    record = kept(store, original(tmp_path / "a.txt", b"abc"), pid=1)
    assert store.restore(record, to=tmp_path / "elsewhere" / "b.txt").read_bytes() == b"abc"


def test_xattrs_are_kept(store: BackupStore, tmp_path: Path) -> None:
    path = original(tmp_path / "x.txt", b"x")
    try:
        os.setxattr(path, "user.yoroi", b"tag")
    except OSError as exc:
        pytest.skip(f"no user xattrs here: {exc}")
    record = kept(store, path, pid=1)
    path.unlink()
    store.restore(record)
    assert os.getxattr(path, "user.yoroi") == b"tag"


def test_one_copy_per_version_shared_by_pids(store: BackupStore, tmp_path: Path) -> None:
    path = original(tmp_path / "f.txt", b"v1" * 100)
    first = kept(store, path, pid=10)
    second = kept(store, path, pid=20)

    assert second.id == first.id
    assert second.pids == {10, 20}
    assert store.usage() == 200
    assert len(os.listdir(store.blob_dir)) == 1

    path.write_bytes(b"v2" * 100)
    third = kept(store, path, pid=20)
    assert third.id != first.id
    assert store.usage() == 400


def test_size_cap_and_budget_are_refused_with_a_reason(tmp_path: Path) -> None:
    store = BackupStore(tmp_path / "b", max_file_size=1000, budget_bytes=1500)
    big = keep(store, original(tmp_path / "big", b"x" * 1001), pid=1)
    assert isinstance(big, Refusal) and big.reason is RefusalReason.SIZE_CAP
    assert big.size == 1001 and "max_file_size" in big.detail

    kept(store, original(tmp_path / "one", b"y" * 1000), pid=1)
    over = keep(store, original(tmp_path / "two", b"z" * 600), pid=1)
    assert isinstance(over, Refusal) and over.reason is RefusalReason.BUDGET
    assert store.usage() == 1000
    store.close()


def test_directories_are_not_copied(store: BackupStore, tmp_path: Path) -> None:
    outcome = keep(store, tmp_path, pid=1)
    assert isinstance(outcome, Refusal) and outcome.reason is RefusalReason.NOT_REGULAR


def test_release_drops_copies_of_honest_processes(store: BackupStore, tmp_path: Path) -> None:
    shared = kept(store, original(tmp_path / "s", b"shared"), pid=1)
    kept(store, original(tmp_path / "t", b"only two"), pid=2)
    kept(store, tmp_path / "s", pid=2)

    assert store.release(2) == 1  # "t" had no other claimant
    assert [r.id for r in store.records_for([1, 2])] == [shared.id]
    assert store.records_for(1)[0].pids == {1}

    assert store.release([1]) == 1
    assert store.records() == [] and store.usage() == 0
    assert os.listdir(store.blob_dir) == []


def test_expire_by_predicate(store: BackupStore, tmp_path: Path) -> None:
    old = kept(store, original(tmp_path / "old", b"1"), pid=1)
    new = kept(store, original(tmp_path / "new", b"22"), pid=1)
    assert store.expire(lambda record: record.created <= old.created) == 1
    assert [r.id for r in store.records()] == [new.id]
    assert store.usage() == 2


def test_records_for_a_family_and_restore_all(store: BackupStore, tmp_path: Path) -> None:
    a = original(tmp_path / "d" / "a", b"A")
    b = original(tmp_path / "d" / "b", b"B")
    kept(store, a, pid=7)
    kept(store, b, pid=8)
    kept(store, original(tmp_path / "other", b"O"), pid=9)
    a.write_bytes(b"A damaged by 7")
    kept(store, a, pid=8)  # a later version, claimed by a child: the oldest wins on restore
    b.unlink()

    report = store.restore_all(store.records_for({7, 8}))

    assert report.ok and sorted(report.restored) == [str(a), str(b)]
    assert (a.read_bytes(), b.read_bytes()) == (b"A", b"B")


def test_restore_all_reports_failures(store: BackupStore, tmp_path: Path) -> None:
    path = original(tmp_path / "p" / "f", b"F")
    record = kept(store, path, pid=1)
    path.unlink()
    path.mkdir()  # a directory now sits where the file was

    report = store.restore_all([record])

    assert not report.ok and list(report.failed) == [str(path)]
    assert report.failed[str(path)]


def test_the_index_survives_a_restart(tmp_path: Path) -> None:
    first = BackupStore(tmp_path / "b", max_file_size=MIB, budget_bytes=MIB)
    path = original(tmp_path / "f", b"persist me")
    record = kept(first, path, pid=42)
    first.close()

    again = BackupStore(tmp_path / "b", max_file_size=MIB, budget_bytes=MIB)
    assert again.records_for(42) == [record]
    assert again.usage() == len(b"persist me")
    path.unlink()
    again.restore(again.records_for(42)[0])
    assert path.read_bytes() == b"persist me"
    again.close()


def test_backups_are_owner_only(store: BackupStore, tmp_path: Path) -> None:
    record = kept(store, original(tmp_path / "f", b"secret"), pid=1)
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert stat.S_IMODE((store.root / "index.sqlite3").stat().st_mode) == 0o600
    assert stat.S_IMODE((store.blob_dir / record.id).stat().st_mode) == 0o600


def hold(store: BackupStore, path: Path, pid: int) -> list[Held]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return store.hold(str(path), fd, pid, os.fstat(fd))
    finally:
        os.close(fd)


def test_a_held_read_costs_no_copy_until_asked_for(store: BackupStore, tmp_path: Path) -> None:
    path = original(tmp_path / "read.txt", b"only read, then deleted")
    hold(store, path, pid=7)
    assert store.records() == [] and store.usage() == 0

    path.unlink()
    (record,) = store.records_for(7)

    assert store.restore(record).read_bytes() == b"only read, then deleted"
    assert path.stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert store.records_for(7) == [record] and len(store.holds) == 0


def test_a_held_file_changed_since_claims_the_copy_of_what_was_read(
    store: BackupStore, tmp_path: Path
) -> None:
    path = original(tmp_path / "f.txt", b"as read")
    hold(store, path, pid=1)
    before_write = kept(store, path, pid=2)  # a writer's pre-write copy
    path.write_bytes(b"overwritten")

    assert [r.id for r in store.records_for(1)] == [before_write.id]


def test_a_held_file_changed_without_a_copy_yields_nothing(
    store: BackupStore, tmp_path: Path
) -> None:
    path = original(tmp_path / "f.txt", b"as read")
    hold(store, path, pid=1)
    path.write_bytes(b"changed by a trusted writer")

    assert store.records_for(1) == []


def test_evicted_holds_are_returned_only_for_unlinked_files(tmp_path: Path) -> None:
    store = BackupStore(tmp_path / "b", max_file_size=MIB, budget_bytes=MIB, hold_limit=2)
    first = original(tmp_path / "1", b"one")
    hold(store, first, pid=3)
    first.unlink()
    kept_open = original(tmp_path / "2", b"two")
    hold(store, kept_open, pid=3)
    (evicted,) = hold(store, original(tmp_path / "3", b"three"), pid=3)  # "1" is unlinked
    assert hold(store, original(tmp_path / "4", b"four"), pid=3) == []  # "2" is not

    assert evicted.path == str(first) and os.fstat(evicted.fd).st_nlink == 0
    os.close(evicted.fd)
    store.close()


def test_an_evicted_unlinked_hold_is_copied_by_keep_held(tmp_path: Path) -> None:
    store = BackupStore(tmp_path / "b", max_file_size=MIB, budget_bytes=MIB, hold_limit=1)
    gone = original(tmp_path / "gone", b"deleted after the read")
    hold(store, gone, pid=5)
    gone.unlink()
    (evicted,) = hold(store, original(tmp_path / "next", b"next"), pid=5)

    record = store.keep_held(evicted)

    assert isinstance(record, BackupRecord) and record.path == str(gone)
    assert store.restore(record).read_bytes() == b"deleted after the read"
    store.close()


def test_release_closes_the_holds_of_honest_processes(store: BackupStore, tmp_path: Path) -> None:
    path = original(tmp_path / "h", b"honest read")
    hold(store, path, pid=9)
    store.release([9])
    path.unlink()

    assert store.records_for(9) == [] and len(store.holds) == 0
