"""The ledger turns a family's file events into what must be put back and removed."""

from __future__ import annotations

from yoroi.modules.behavior.ledger import Ledger
from yoroi.modules.behavior.types import Activity, FileEvent


def ev(activity: Activity, path: str, pid: int = 10, old: str | None = None) -> FileEvent:
    return FileEvent(activity, path, pid, 0.0, old)


def test_in_place_overwrite_and_note() -> None:
    ledger = Ledger()
    for name in ("a.txt", "b.txt"):
        ledger.record(ev(Activity.WRITE, f"/d/{name}"))
    ledger.record(ev(Activity.CREATE, "/d/README.txt"))
    ledger.record(ev(Activity.WRITE, "/d/README.txt"))
    damage = ledger.damage({10})
    assert damage.changed == {"/d/a.txt", "/d/b.txt"}
    assert damage.created == {"/d/README.txt"}
    assert damage.touched == 2


def test_new_file_then_delete() -> None:
    ledger = Ledger()
    ledger.record(ev(Activity.CREATE, "/d/a.txt.locked"))
    ledger.record(ev(Activity.WRITE, "/d/a.txt.locked"))
    ledger.record(ev(Activity.DELETE, "/d/a.txt"))
    damage = ledger.damage({10})
    assert damage.created == {"/d/a.txt.locked"}
    assert damage.deleted == {"/d/a.txt"}
    assert damage.changed == set()


def test_rename_then_encrypt_goes_back_to_the_old_name() -> None:
    ledger = Ledger()
    ledger.record(ev(Activity.RENAME, "/d/a.txt.locked", old="/d/a.txt"))
    ledger.record(ev(Activity.WRITE, "/d/a.txt.locked"))
    damage = ledger.damage({10})
    assert damage.deleted == {"/d/a.txt"}
    assert damage.created == {"/d/a.txt.locked"}
    assert damage.original("/d/a.txt.locked") == "/d/a.txt"
    assert damage.touched == 1


def test_chain_of_renames_keeps_the_first_name() -> None:
    ledger = Ledger()
    ledger.record(ev(Activity.RENAME, "/d/tmp1", old="/d/a.txt"))
    ledger.record(ev(Activity.RENAME, "/d/a.txt.enc", old="/d/tmp1"))
    damage = ledger.damage({10})
    assert damage.original("/d/a.txt.enc") == "/d/a.txt"
    assert damage.created == {"/d/a.txt.enc"}
    assert damage.deleted == {"/d/a.txt"}


def test_own_temporary_files_leave_no_trace() -> None:
    ledger = Ledger()
    ledger.record(ev(Activity.CREATE, "/d/.tmp123"))
    ledger.record(ev(Activity.WRITE, "/d/.tmp123"))
    ledger.record(ev(Activity.DELETE, "/d/.tmp123"))
    damage = ledger.damage({10})
    assert damage.created == set() and damage.deleted == set() and damage.changed == set()


def test_families_are_separate_and_can_be_forgotten() -> None:
    ledger = Ledger()
    ledger.record(ev(Activity.WRITE, "/d/a", pid=10))
    ledger.record(ev(Activity.WRITE, "/d/b", pid=11))
    ledger.record(ev(Activity.WRITE, "/d/c", pid=12))
    assert ledger.damage({10, 11}).changed == {"/d/a", "/d/b"}
    ledger.forget({10})
    assert ledger.damage({10, 11}).changed == {"/d/b"}
    assert ledger.pids() == {11, 12}
