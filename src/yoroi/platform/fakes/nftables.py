"""In-memory nftables for unit tests of the firewall module.

:class:`FakeNftables` implements :class:`~yoroi.platform.linux.nftables.NftablesBackend` without a
kernel. It keeps tables with their chains (and rules), sets and maps (and elements), and applies
the JSON commands the real :class:`~yoroi.platform.linux.nftables.Nftables` takes::

    nft = FakeNftables()
    nft.apply([{"add": {"table": {"family": "inet", "name": "yoroi"}}}, ...])
    nft.list_table("inet", "yoroi")      # {"nftables": [metainfo, table, sets, chains, rules]}
    nft.transactions                     # every batch applied, in order

What it models, as the kernel does: ``add`` (idempotent for tables, chains, sets and maps),
``create`` (refuses what exists), ``insert``, ``replace`` and ``delete`` of rules by handle,
``delete`` of tables, chains (with their rules; refused while a rule jumps to them), sets,
maps and elements, ``flush`` of the ruleset, a table (its rules only, as nft 1.0 does), a
chain, a set or a map. ``tests/platform/linux/test_nftables.py`` checks that the twin and the
kernel agree on these.
Each batch is atomic: it is applied to a copy that replaces the state only when every command
succeeded; a refusal raises :class:`~yoroi.platform.linux.nftables.NftablesError` with the index
of the failing command and the kernel's words ("No such file or directory", "File exists").
Handles are numbered per table like the kernel's, and agree with them as long as no batch is
refused (the kernel spends handles on refused batches and on checks; the fake does not), so
tests should read handles back from a listing rather than predict them.

What it does not: expressions are stored as given, never validated or normalised (the real nft
may print a rule back in a different but equivalent form), and objects other than the above
(counters, quotas, flowtables...) are refused. Use :meth:`FakeNftables.refuse_next` to make the
next transaction fail, for testing error paths.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from yoroi.platform.linux.nftables import (
    Command,
    Commands,
    NftablesError,
    Ruleset,
    batch,
)

FAKE_VERSION = "1.0.6"
_METAINFO = {"metainfo": {"version": FAKE_VERSION, "json_schema_version": 1}}
_VERBS = ("add", "create", "insert", "replace", "delete", "flush")
_NOENT = "No such file or directory"
_EXISTS = "File exists"
_BUSY = "Device or resource busy"


class _Refusal(Exception):
    """Raised inside a transaction; turned into NftablesError with the command index."""


@dataclass
class _Set:
    spec: dict[str, Any]
    elements: dict[str, Any] = field(default_factory=dict)  # JSON key -> element, in order


@dataclass
class _Chain:
    spec: dict[str, Any]
    rules: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Table:
    spec: dict[str, Any]
    sets: dict[str, _Set] = field(default_factory=dict)
    maps: dict[str, _Set] = field(default_factory=dict)
    chains: dict[str, _Chain] = field(default_factory=dict)
    next_handle: int = 1

    def handle(self) -> int:
        self.next_handle += 1
        return self.next_handle - 1


_State = dict[tuple[str, str], _Table]
_Handler = Callable[[_State, dict[str, Any]], None]


class FakeNftables:
    """An in-memory nftables ruleset with the interface of the real ``Nftables``."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.transactions: list[list[Command]] = []
        self._tables: _State = {}
        self._table_handles = 0
        self._refusal: str | None = None

    def apply(self, commands: Commands) -> None:
        """Apply the batch atomically; raise ``NftablesError`` and change nothing on refusal."""
        commands = batch(commands)
        self._tables = self._run(commands)
        self.transactions.append(commands)

    def check(self, commands: Commands) -> None:
        """Validate the batch as :meth:`apply` would, changing nothing."""
        self._run(batch(commands))

    def list_table(self, family: str, name: str) -> Ruleset | None:
        """The table as nft would list it, or None when absent."""
        table = self._tables.get((family, name))
        return None if table is None else {"nftables": [_METAINFO, *_listing(table)]}

    def list_ruleset(self) -> Ruleset:
        """Every table, in creation order."""
        items = [item for table in self._tables.values() for item in _listing(table)]
        return {"nftables": [_METAINFO, *items]}

    def version(self) -> str:
        """The nftables version this fake imitates."""
        return FAKE_VERSION

    def refuse_next(self, message: str = "Operation not supported") -> None:
        """Make the next :meth:`apply` or :meth:`check` fail with ``message``."""
        self._refusal = message

    def _run(self, commands: list[Command]) -> _State:
        if self._refusal is not None:
            message, self._refusal = self._refusal, None
            raise NftablesError(f"nft refused the batch: {message}", errors=[message])
        state = copy.deepcopy(self._tables)
        for index, command in enumerate(commands):
            try:
                self._execute(state, command)
            except _Refusal as exc:
                raise NftablesError(
                    f"nft refused the batch at command {index} of {len(commands)}: {exc}",
                    errors=[str(exc)],
                    index=index,
                    command=command,
                ) from None
        return state

    def _execute(self, state: _State, command: Mapping[str, Any]) -> None:
        verb, body = _split(command)
        if len(body) != 1:
            raise _Refusal(f"a {verb} command takes exactly one object, got {sorted(body)}")
        ((kind, spec),) = body.items()
        if verb in ("add", "create") and kind == "table":
            self._add_table(state, dict(spec or {}), create=verb == "create")
            return
        handler = _HANDLERS.get((verb, kind))
        if handler is None:
            raise _Refusal(f"FakeNftables does not model {verb} {kind}")
        handler(state, dict(spec or {}))

    def _add_table(self, state: _State, spec: dict[str, Any], *, create: bool) -> None:
        key = (spec.get("family", "ip"), _need(spec, "name"))
        if key in state:
            if create:
                raise _Refusal(f"Could not process rule: {_EXISTS}")
            return
        self._table_handles += 1
        state[key] = _Table({"family": key[0], "name": key[1], "handle": self._table_handles})


