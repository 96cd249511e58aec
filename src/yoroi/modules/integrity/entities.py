"""System entities beyond files: snapshot them, diff two snapshots, store a snapshot.

A snapshot maps each entity kind to its records, each keyed by what identifies it::

    {"user":   {"alice": {"uid": 1000, "shell": "/bin/bash", "password": "set", ...}},
     "port":   {"tcp/0.0.0.0:22": {"pid": 812, "exe": "/usr/sbin/sshd", "user": "root", ...}},
     "suid":   {"/usr/bin/passwd": {"mode": "4755", "uid": 0, "sha256": "...", ...}}, ...}

Usage::

    notices: list[str] = []
    before = snapshot(notices=notices)                    # every kind but "suid" (slow walk)
    after = snapshot(["user", "port"], SnapshotOptions(root=Path("/mnt/image")))
    for change in diff(before, after):                    # EntityChange, sorted by kind, key
        print(change.entity, change.key, change.kind, change.fields)
    Path("entities.json").write_bytes(dumps(before))      # loads() gives the same dict back

Records hold only JSON values (strings, integers, booleans, None, lists, dicts), so a snapshot
survives :func:`dumps`/:func:`loads` unchanged and compares equal afterwards. The collectors
are a string-keyed registry (:data:`COLLECTORS`); a kind missing from either side of a diff is
not compared (it was not collected), which is not the same as an empty kind. Anything a
collector cannot read is skipped and noted in ``notices``; only a bad kind name raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from yoroi.errors import ConfigError
from yoroi.modules.integrity import entities_accounts, entities_host, entities_services
from yoroi.modules.integrity.entities_context import (
    Collector,
    Context,
    Record,
    Records,
    SnapshotOptions,
)
from yoroi.modules.integrity.types import ChangeKind, EntityChange

__all__ = [
    "COLLECTORS", "DEFAULT_KINDS", "FORMAT", "SnapshotOptions", "Snapshot", "diff", "dumps",
    "loads", "snapshot",
]  # fmt: skip

Snapshot = dict[str, Records]
FORMAT = "yoroi-entities/1"
COLLECTORS: dict[str, Collector] = {
    **entities_accounts.COLLECTORS,
    **entities_services.COLLECTORS,
    **entities_host.COLLECTORS,
}
DEFAULT_KINDS = tuple(kind for kind in COLLECTORS if kind != "suid")
# Fields that change without the entity changing: a restarted service listens again from a
# new pid; the port is "modified" only when its program or user differs.
VOLATILE: dict[str, frozenset[str]] = {"port": frozenset({"pid"})}


def snapshot(
    kinds: Iterable[str] | None = None,
    options: SnapshotOptions | None = None,
    notices: list[str] | None = None,
) -> Snapshot:
    """Records of each kind asked for (default :data:`DEFAULT_KINDS`); notices appended."""
    chosen = list(DEFAULT_KINDS if kinds is None else kinds)
    unknown = [kind for kind in chosen if kind not in COLLECTORS]
    if unknown:
        raise ConfigError(
            f"unknown entity kind(s) {', '.join(unknown)}: choose from {', '.join(COLLECTORS)}"
        )
    ctx = Context(options or SnapshotOptions())
    taken = {kind: COLLECTORS[kind](ctx) for kind in chosen}
    if notices is not None:
        notices.extend(ctx.notices)
    return taken


def diff(before: Mapping[str, Mapping[str, Record]], after: Mapping[str, Mapping[str, Record]]
         ) -> list[EntityChange]:  # fmt: skip
    """Added, removed and modified entities of the kinds both snapshots hold."""
    changes: list[EntityChange] = []
    for kind in sorted(set(before) & set(after)):
        changes += _diff_kind(kind, before[kind], after[kind])
    return changes


def _diff_kind(
    kind: str, before: Mapping[str, Record], after: Mapping[str, Record]
) -> list[EntityChange]:
    changes: list[EntityChange] = []
    ignored = VOLATILE.get(kind, frozenset())
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old is None:
            changes.append(EntityChange(kind, key, ChangeKind.ADDED, after=new))
        elif new is None:
            changes.append(EntityChange(kind, key, ChangeKind.REMOVED, before=old))
        else:
            fields = tuple(sorted(f for f in set(old) | set(new) if old.get(f) != new.get(f)))
            if set(fields) - ignored:
                changes.append(EntityChange(kind, key, ChangeKind.MODIFIED, old, new, fields))
    return changes


class _Document(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    entities: dict[str, dict[str, dict[str, object]]]


def dumps(taken: Mapping[str, Mapping[str, Record]]) -> bytes:
    """The snapshot as JSON bytes (``{"format": FORMAT, "entities": {...}}``), keys sorted."""
    document = _Document(FORMAT, {kind: dict(records) for kind, records in taken.items()})
    return msgspec.json.encode(document, order="sorted")


def loads(data: bytes | str) -> Snapshot:
    """A snapshot from :func:`dumps` output; ConfigError when it is not one."""
    try:
        document = msgspec.json.decode(data, type=_Document)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"not an entity snapshot: {exc}") from exc
    if document.format != FORMAT:
        raise ConfigError(f"entity snapshot format {document.format!r}: expected {FORMAT!r}")
    return document.entities
