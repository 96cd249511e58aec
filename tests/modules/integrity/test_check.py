"""Checks: a baseline, then an exact churn, reported exactly — every change and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from yoroi.modules.integrity.baseline import BaselineStore, record, scan
from yoroi.modules.integrity.check import accept, accept_all, check, compare
from yoroi.modules.integrity.rules import Rule, path_rule
from yoroi.modules.integrity.types import ChangeKind, FileChange

OLD = 1_600_000_000_000_000_000  # ns; every file starts this old, so any write moves mtime


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(OLD, OLD))


def make_tree(root: Path) -> Path:
    """The files the churn will touch, all with an old mtime."""
    root.mkdir()
    for name, data in [("restored", b"hello world"), ("samesize", b"aaaa"), ("chmod", b"m"),
                       ("chown", b"o"), ("xattr", b"x"), ("renamed", b"r"), ("linked", b"l"),
                       ("deleted", b"d"), ("truncated", b"0123456789"), ("a", b"A"),
                       ("b", b"B"), ("quiet", b"untouched")]:
        _write(root / name, data)
    (root / "chmod").chmod(0o644)
    os.symlink("a", root / "sym")
    return root


def churn(root: Path) -> set[tuple[str, str, tuple[str, ...]]]:
    """Apply every kind of change once; return what a check must report, exactly."""
    restored = root / "restored"
    before = os.stat(restored)
    restored.write_bytes(b"HELLO world")  # same size, then the mtime put back
    os.utime(restored, ns=(before.st_atime_ns, before.st_mtime_ns))
    (root / "samesize").write_bytes(b"bbbb")
    (root / "chmod").chmod(0o600)
    os.chown(root / "chown", 1234, 5678)
    os.setxattr(root / "xattr", "user.yoroi", b"set")
    os.rename(root / "renamed", root / "renamed-to")
    os.link(root / "linked", root / "linked-too")
    (root / "deleted").unlink()
    (root / "created").write_bytes(b"new")
    os.symlink("b", root / "sym.new")  # made before the old one goes: a new inode for sure
    os.rename(root / "sym.new", root / "sym")
    os.truncate(root / "truncated", 4)
    (root / "quiet").chmod(0o644)  # same mode again: only ctime moves, nothing to report
    os.stat(root / "quiet")  # and a read: atime is never reported
    return {
        ("restored", "modified", ("sha256",)),
        ("samesize", "modified", ("sha256", "mtime")),
        ("chmod", "modified", ("mode",)),
        ("chown", "modified", ("uid", "gid")),
        ("xattr", "modified", ("xattrs",)),
        ("renamed", "removed", ()),
        ("renamed-to", "added", ()),
        ("linked", "modified", ("nlink",)),
        ("linked-too", "added", ()),
        ("deleted", "removed", ()),
        ("created", "added", ()),
        ("sym", "modified", ("inode", "link")),
        ("truncated", "modified", ("sha256", "size", "mtime")),
    }


def _seen(root: Path, changes: list[FileChange]) -> set[tuple[str, str, tuple[str, ...]]]:
    return {(os.path.relpath(c.path, root), c.kind.value, c.attributes) for c in changes}


def _needs_root_and_xattrs(root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    try:
        os.setxattr(root, "user.probe", b"1")
        os.removexattr(root, "user.probe")
    except OSError as exc:
        pytest.skip(f"user xattrs unsupported here: {exc}")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = make_tree(tmp_path / "tree")
    _needs_root_and_xattrs(root)
    return root


@pytest.fixture
def store(tmp_path: Path) -> BaselineStore:
    return BaselineStore(tmp_path / "state" / "integrity")


def _baseline(store: BaselineStore, rule: Rule, skip_hash: bool = False) -> None:
    made = scan((rule,))
    made.skip_hash_if_unchanged = skip_hash
    store.save(made)


@pytest.mark.parametrize("skip_hash", [False, True], ids=["hash-always", "skip-if-unchanged"])
def test_exact_churn_reported_exactly(tree: Path, store: BaselineStore, skip_hash: bool) -> None:
    # With skip_hash_if_unchanged the restored mtime is still caught: ctime moved.
    _baseline(store, path_rule([str(tree)]), skip_hash)
    expected = churn(tree)
    report = check(store, jobs=2)
    assert _seen(tree, report.changes) == expected
    assert len(report.changes) == len(expected)


def test_rename_is_paired_by_inode(tree: Path, store: BaselineStore) -> None:
    _baseline(store, path_rule([str(tree)]))
    churn(tree)
    changes = {c.path: c for c in check(store).changes}
    gone, came = changes[str(tree / "renamed")], changes[str(tree / "renamed-to")]
    assert gone.after is not None and gone.after.path == came.path
    assert came.before is not None and came.before.path == gone.path
    for lone in ("deleted", "created", "linked-too"):  # not renames: nothing paired
        change = changes[str(tree / lone)]
        assert (change.before if change.kind is ChangeKind.ADDED else change.after) is None


def test_no_change_no_report(tree: Path, store: BaselineStore) -> None:
    _baseline(store, path_rule([str(tree)]))
    assert check(store).changes == []


def test_suspicious_rules_mark_their_changes(tree: Path, store: BaselineStore) -> None:
    rule = Rule(name="web", paths=(str(tree),), suspicious=True)
    _baseline(store, rule)
    (tree / "a").write_bytes(b"changed")
    report = check(store)
    assert [report.suspicious(c) for c in report.changes] == [True]
    assert report.rule_of(report.changes[0]).name == "web"


def test_accept_path_moves_that_path_forward(tree: Path, store: BaselineStore) -> None:
    _baseline(store, path_rule([str(tree)]))
    churn(tree)
    accept(store, [str(tree / "samesize"), str(tree / "deleted"), str(tree / "created")])
    left = {os.path.relpath(c.path, tree) for c in check(store).changes}
    assert {"samesize", "deleted", "created"}.isdisjoint(left)
    assert "truncated" in left


def test_accept_all_moves_everything_forward(tree: Path, store: BaselineStore) -> None:
    _baseline(store, path_rule([str(tree)]))
    expected = churn(tree)
    assert accept_all(store) == len(expected)
    assert check(store).changes == []


def test_hash_reused_only_when_metadata_matches(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"content")
    rule = path_rule([str(path)])
    old = record(str(path), rule)
    assert old is not None
    forged = type(old)(**{**old.__dict__, "sha256": "0" * 64})
    assert record(str(path), rule, reuse=forged).sha256 == "0" * 64  # type: ignore[union-attr]
    path.chmod(0o600)  # ctime moves: the hash is computed again
    assert record(str(path), rule, reuse=forged).sha256 == old.sha256  # type: ignore[union-attr]


def test_compare_is_pure_and_ignores_ctime(tree: Path) -> None:
    rule = path_rule([str(tree)])
    first = scan((rule,))
    (tree / "quiet").chmod(0o644)
    assert compare(first, scan((rule,))) == []