def _split(command: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """(verb, {kind: spec}); a bare object such as ``{"table": {...}}`` means ``add``."""
    if len(command) == 1:
        ((verb, body),) = command.items()
        if verb in _VERBS:
            if not isinstance(body, Mapping):
                raise _Refusal(f"{verb} needs an object, got {body!r}")
            return verb, body
    return "add", command


def _need(spec: Mapping[str, Any], key: str) -> Any:
    if key not in spec:
        raise _Refusal(f"Object is missing the '{key}' property")
    return spec[key]


def _table(state: _State, spec: Mapping[str, Any], key: str = "table") -> _Table:
    table = state.get((spec.get("family", "ip"), _need(spec, key)))
    if table is None:
        raise _Refusal(f"Could not process rule: {_NOENT}")
    return table


def _member(container: Mapping[str, Any], name: str) -> Any:
    if name not in container:
        raise _Refusal(f"Could not process rule: {_NOENT}")
    return container[name]


def _add_chain(state: _State, spec: dict[str, Any], *, create: bool = False) -> None:
    table = _table(state, spec)
    name = _need(spec, "name")
    if name in table.chains:
        if create:
            raise _Refusal(f"Could not process rule: {_EXISTS}")
        return
    table.chains[name] = _Chain({**spec, "handle": table.handle()})


def _add_set(state: _State, spec: dict[str, Any], *, kind: str, create: bool = False) -> None:
    table = _table(state, spec)
    store = table.maps if kind == "map" else table.sets
    name = _need(spec, "name")
    if name in store:
        if create:
            raise _Refusal(f"Could not process rule: {_EXISTS}")
        return
    elements = spec.pop("elem", [])
    store[name] = _Set({**spec, "handle": table.handle()})
    _add_elements(store[name], elements)


def _find_set(state: _State, spec: Mapping[str, Any]) -> _Set:
    table = _table(state, spec)
    name = _need(spec, "name")
    found = table.sets.get(name) or table.maps.get(name)
    if found is None:
        raise _Refusal(f"Could not process rule: {_NOENT}")
    return found


def _key(element: Any) -> str:
    # A map element is [key, value]; its identity is the key alone.
    if isinstance(element, list) and len(element) == 2:
        element = element[0]
    return json.dumps(element, sort_keys=True)


def _add_elements(target: _Set, elements: Any) -> None:
    for element in elements if isinstance(elements, list) else [elements]:
        target.elements[_key(element)] = element


def _add_element(state: _State, spec: dict[str, Any]) -> None:
    _add_elements(_find_set(state, spec), _need(spec, "elem"))


def _delete_element(state: _State, spec: dict[str, Any]) -> None:
    target = _find_set(state, spec)
    elements = _need(spec, "elem")
    for element in elements if isinstance(elements, list) else [elements]:
        if target.elements.pop(_key(element), None) is None:
            raise _Refusal(f"Could not process rule: {_NOENT}")


def _find_rule(chain: _Chain, handle: Any) -> int:
    for position, rule in enumerate(chain.rules):
        if rule["handle"] == handle:
            return position
    raise _Refusal(f"Could not process rule: {_NOENT}")


def _rule_position(chain: _Chain, spec: Mapping[str, Any]) -> int | None:
    """Index of the rule named by ``handle`` (or ``index``), or None when neither is given."""
    if "handle" in spec:
        return _find_rule(chain, spec["handle"])
    if "index" in spec:
        if not 0 <= spec["index"] < len(chain.rules):
            raise _Refusal(f"Could not process rule: {_NOENT}")
        return int(spec["index"])
    return None


def _place_rule(state: _State, spec: dict[str, Any], *, before: bool) -> None:
    table = _table(state, spec)
    chain: _Chain = _member(table.chains, _need(spec, "chain"))
    position = _rule_position(chain, spec)
    rule = {k: v for k, v in spec.items() if k not in ("handle", "index")}
    rule["handle"] = table.handle()
    if position is None:
        position = 0 if before else len(chain.rules)
    elif not before:
        position += 1
    chain.rules.insert(position, rule)


def _replace_rule(state: _State, spec: dict[str, Any]) -> None:
    table = _table(state, spec)
    chain: _Chain = _member(table.chains, _need(spec, "chain"))
    chain.rules[_find_rule(chain, _need(spec, "handle"))] = {**spec}


def _delete_rule(state: _State, spec: dict[str, Any]) -> None:
    table = _table(state, spec)
    chain: _Chain = _member(table.chains, _need(spec, "chain"))
    del chain.rules[_find_rule(chain, _need(spec, "handle"))]


def _delete_table(state: _State, spec: dict[str, Any]) -> None:
    table = _table(state, spec, key="name")
    del state[(table.spec["family"], table.spec["name"])]


def _jumps_to(value: Any, name: str) -> bool:
    """Whether a rule's expressions contain a jump or goto to chain ``name``."""
    if isinstance(value, dict):
        for verdict in ("jump", "goto"):
            target = value.get(verdict)
            if isinstance(target, dict) and target.get("target") == name:
                return True
        return any(_jumps_to(v, name) for v in value.values())
    if isinstance(value, list):
        return any(_jumps_to(v, name) for v in value)
    return False


def _delete_chain(state: _State, spec: dict[str, Any]) -> None:
    table = _table(state, spec)
    name = _need(spec, "name")
    _member(table.chains, name)
    rules = (rule for chain in table.chains.values() for rule in chain.rules)
    if any(_jumps_to(rule.get("expr"), name) for rule in rules):
        raise _Refusal(f"Could not process rule: {_BUSY}")
    del table.chains[name]


def _delete_set(state: _State, spec: dict[str, Any], *, kind: str) -> None:
    table = _table(state, spec)
    store = table.maps if kind == "map" else table.sets
    _member(store, _need(spec, "name"))
    del store[spec["name"]]


def _flush_ruleset(state: _State, spec: dict[str, Any]) -> None:
    state.clear()


def _flush_table(state: _State, spec: dict[str, Any]) -> None:
    for chain in _table(state, spec, key="name").chains.values():
        chain.rules.clear()


def _flush_chain(state: _State, spec: dict[str, Any]) -> None:
    _member(_table(state, spec).chains, _need(spec, "name")).rules.clear()


def _flush_set(state: _State, spec: dict[str, Any]) -> None:
    _find_set(state, spec).elements.clear()


_HANDLERS: dict[tuple[str, str], _Handler] = {
    ("add", "chain"): _add_chain,
    ("create", "chain"): lambda s, spec: _add_chain(s, spec, create=True),
    ("add", "set"): lambda s, spec: _add_set(s, spec, kind="set"),
    ("create", "set"): lambda s, spec: _add_set(s, spec, kind="set", create=True),
    ("add", "map"): lambda s, spec: _add_set(s, spec, kind="map"),
    ("create", "map"): lambda s, spec: _add_set(s, spec, kind="map", create=True),
    ("add", "element"): _add_element,
    ("create", "element"): _add_element,
    ("delete", "element"): _delete_element,
    ("add", "rule"): lambda s, spec: _place_rule(s, spec, before=False),
    ("insert", "rule"): lambda s, spec: _place_rule(s, spec, before=True),
    ("replace", "rule"): _replace_rule,
    ("delete", "rule"): _delete_rule,
    ("delete", "table"): _delete_table,
    ("delete", "chain"): _delete_chain,
    ("delete", "set"): lambda s, spec: _delete_set(s, spec, kind="set"),
    ("delete", "map"): lambda s, spec: _delete_set(s, spec, kind="map"),
    ("flush", "ruleset"): _flush_ruleset,
    ("flush", "table"): _flush_table,
    ("flush", "chain"): _flush_chain,
    ("flush", "set"): _flush_set,
    ("flush", "map"): _flush_set,
}


def _listing(table: _Table) -> list[dict[str, Any]]:
    """The table's objects in nft's listing order: table, sets, maps, chains, rules."""
    family, name = table.spec["family"], table.spec["name"]
    where = {"family": family, "table": name}
    items: list[dict[str, Any]] = [{"table": dict(table.spec)}]
    for kind, store in (("set", table.sets), ("map", table.maps)):
        for entry in store.values():
            body = {**entry.spec, **where}
            if entry.elements:
                body["elem"] = list(entry.elements.values())
            items.append({kind: body})
    items += [{"chain": {**chain.spec, **where}} for chain in table.chains.values()]
    for chain in table.chains.values():
        items += [{"rule": {**rule, **where}} for rule in chain.rules]
    return copy.deepcopy(items)
