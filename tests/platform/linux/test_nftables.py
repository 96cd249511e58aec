"""The nftables adapter against the real kernel, only ever inside throw-away network namespaces."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from yoroi.errors import PermissionDenied, PlatformError, Unsupported
from yoroi.platform.fakes.nftables import FakeNftables
from yoroi.platform.linux.netns import NetNamespace
from yoroi.platform.linux.nftables import (
    IP_HINT,
    NFT_HINT,
    Nftables,
    NftablesBackend,
    NftablesError,
    find_tool,
    objects,
)


def _missing_facility() -> str | None:
    if os.geteuid() != 0:
        return "nftables and network namespaces need root"
    try:
        find_tool("nft", NFT_HINT)
        find_tool("ip", IP_HINT)
    except Unsupported as exc:
        return str(exc)
    return None


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(_missing_facility() is not None, reason=str(_missing_facility())),
]

T = {"family": "inet", "table": "yoroi"}
TABLE = {"add": {"table": {"family": "inet", "name": "yoroi"}}}
BASE_CHAIN = {"type": "filter", "hook": "input", "prio": 0, "policy": "accept"}
CHAIN = {"add": {"chain": {**T, "name": "input", **BASE_CHAIN}}}
SET = {"add": {"set": {**T, "name": "banned", "type": "ipv4_addr", "flags": ["interval"]}}}
ELEMENTS = {"add": {"element": {**T, "name": "banned", "elem": ["192.0.2.7"]}}}
SADDR = {"payload": {"protocol": "ip", "field": "saddr"}}
DROP_BANNED = [{"match": {"op": "==", "left": SADDR, "right": "@banned"}}, {"drop": None}]
RULE = {"add": {"rule": {**T, "chain": "input", "expr": DROP_BANNED}}}


def _host_ruleset() -> bytes:
    nft = find_tool("nft", NFT_HINT)
    return subprocess.run([nft, "-j", "list", "ruleset"], capture_output=True, check=True).stdout


@pytest.fixture(scope="module", autouse=True)
def host_ruleset_untouched() -> Iterator[None]:
    """Everything here runs in namespaces: the host's own ruleset must not change one byte."""
    before = _host_ruleset()
    yield
    assert _host_ruleset() == before, "the host's nftables ruleset changed during the tests"


@pytest.fixture
def nft() -> Iterator[Nftables]:
    with NetNamespace() as namespace:
        yield Nftables(netns=namespace.name)


def _names(listing: dict[str, Any] | None, kind: str) -> list[str]:
    return [item["name"] for item in objects(listing, kind)]


def test_is_a_backend(nft: Nftables) -> None:
    assert isinstance(nft, NftablesBackend)


def test_version_is_dotted(nft: Nftables) -> None:
    major, *_ = nft.version().split(".")
    assert major.isdigit()


def test_apply_then_read_back(nft: Nftables) -> None:
    nft.apply([TABLE, CHAIN, SET, ELEMENTS, RULE])

    listing = nft.list_table("inet", "yoroi")
    assert _names(listing, "table") == ["yoroi"]
    assert _names(listing, "chain") == ["input"]
    (banned,) = objects(listing, "set")
    assert banned["name"] == "banned" and banned["elem"] == ["192.0.2.7"]
    (rule,) = objects(listing, "rule")
    assert rule["chain"] == "input"
    assert rule["expr"] == DROP_BANNED
    assert _names(nft.list_ruleset(), "table") == ["yoroi"]


def test_absent_table_lists_as_none(nft: Nftables) -> None:
    assert nft.list_table("inet", "yoroi") is None
    assert objects(nft.list_ruleset(), "table") == []


def test_hostile_table_name_is_only_a_name(nft: Nftables) -> None:
    nft.apply([TABLE])
    assert nft.list_table("inet", "x; flush ruleset") is None
    assert nft.list_table("inet", "yoroi") is not None


def test_refused_batch_applies_nothing(nft: Nftables) -> None:
    nft.apply([TABLE, CHAIN, SET])
    before = nft.list_table("inet", "yoroi")
    orphan = {"add": {"rule": {**T, "chain": "no-such-chain", "expr": [{"drop": None}]}}}
    extra = {"add": {"chain": {**T, "name": "extra"}}}

    with pytest.raises(NftablesError) as caught:
        nft.apply([extra, ELEMENTS, orphan, {"flush": {"table": {**T, "name": "yoroi"}}}])

    assert nft.list_table("inet", "yoroi") == before
    assert caught.value.index == 2
    assert caught.value.command == orphan
    assert "No such file or directory" in str(caught.value)
    assert "no-such-chain" in str(caught.value)


