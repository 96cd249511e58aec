"""The in-memory dpkg database twin."""

from __future__ import annotations

import pytest

from yoroi.platform.fakes.dpkg import FakeDpkgDatabase, md5
from yoroi.platform.linux.dpkg import Conffile, Package, PackageDatabase

LS = b"\x7fELF ls"


@pytest.fixture
def db() -> FakeDpkgDatabase:
    return FakeDpkgDatabase.from_contents(
        {"coreutils": {"/usr/bin/ls": LS}, "bash": {"/usr/bin/bash": b"bash"}},
        versions={"coreutils": "9.1-1"},
    )


def test_is_a_package_database(db: FakeDpkgDatabase) -> None:
    assert isinstance(db, PackageDatabase)


def test_built_from_contents(db: FakeDpkgDatabase) -> None:
    assert sorted(db.packages()) == ["bash", "coreutils"]
    assert db.packages()["coreutils"].version == "9.1-1"
    assert db.packages()["bash"].installed
    assert db.files("coreutils") == ["/usr/bin/ls"]
    assert db.md5sums("coreutils") == {"/usr/bin/ls": md5(LS)}
    assert db.owner("/usr/bin/ls") == ["coreutils"]


def test_verify_follows_the_fake_disk(db: FakeDpkgDatabase) -> None:
    assert db.verify("/usr/bin/ls") is True
    db.disk["/usr/bin/ls"] = b"trojan"
    assert db.verify("/usr/bin/ls") is False
    del db.disk["/usr/bin/ls"]
    assert db.verify("/usr/bin/ls") is False
    assert db.verify("/usr/bin/unowned") is None


def test_unknown_package(db: FakeDpkgDatabase) -> None:
    assert db.package("nope") is None
    assert db.files("nope") == [] and db.md5sums("nope") == {}


def test_built_from_dicts_with_conffiles_and_architecture() -> None:
    libc = Package("libc6", "amd64", "2.36-9", "install ok installed", multi_arch="same")
    conf = Package(
        "adduser",
        "all",
        "3.134",
        "install ok installed",
        conffiles=(Conffile("/etc/adduser.conf", md5(b"conf")),),
    )
    db = FakeDpkgDatabase(
        [libc, conf],
        files={"libc6:amd64": ["/usr/lib/libc.so.6"], "adduser": ["/etc/adduser.conf"]},
        md5sums={"libc6:amd64": {"/usr/lib/libc.so.6": md5(b"libc")}},
        disk={"/usr/lib/libc.so.6": b"libc", "/etc/adduser.conf": b"edited"},
    )

    assert sorted(db.packages()) == ["adduser", "libc6:amd64"]
    assert db.files("libc6") == ["/usr/lib/libc.so.6"]
    assert db.owner("/usr/lib/libc.so.6") == ["libc6:amd64"]
    assert db.verify("/usr/lib/libc.so.6") is True
    assert db.md5sums("adduser") == {"/etc/adduser.conf": md5(b"conf")}
    assert db.verify("/etc/adduser.conf") is False
