"""The inventory: what is recorded, verified against the package database, refreshed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from yoroi.modules.appcontrol.inventory import (
    InventoryProgress,
    default_dirs,
    host_packages,
    identity_of,
    is_library_name,
    normalise_dirs,
    package_entries,
    run_inventory,
)
from yoroi.modules.appcontrol.trust import TrustDatabase
from yoroi.modules.appcontrol.types import Reason, Source
from yoroi.platform.fakes.dpkg import FakeDpkgDatabase


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "lib").mkdir(parents=True)
    shutil.copy2("/bin/true", root / "true")  # an ELF executable
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")  # a script, no x bit
    (root / "run.sh").chmod(0o644)
    (root / "lib" / "libdemo.so.1").write_bytes(b"\x7fELF not really")  # a library, no x bit
    (root / "lib" / "notes.txt").write_text("data, never run\n")
    (root / "empty").write_bytes(b"")
    os.symlink("/bin/true", root / "link")  # links are not followed
    return root


@pytest.fixture
def db(tmp_path: Path) -> TrustDatabase:
    return TrustDatabase(tmp_path / "state" / "trust.msgpack")


def test_records_executables_scripts_and_libraries_only(tree: Path, db: TrustDatabase) -> None:
    seen: list[InventoryProgress] = []
    report = run_inventory(db, [str(tree)], packages=None, jobs=2, progress=seen.append)
    paths = {e.path for e in db.entries()}
    assert paths == {str(tree / "true"), str(tree / "run.sh"), str(tree / "lib/libdemo.so.1")}
    assert report.recorded == {"inventory": 3} and report.hashed == 3 and not report.errors
    assert {e.source for e in db.entries()} == {Source.INVENTORY}
    assert db.entry(str(tree / "run.sh")).mode == 0o644  # type: ignore[union-attr]
    assert seen and seen[-1].hashed == 3
    assert TrustDatabase(db.path).entries() == db.entries()  # saved


def test_package_files_verified_by_dpkg(tree: Path, db: TrustDatabase) -> None:
    true = str(tree / "true")
    packages = FakeDpkgDatabase.from_contents({
        "coreutils": {true: (tree / "true").read_bytes()},
        "demo": {str(tree / "run.sh"): b"#!/bin/sh\necho what dpkg installed\n"},
    })
    report = run_inventory(db, [str(tree)], packages=packages)
    assert db.entry(true).source is Source.PACKAGE  # type: ignore[union-attr]
    assert db.entry(true).package == "coreutils"  # type: ignore[union-attr]
    assert report.package_mismatches == [str(tree / "run.sh")]  # reported, still trusted
    assert db.entry(str(tree / "run.sh")).source is Source.INVENTORY  # type: ignore[union-attr]
    fd = os.open(true, os.O_RDONLY)
    try:
        info = os.fstat(fd)
        decision = db.judge(true, fd, identity_of(info), info.st_mode)
    finally:
        os.close(fd)
    assert (decision.allow, decision.rule) == (True, "package:coreutils")


def test_refresh_reads_only_what_changed_and_drops_what_is_gone(
    tree: Path, db: TrustDatabase
) -> None:
    run_inventory(db, [str(tree)], packages=None)
    (tree / "run.sh").unlink()
    shutil.copy2("/bin/true", tree / "new")
    report = run_inventory(db, [str(tree)], packages=None)
    assert (report.hashed, report.reused) == (1, 2)
    assert db.entry(str(tree / "run.sh")) is None
    assert db.entry(str(tree / "new")) is not None


def test_explicit_trust_survives_a_refresh(tree: Path, db: TrustDatabase) -> None:
    run_inventory(db, [str(tree)], packages=None)
    db.trust_hash("c" * 64)
    run_inventory(db, [str(tree)], packages=None)
    assert "c" * 64 in db.trusted_hashes()


def test_unreadable_files_are_reported_not_fatal(tree: Path, db: TrustDatabase) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file; nothing is unreadable")
    (tree / "true").chmod(0o111)
    report = run_inventory(db, [str(tree)], packages=None)
    assert [p for p, _ in report.errors] == [str(tree / "true")]


def test_directories_are_resolved_and_nested_ones_dropped(tmp_path: Path, tree: Path) -> None:
    os.symlink(tree, tmp_path / "alias")
    assert normalise_dirs([str(tmp_path / "alias"), str(tree / "lib"), str(tmp_path / "no")]) \
        == [str(tree)]
    dirs = default_dirs()
    assert dirs and all(os.path.realpath(d) == d for d in dirs)
    assert os.path.realpath("/usr/bin") in dirs or any(
        "/usr/bin".startswith(d + "/") for d in dirs)


def test_library_names() -> None:
    assert all(map(is_library_name, ["libc.so.6", "ld-linux-x86-64.so.2", "mod.so"]))
    assert not any(map(is_library_name, ["so", "notes.txt", "socket.py"]))


@pytest.mark.skipif(host_packages() is None, reason="no dpkg database on this host")
def test_real_package_entries_and_judge(db: TrustDatabase) -> None:
    packages = host_packages()
    assert packages is not None
    owner = packages.owner(os.path.realpath("/bin/true"))
    if not owner:
        pytest.skip("/bin/true belongs to no package here")
    trusted, refused = package_entries(packages, owner[0])
    db.add(trusted)
    real = os.path.realpath("/bin/true")
    fd = os.open(real, os.O_RDONLY)
    try:
        info = os.fstat(fd)
        decision = db.judge(real, fd, identity_of(info), info.st_mode)
    finally:
        os.close(fd)
    assert decision.reason is Reason.TRUSTED and decision.rule == f"package:{owner[0]}"
    assert real not in refused
