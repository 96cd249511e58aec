"""The in-memory nftables twin: the behaviour the firewall module's unit tests rely on."""

from __future__ import annotations

from typing import Any

import pytest

from yoroi.platform.fakes.nftables import FakeNftables
from yoroi.platform.linux.nftables import NftablesBackend, NftablesError, objects

T = {"family": "inet", "table": "yoroi"}
TABLE = {"add": {"table": {"family": "inet", "name": "yoroi"}}}
CHAIN = {"add": {"chain": {**T, "name": "input", "type": "filter", "hook": "input", "prio": 0}}}
SET = {"add": {"set": {**T, "name": "banned", "type": "ipv4_addr"}}}
DROP = [{"drop": None}]


def rule(chain: str = "input", comment: str = "r", **extra: Any) -> dict[str, Any]:
    return {"add": {"rule": {**T, "chain": chain, "expr": DROP, "comment": comment, **extra}}}


def comments(nft: FakeNftables) -> list[str]:
    return [r["comment"] for r in objects(nft.list_table("inet", "yoroi"), "rule")]


def elements(nft: FakeNftables, name: str = "banned") -> list[Any]:
    listing = nft.list_table("inet", "yoroi")
    return next(s.get("elem", []) for s in objects(listing, "set") if s["name"] == name)


@pytest.fixture
def nft() -> FakeNftables:
    fake = FakeNftables()
    fake.apply([TABLE, CHAIN, SET])
    return fake


def test_is_a_backend() -> None:
    assert isinstance(FakeNftables(), NftablesBackend)


def test_lists_what_was_applied_in_nft_order(nft: FakeNftables) -> None:
    nft.apply([rule(), {"add": {"element": {**T, "name": "banned", "elem": ["192.0.2.1"]}}}])
    listing = nft.list_table("inet", "yoroi")
    assert listing is not None
    kinds = [next(k for k in item if k != "metainfo") for item in listing["nftables"][1:]]
    assert kinds == ["table", "set", "chain", "rule"]
    (chain,) = objects(listing, "chain")
    assert chain["hook"] == "input" and isinstance(chain["handle"], int)
    assert elements(nft) == ["192.0.2.1"]
    assert objects(nft.list_ruleset(), "table")[0]["name"] == "yoroi"


def test_absent_table_is_none() -> None:
    assert FakeNftables().list_table("inet", "yoroi") is None


def test_a_refused_batch_changes_nothing(nft: FakeNftables) -> None:
    before = nft.list_table("inet", "yoroi")
    with pytest.raises(NftablesError) as caught:
        nft.apply([rule(), rule(chain="missing")])
    assert caught.value.index == 1
    assert "No such file or directory" in str(caught.value)
    assert nft.list_table("inet", "yoroi") == before
    assert len(nft.transactions) == 1


def test_add_is_idempotent_create_is_not(nft: FakeNftables) -> None:
    nft.apply([TABLE, CHAIN, SET])
    with pytest.raises(NftablesError, match="File exists"):
        nft.apply({"create": TABLE["add"]})


def test_delete_table_and_missing_table(nft: FakeNftables) -> None:
    nft.apply({"delete": {"table": {"family": "inet", "name": "yoroi"}}})
    assert nft.list_table("inet", "yoroi") is None
    with pytest.raises(NftablesError, match="No such file"):
        nft.apply({"delete": {"table": {"family": "inet", "name": "yoroi"}}})


def test_flush_table_empties_chains_but_keeps_sets(nft: FakeNftables) -> None:
    nft.apply([rule(), {"add": {"element": {**T, "name": "banned", "elem": ["192.0.2.1"]}}}])
    nft.apply({"flush": {"table": {"family": "inet", "name": "yoroi"}}})
    assert comments(nft) == []
    assert elements(nft) == ["192.0.2.1"]


def test_flush_ruleset_removes_everything(nft: FakeNftables) -> None:
    nft.apply({"flush": {"ruleset": None}})
    assert nft.list_ruleset()["nftables"][1:] == []


def test_elements_add_once_and_delete(nft: FakeNftables) -> None:
    add = {"add": {"element": {**T, "name": "banned", "elem": ["192.0.2.1", "192.0.2.2"]}}}
    nft.apply([add, add])
    assert elements(nft) == ["192.0.2.1", "192.0.2.2"]
    nft.apply({"delete": {"element": {**T, "name": "banned", "elem": ["192.0.2.1"]}}})
    assert elements(nft) == ["192.0.2.2"]
    with pytest.raises(NftablesError):
        nft.apply({"delete": {"element": {**T, "name": "banned", "elem": ["192.0.2.1"]}}})
    nft.apply({"flush": {"set": {**T, "name": "banned"}}})
    assert elements(nft) == []


def test_rules_insert_replace_delete_by_handle(nft: FakeNftables) -> None:
    nft.apply([rule(comment="b"), {"insert": rule(comment="a")["add"]}])
    assert comments(nft) == ["a", "b"]
    handle = objects(nft.list_table("inet", "yoroi"), "rule")[1]["handle"]
    nft.apply(rule(comment="c", handle=handle))  # add after handle
    assert comments(nft) == ["a", "b", "c"]
    nft.apply({"replace": {"rule": {**T, "chain": "input", "handle": handle, "comment": "B"}}})
    assert comments(nft) == ["a", "B", "c"]
    nft.apply({"delete": {"rule": {**T, "chain": "input", "handle": handle}}})
    assert comments(nft) == ["a", "c"]


def test_deleting_a_chain_takes_its_rules_unless_jumped_to(nft: FakeNftables) -> None:
    other = {"add": {"chain": {**T, "name": "other"}}}
    jump = {"add": {"rule": {**T, "chain": "input", "expr": [{"jump": {"target": "other"}}]}}}
    nft.apply([other, rule(chain="other"), jump])
    delete = {"delete": {"chain": {**T, "name": "other"}}}
    with pytest.raises(NftablesError, match="busy"):
        nft.apply(delete)
    nft.apply([{"flush": {"chain": {**T, "name": "input"}}}, delete])
    assert [c["name"] for c in objects(nft.list_table("inet", "yoroi"), "chain")] == ["input"]


def test_maps_hold_key_value_pairs(nft: FakeNftables) -> None:
    add_map = {"add": {"map": {**T, "name": "ports", "type": "inet_service", "map": "verdict"}}}
    pair = [22, {"accept": None}]
    nft.apply([add_map, {"add": {"element": {**T, "name": "ports", "elem": [pair]}}}])
    (ports,) = objects(nft.list_table("inet", "yoroi"), "map")
    assert ports["elem"] == [pair]


def test_check_changes_nothing(nft: FakeNftables) -> None:
    before = nft.list_ruleset()
    nft.check([rule()])
    with pytest.raises(NftablesError):
        nft.check([rule(chain="missing")])
    assert nft.list_ruleset() == before


def test_refuse_next_fails_once(nft: FakeNftables) -> None:
    nft.refuse_next("Operation not supported")
    with pytest.raises(NftablesError, match="not supported"):
        nft.apply(rule())
    nft.apply(rule())
    assert comments(nft) == ["r"]


def test_unmodelled_objects_are_refused(nft: FakeNftables) -> None:
    with pytest.raises(NftablesError, match="does not model"):
        nft.apply({"add": {"counter": {**T, "name": "c"}}})


def test_listing_is_a_copy(nft: FakeNftables) -> None:
    listing = nft.list_table("inet", "yoroi")
    objects(listing, "chain")[0]["name"] = "changed"
    assert objects(nft.list_table("inet", "yoroi"), "chain")[0]["name"] == "input"
