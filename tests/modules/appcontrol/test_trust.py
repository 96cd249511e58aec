"""The trust database: judging executions, the identity cache, storage."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from yoroi.errors import PlatformError
from yoroi.modules.appcontrol.inventory import file_entry, identity_of, run_inventory
from yoroi.modules.appcontrol.trust import (
    CHANGED_CONTENT,
    CHANGED_PATH,
    CHANGED_PERMISSIONS,
    RuleSet,
    TrustDatabase,
)
from yoroi.modules.appcontrol.types import Decision, Reason, Source


@contextmanager
def opened(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def judge(db: TrustDatabase, path: Path) -> Decision:
    """What the enforcer does: judge through the event's fd and its fstat."""
    with opened(path) as fd:
        info = os.fstat(fd)
        return db.judge(str(path), fd, identity_of(info), info.st_mode)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    root.mkdir()
    shutil.copy2("/bin/true", root / "tool")
    return root


@pytest.fixture
def db(tmp_path: Path, host: Path) -> TrustDatabase:
    database = TrustDatabase(tmp_path / "state" / "trust.msgpack")
    run_inventory(database, [str(host)], packages=None, jobs=2)
    return database


def test_known_binary_is_trusted_then_judged_from_the_cache_without_reading(
    db: TrustDatabase, host: Path
) -> None:
    first = judge(db, host / "tool")
    assert (first.allow, first.reason, first.rule) == (True, Reason.TRUSTED, "inventory")
    info = os.stat(host / "tool")
    read_end, write_end = os.pipe()  # pread on a pipe fails: any read would show
    try:
        again = db.judge(str(host / "tool"), read_end, identity_of(info), info.st_mode)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert again.allow and again.reason is Reason.TRUSTED
    assert db.counters.bytes_hashed == 0  # the inventory's identity seeded the cache


def test_a_miss_reads_through_the_fd_and_is_cached(db: TrustDatabase, host: Path) -> None:
    copy = host / "copy"
    shutil.copy2(host / "tool", copy)
    db.add([file_entry(copy, Source.INVENTORY)])
    db.clear_cache()
    assert judge(db, copy).allow
    read = db.counters.bytes_hashed
    assert read == os.path.getsize(copy)
    assert judge(db, copy).allow
    assert db.counters.bytes_hashed == read and db.counters.hits >= 1


def test_new_binary_is_unknown(db: TrustDatabase, host: Path) -> None:
    shutil.copy2("/bin/echo", host / "new")
    decision = judge(db, host / "new")
    assert (decision.allow, decision.reason, decision.rule) == (False, Reason.UNKNOWN, None)
    assert decision.sha256 is not None


def test_modified_known_binary_is_changed_in_content(db: TrustDatabase, host: Path) -> None:
    with open(host / "tool", "ab") as out:
        out.write(b"\0payload")
    decision = judge(db, host / "tool")
    assert (decision.allow, decision.reason, decision.rule) == \
        (False, Reason.CHANGED, CHANGED_CONTENT)


def test_renamed_or_moved_known_binary_is_changed_in_path(
    db: TrustDatabase, host: Path, tmp_path: Path
) -> None:
    os.rename(host / "tool", host / "renamed")
    assert judge(db, host / "renamed").rule == CHANGED_PATH
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(host / "renamed", elsewhere / "tool")
    decision = judge(db, elsewhere / "tool")
    assert (decision.allow, decision.reason, decision.rule) == (False, Reason.CHANGED, CHANGED_PATH)


def test_chmod_is_changed_in_permissions(db: TrustDatabase, host: Path) -> None:
    os.chmod(host / "tool", 0o4755)
    decision = judge(db, host / "tool")
    assert (decision.allow, decision.reason, decision.rule) == \
        (False, Reason.CHANGED, CHANGED_PERMISSIONS)


def test_hash_trusted_explicitly_is_trusted_anywhere(
    db: TrustDatabase, host: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "anywhere"
    shutil.copy2("/bin/echo", elsewhere)
    entry, _ = file_entry(elsewhere, Source.HASH)
    assert not judge(db, elsewhere).allow
    db.trust_hash(entry.sha256)
    decision = judge(db, elsewhere)
    assert (decision.allow, decision.rule) == (True, "hash")
    os.rename(elsewhere, host / "moved")
    assert judge(db, host / "moved").allow


def test_policy_rules_hash_and_location(db: TrustDatabase, host: Path) -> None:
    shutil.copy2("/bin/echo", host / "echo")
    (host / "app").mkdir()
    (host / "app" / "tool").write_bytes(b"anything")
    entry, _ = file_entry(host / "echo", Source.HASH)
    db.set_rules(RuleSet(hashes=frozenset({entry.sha256}), paths=(f"{host}/app/*",)))
    assert judge(db, host / "echo").allow
    by_location = judge(db, host / "app" / "tool")
    assert (by_location.allow, by_location.rule, by_location.sha256) == (True, "path", None)
    db.set_rules(RuleSet())
    assert not judge(db, host / "echo").allow
    assert not judge(db, host / "app" / "tool").allow


def test_without_fd_the_path_is_opened(db: TrustDatabase, host: Path) -> None:
    db.clear_cache()
    info = os.stat(host / "tool")
    assert db.judge(str(host / "tool"), None, identity_of(info), info.st_mode).allow
    gone = host / "gone"
    decision = db.judge(str(gone), None, identity_of(info), info.st_mode)
    assert (decision.allow, decision.rule) == (False, "unreadable")


def test_database_survives_reopen(db: TrustDatabase, host: Path) -> None:
    db.trust_hash("a" * 64)
    db.save()
    reopened = TrustDatabase(db.path)
    assert reopened.entries() == db.entries()
    assert reopened.trusted_hashes() == frozenset({"a" * 64})
    assert reopened.inventory_dirs == [str(host)]
    decision = judge(reopened, host / "tool")
    assert decision.allow and reopened.counters.bytes_hashed == 0  # cache seeded from disk


def test_reload_if_changed_sees_another_writer(db: TrustDatabase) -> None:
    reader = TrustDatabase(db.path)
    assert not reader.reload_if_changed()
    db.trust_hash("b" * 64)
    db.save()
    assert reader.reload_if_changed()
    assert "b" * 64 in reader.trusted_hashes()


def test_a_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "trust.msgpack"
    path.write_bytes(b"\xc1not msgpack")
    with pytest.raises(PlatformError, match="not a trust database"):
        TrustDatabase(path)


def test_a_bad_hash_is_refused(db: TrustDatabase) -> None:
    with pytest.raises(ValueError, match="not a SHA-256"):
        db.trust_hash("xyz")


def test_cache_hit_costs_microseconds(db: TrustDatabase, host: Path) -> None:
    info = os.stat(host / "tool")
    ident, path, mode = identity_of(info), str(host / "tool"), info.st_mode
    rounds = 20_000
    started = time.perf_counter()
    for _ in range(rounds):
        db.judge(path, -1, ident, mode)
    per_call = (time.perf_counter() - started) / rounds
    assert per_call < 50e-6  # generous: a loaded CI machine; typically ~1 µs
