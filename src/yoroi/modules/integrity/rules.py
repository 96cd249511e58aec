"""Rules: which files a baseline covers and what it records of each.

A policy names templates (``yoroi/data/integrity/templates/*.yaml``) and custom rules; both
become immutable :class:`Rule` values here, once. :func:`walk` then lists the files of a set of
rules: roots (globs expanded at walk time, so that a new ``/usr/lib64`` shows up as added) are
walked without following symbolic links and without entering pseudo file systems. When rules
overlap, a path belongs to the rule whose root is nearest above it, so ``/etc/sudoers`` can be
suspicious inside a quieter ``/etc`` rule.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from yoroi.errors import PolicyError
from yoroi.modules.integrity.policy import (
    ATTRIBUTE_GROUPS,
    HashName,
    IntegrityPolicy,
    RulePolicy,
    TemplateRef,
    templates_dir,
)
from yoroi.modules.integrity.types import Attribute
from yoroi.yamldoc import read_yaml, validate

# Recorded whatever the rule says: the type, and ctime (never reported, but it lets a check
# reuse a hash safely when skip_hash_if_unchanged is on).
ALWAYS = frozenset({Attribute.TYPE, Attribute.CTIME})


@dataclass(frozen=True)
class Rule:
    """One compiled rule: roots (globs allowed), exclusions, attributes recorded, severity."""

    name: str
    paths: tuple[str, ...]
    recursive: bool = True
    exclude: tuple[str, ...] = ()
    attributes: frozenset[Attribute] = frozenset(Attribute) - {Attribute.BLAKE3}
    hash: str = "sha256"
    suspicious: bool = False

    def roots(self) -> list[str]:
        """The rule's paths with globs expanded against the file system now."""
        found: list[str] = []
        for pattern in self.paths:
            if glob.has_magic(pattern):
                found.extend(sorted(glob.glob(pattern)))
            else:
                found.append(os.path.normpath(pattern))
        return found

    def excluded(self, path: str) -> bool:
        """True when an exclusion glob matches the whole path or the name."""
        if not self.exclude:
            return False
        name = os.path.basename(path)
        return any(fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(name, g)
                   for g in self.exclude)

    @property
    def hash_attribute(self) -> Attribute | None:
        """The content-hash attribute this rule records, if any."""
        wanted = Attribute(self.hash)
        return wanted if wanted in self.attributes else None


def attribute_set(words: Iterable[str], hash_name: str) -> frozenset[Attribute]:
    """Attributes from policy words (groups like ``content`` or single attributes)."""
    chosen: set[Attribute] = set(ALWAYS)
    for word in words:
        for item in ATTRIBUTE_GROUPS.get(word, (word,)):
            chosen.add(Attribute(hash_name if item == "hash" else item))
    return frozenset(chosen)


def compile_rule(spec: RulePolicy, default_hash: HashName) -> Rule:
    """A policy rule as an immutable :class:`Rule`."""
    hash_name = spec.hash or default_hash
    return Rule(
        name=spec.name or spec.paths[0], paths=spec.paths, recursive=spec.recursive,
        exclude=spec.exclude, attributes=attribute_set(spec.attributes, hash_name),
        hash=hash_name, suspicious=spec.suspicious,
    )


def path_rule(paths: Iterable[str], hash_name: HashName = "sha256") -> Rule:
    """The rule for paths named on the command line: every attribute, not suspicious."""
    roots = tuple(os.path.abspath(p) for p in paths)
    return compile_rule(RulePolicy(name="command-line", paths=roots, hash=hash_name), hash_name)


class _TemplateDoc(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}

    description: str
    parameters: dict[str, str] = Field(default_factory=dict)
    rules: tuple[RulePolicy, ...] = Field(min_length=1)


def load_template(ref: TemplateRef, default_hash: HashName = "sha256",
                  directory: Path | None = None) -> list[Rule]:
    """The rules of one template, its parameters filled in."""
    path = (directory or templates_dir()) / f"{ref.name}.yaml"
    doc = read_yaml(path)
    declared = doc.data.get("parameters") if isinstance(doc.data, dict) else None
    defaults = {str(k): str(v) for k, v in (declared or {}).items()}
    given = {k: v for k, v in ref.model_dump().items() if k != "name" and v is not None}
    unknown = set(given) - set(defaults)
    if unknown:
        raise PolicyError(f"{path}: template {ref.name!r} takes no parameter "
                          f"{', '.join(sorted(unknown))}")
    values = {**defaults, **given}
    filled = validate(doc, _TemplateDoc, _substitute(doc.data, values))
    return [compile_rule(spec, default_hash) for spec in filled.rules]


