"""Baselines: what is recorded, parallel equals serial, the signed store."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from yoroi.errors import BaselineTampered, UsageError
from yoroi.modules.integrity.baseline import BaselineStore, record, scan
from yoroi.modules.integrity.rules import Rule, path_rule
from yoroi.modules.integrity.types import Attribute


def _tree(root: Path, files: int = 300) -> Path:
    for i in range(files):
        sub = root / f"d{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}").write_bytes(os.urandom(i * 37))
    (root / "big").write_bytes(os.urandom(3 << 20))
    os.symlink("big", root / "link")
    return root


def test_parallel_hashing_equals_serial(tmp_path: Path) -> None:
    rules = (path_rule([str(_tree(tmp_path / "t"))]),)
    serial, parallel = scan(rules, jobs=1), scan(rules, jobs=2)
    assert len(serial.states) == 300 + 7 + 3
    assert serial.states == parallel.states
    assert serial.rule_of == parallel.rule_of


def test_what_each_type_records(tmp_path: Path) -> None:
    rule = path_rule([str(tmp_path)])
    (tmp_path / "f").write_bytes(b"abc")
    os.symlink("f", tmp_path / "l")
    states = scan((rule,)).states
    file, link = states[str(tmp_path / "f")], states[str(tmp_path / "l")]
    directory = states[str(tmp_path)]
    assert file.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert (file.size, file.nlink, file.type) == (3, 1, "file")
    assert (link.type, link.link, link.sha256, link.size, link.mode) == (
        "symlink", "f", None, None, None)
    assert (directory.type, directory.size, directory.mtime_ns, directory.nlink) == (
        "dir", None, None, None)


def test_rule_attributes_limit_the_record(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    rule = Rule(name="r", paths=(str(tmp_path),),
                attributes=frozenset({Attribute.TYPE, Attribute.CTIME, Attribute.MODE}))
    state = record(str(tmp_path / "f"), rule)
    assert state is not None
    assert (state.mode, state.sha256, state.size, state.uid) == (0o644 & ~_umask_bits(), None,
                                                                 None, None)


def _umask_bits() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_symlink_root_is_not_followed(tmp_path: Path) -> None:
    _tree(tmp_path / "real", files=5)
    os.symlink("real", tmp_path / "alias")
    states = scan((path_rule([str(tmp_path / "alias")]),)).states
    assert list(states) == [str(tmp_path / "alias")]


def test_pseudo_file_systems_are_not_entered() -> None:
    assert scan((path_rule(["/proc"]),)).states == {}


def test_nested_root_belongs_to_its_own_rule(tmp_path: Path) -> None:
    _tree(tmp_path, files=14)
    outer = Rule(name="outer", paths=(str(tmp_path),))
    inner = Rule(name="inner", paths=(str(tmp_path / "d1"),), suspicious=True)
    made = scan((outer, inner))
    assert made.rule_for(str(tmp_path / "d1" / "f1")).name == "inner"
    assert made.rule_for(str(tmp_path / "d1")).name == "inner"
    assert made.rule_for(str(tmp_path / "d2" / "f2")).name == "outer"


def test_acl_is_recorded_as_text(tmp_path: Path) -> None:
    if shutil.which("setfacl") is None:
        pytest.skip("setfacl (package acl) is not installed")
    (tmp_path / "f").write_bytes(b"x")
    done = subprocess.run(["setfacl", "-m", "u:1234:r", str(tmp_path / "f")],
                          capture_output=True, check=False)
    if done.returncode:
        pytest.skip(f"no POSIX ACLs on this file system: {done.stderr!r}")
    state = record(str(tmp_path / "f"), path_rule([str(tmp_path)]))
    assert state is not None and state.acl is not None
    assert "u:1234:r--" in state.acl and state.acl.startswith("access:")


def test_store_round_trip(tmp_path: Path) -> None:
    rules = (path_rule([str(_tree(tmp_path / "t", files=20))]),)
    made = scan(rules)
    store = BaselineStore(tmp_path / "state")
    store.save(made)
    loaded = store.load()
    assert loaded.states == made.states and loaded.rules == rules
    assert loaded.rule_of == made.rule_of


def test_tampered_store_is_refused(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path / "state")
    store.save(scan((path_rule([str(_tree(tmp_path / "t", files=5))]),)))
    blob = bytearray(store.path.read_bytes())
    blob[len(blob) // 2] ^= 0x20
    store.path.write_bytes(bytes(blob))
    with pytest.raises(BaselineTampered, match="signature does not match"):
        store.load()


def test_missing_store_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="yoroi integrity baseline"):
        BaselineStore(tmp_path).load()


def test_blake3_baseline_detects_a_content_change(tmp_path: Path) -> None:
    import blake3

    from yoroi.modules.integrity.baseline import scan
    from yoroi.modules.integrity.rules import path_rule

    target = tmp_path / "site"
    target.mkdir()
    page = target / "index.html"
    page.write_text("hello")
    rule = path_rule([str(target)], "blake3")
    before = scan((rule,))
    assert before.states[str(page)].blake3 == blake3.blake3(b"hello").hexdigest()
    assert before.states[str(page)].sha256 is None
    page.write_text("hellO")
    after = scan((rule,))
    assert after.states[str(page)].blake3 == blake3.blake3(b"hellO").hexdigest()