def test_unparsable_command_is_named(nft: Nftables) -> None:
    bogus = {"add": {"rule": {**T, "chain": "input", "expr": [{"bogus": None}]}}}

    with pytest.raises(NftablesError) as caught:
        nft.apply([TABLE, CHAIN, bogus])

    assert caught.value.index == 2
    assert "bogus" in str(caught.value)
    assert nft.list_table("inet", "yoroi") is None


def test_check_applies_nothing(nft: Nftables) -> None:
    nft.check([TABLE, CHAIN, SET, RULE])
    assert nft.list_table("inet", "yoroi") is None

    with pytest.raises(NftablesError):
        nft.check([{"add": {"chain": {**T, "name": "input"}}}])


def test_accepts_a_whole_document_or_one_command(nft: Nftables) -> None:
    nft.apply(TABLE)
    nft.apply({"nftables": [{"metainfo": {"json_schema_version": 1}}, CHAIN]})
    assert _names(nft.list_table("inet", "yoroi"), "chain") == ["input"]


def test_hundred_thousand_set_elements_in_one_apply(nft: Nftables) -> None:
    addresses = [f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(100_000)]
    big = {"add": {"set": {**T, "name": "many", "type": "ipv4_addr", "elem": addresses}}}

    nft.apply([TABLE, big])

    (many,) = objects(nft.list_table("inet", "yoroi"), "set")
    assert len(many["elem"]) == 100_000
    assert set(many["elem"]) == set(addresses)


def test_missing_namespace_is_a_platform_error() -> None:
    with pytest.raises(PlatformError, match="does not exist"):
        Nftables(netns="yoroi-test-never-created").list_ruleset()


def test_missing_tool_names_the_package() -> None:
    with pytest.raises(Unsupported, match="install the nftables package"):
        find_tool("yoroi-no-such-nft", NFT_HINT)


UNPRIVILEGED = """
import sys
from yoroi.errors import PermissionDenied
from yoroi.platform.linux.nftables import Nftables
try:
    Nftables(netns=sys.argv[1]).list_ruleset()
except PermissionDenied as exc:
    print("PermissionDenied", exc)
"""


def test_unprivileged_caller_gets_permission_denied(nft: Nftables) -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*nobody, sys.executable, "-c", "import yoroi"], check=False)
    if probe.returncode != 0:
        pytest.skip("this interpreter or the yoroi sources cannot be run as nobody")
    argv = [*nobody, sys.executable, "-c", UNPRIVILEGED, str(nft.netns)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.stdout.startswith(PermissionDenied.__name__), result.stderr


FLUSH_TABLE = {"flush": {"table": {"family": "inet", "name": "yoroi"}}}
SCENARIOS = {
    "build": [[TABLE, CHAIN, SET, ELEMENTS, RULE]],
    "flush table keeps sets": [[TABLE, CHAIN, SET, ELEMENTS, RULE], [FLUSH_TABLE]],
    "orphan rule": [[TABLE, CHAIN], [SET, {"add": {"rule": {**T, "chain": "x", "expr": []}}}]],
    "after a refusal": [
        [TABLE, CHAIN],
        [SET, {"add": {"rule": {**T, "chain": "x", "expr": []}}}],
        [SET, {"insert": {"rule": {**T, "chain": "input", "expr": DROP_BANNED}}}],
        [RULE, {"add": {"chain": {**T, "name": "later"}}}],
    ],
    "create existing": [[TABLE], [CHAIN, {"create": TABLE["add"]}]],
    "delete chain with rules": [
        [TABLE, CHAIN, SET, RULE],
        [{"delete": {"chain": {**T, "name": "input"}}}],
    ],
    "chain jumped to": [
        [TABLE, CHAIN, {"add": {"chain": {**T, "name": "x"}}}],
        [{"add": {"rule": {**T, "chain": "input", "expr": [{"jump": {"target": "x"}}]}}}],
        [{"delete": {"chain": {**T, "name": "x"}}}],
    ],
    "missing element": [
        [TABLE, SET, ELEMENTS],
        [{"delete": {"element": {**T, "name": "banned", "elem": ["192.0.2.8"]}}}],
    ],
}


def _outcome(backend: NftablesBackend, batches: list[list[dict[str, Any]]]) -> Any:
    """What a user sees: the listing without handles, and where each batch failed."""
    failures = []
    for commands in batches:
        try:
            backend.apply(commands)
        except NftablesError as exc:
            failures.append(exc.index)
    items = backend.list_ruleset()["nftables"]
    listing = [
        {kind: {k: v for k, v in body.items() if k != "handle"}}
        for item in items
        for kind, body in item.items()
        if kind != "metainfo"
    ]
    return listing, failures


@pytest.mark.parametrize("batches", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_fake_twin_agrees_with_the_kernel(
    nft: Nftables, batches: list[list[dict[str, Any]]]
) -> None:
    assert _outcome(FakeNftables(), batches) == _outcome(nft, batches)