def _substitute(data: Any, values: dict[str, str]) -> Any:
    if isinstance(data, str):
        for key, value in values.items():
            data = data.replace("{" + key + "}", value.rstrip("/") or "/")
        return data
    if isinstance(data, list):
        return [_substitute(item, values) for item in data]
    if isinstance(data, dict):
        return {k: v if k == "parameters" else _substitute(v, values) for k, v in data.items()}
    return data


def expand(policy: IntegrityPolicy, directory: Path | None = None) -> tuple[Rule, ...]:
    """Every rule of a policy: its templates' rules first, then its custom rules."""
    rules: list[Rule] = []
    for ref in policy.templates:
        rules.extend(load_template(ref, policy.hash, directory))
    rules.extend(compile_rule(spec, policy.hash) for spec in policy.rules)
    return tuple(rules)


def walk(rules: tuple[Rule, ...], skip_devices: frozenset[int] = frozenset(),
         ) -> Iterator[tuple[str, int]]:
    """Every path the rules cover, once, with the index of the rule it belongs to.

    Directories are listed too (their mode and owner matter). Links are not followed, not even
    a root that is a link: ``/bin -> usr/bin`` is recorded as the link it is.
    """
    owners: dict[str, int] = {}
    for index, rule in enumerate(rules):
        for root in rule.roots():
            owners.setdefault(root, index)
    for root, index in owners.items():
        if not rules[index].excluded(root):
            yield from _walk_root(root, index, rules[index], owners, skip_devices)


def _walk_root(root: str, index: int, rule: Rule, owners: dict[str, int],
               skip: frozenset[int]) -> Iterator[tuple[str, int]]:
    try:
        info = os.lstat(root)
    except OSError:
        return  # absent roots are simply not in the baseline (and show up when created)
    if info.st_dev in skip:
        return
    yield root, index
    if stat.S_ISDIR(info.st_mode):
        yield from _walk_dir(root, index, rule, owners, skip, 0 if rule.recursive else 1)


def _walk_dir(top: str, index: int, rule: Rule, owners: dict[str, int],
              skip: frozenset[int], depth_left: int) -> Iterator[tuple[str, int]]:
    """Depth-first; ``depth_left`` 0 means unlimited."""
    stack = [(top, depth_left)]
    while stack:
        directory, left = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            continue  # unreadable or vanished: the directory's own entry still stands
        for entry in entries:
            path = entry.path
            if path in owners or rule.excluded(path):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                if is_dir and skip and entry.stat(follow_symlinks=False).st_dev in skip:
                    continue
            except OSError:
                continue
            yield path, index
            if is_dir and left != 1:
                stack.append((path, left - 1 if left else 0))


def walk_under(rules: tuple[Rule, ...], path: str, skip_devices: frozenset[int] = frozenset(),
               ) -> Iterator[tuple[str, int]]:
    """Like :func:`walk`, restricted to ``path`` and what lies below it (for ``accept``)."""
    owners: dict[str, int] = {}
    for index, rule in enumerate(rules):
        for root in rule.roots():
            owners.setdefault(root, index)
    nearest = _nearest_root(path, owners)
    if nearest is None:
        return
    root, index = nearest, owners[nearest]
    rule = rules[index]
    if rule.excluded(path) or (path != root and not rule.recursive
                               and os.path.dirname(path) != root):
        return
    if path == root:
        yield from _walk_root(root, index, rule, owners, skip_devices)
        return
    try:
        info = os.lstat(path)
    except OSError:
        return
    yield path, index
    if stat.S_ISDIR(info.st_mode) and rule.recursive:
        yield from _walk_dir(path, index, rule, owners, skip_devices, 0)


def _nearest_root(path: str, owners: dict[str, int]) -> str | None:
    candidate = path
    while True:
        if candidate in owners:
            return candidate
        parent = os.path.dirname(candidate)
        if parent == candidate:
            return None
        candidate = parent
