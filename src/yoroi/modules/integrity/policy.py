"""The ``integrity`` section of the agent policy.

Example::

    integrity:
      enabled: true
      templates: [system-binaries, etc, ssh, {name: web-content, root: /srv/www}]
      rules:
        - name: app-config
          paths: [/opt/app/conf]
          exclude: ["*.swp", /opt/app/conf/cache]
          attributes: [content, perms, owner]
          suspicious: true
      schedule: 1h
      skip_hash_if_unchanged: false
      hash: sha256

A template is one of the files in ``yoroi/data/integrity/templates`` (see docs/integrity.md);
``attributes`` takes :class:`~yoroi.modules.integrity.types.Attribute` values or the groups in
:data:`ATTRIBUTE_GROUPS`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator, model_validator

from yoroi.config import AbsolutePath, Duration, ModulePolicy, StrictModel
from yoroi.modules.integrity.types import Attribute

HashName = Literal["sha256", "blake3"]

# Words a policy may use for sets of attributes; "content" means the rule's hash.
ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "content": ("type", "hash", "size", "link"),
    "perms": ("mode",),
    "owner": ("uid", "gid"),
    "times": ("mtime",),
    "links": ("inode", "nlink"),
    "hash": ("hash",),
    "all": ("type", "hash", "size", "link", "mode", "uid", "gid", "mtime", "inode", "nlink",
            "xattrs", "acl", "caps"),
}
ATTRIBUTE_WORDS = frozenset(ATTRIBUTE_GROUPS) | {a.value for a in Attribute}


def templates_dir() -> Path:
    """Where the built-in rule templates live."""
    return Path(str(resources.files("yoroi") / "data" / "integrity" / "templates"))


def available_templates() -> list[str]:
    """Names of the built-in templates (file names without ``.yaml``)."""
    return sorted(p.stem for p in templates_dir().glob("*.yaml"))


class TemplateRef(StrictModel):
    """A template with its parameters, e.g. ``{name: web-content, root: /srv/www}``."""

    name: str
    root: AbsolutePath | None = Field(None, description="The document root (web-content).")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        known = available_templates()
        if name not in known:
            raise ValueError(f"unknown template {name!r}; expected one of: {', '.join(known)}")
        return name

    @model_validator(mode="after")
    def _parameters(self) -> TemplateRef:
        takes = template_parameters(self.name)
        if self.root is not None and "root" not in takes:
            raise ValueError(f"template {self.name!r} takes no parameter 'root'")
        return self


def template_parameters(name: str) -> tuple[str, ...]:
    """The parameters a built-in template takes (``root`` for web-content)."""
    try:
        doc = yaml.safe_load((templates_dir() / f"{name}.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return ()
    params = doc.get("parameters") if isinstance(doc, dict) else None
    return tuple(params) if isinstance(params, dict) else ()


class RulePolicy(StrictModel):
    """One custom rule: which paths, which attributes, how serious a change is."""

    name: str | None = Field(None, description="Shown with each change; default: first path.")
    paths: tuple[AbsolutePath, ...] = Field(min_length=1, description="Files or dirs; globs ok.")
    recursive: bool = Field(True, description="false: a directory and its entries, no deeper.")
    exclude: tuple[str, ...] = Field((), description="Globs on the whole path or the name.")
    attributes: tuple[str, ...] = Field(("all",), min_length=1)
    hash: HashName | None = Field(None, description="Default: the section's hash.")
    suspicious: bool = Field(False, description="Changes are Detection Findings.")

    @field_validator("attributes")
    @classmethod
    def _words(cls, words: tuple[str, ...]) -> tuple[str, ...]:
        for word in words:
            if word not in ATTRIBUTE_WORDS:
                known = ", ".join(sorted(ATTRIBUTE_WORDS))
                raise ValueError(f"unknown attribute {word!r}; expected some of: {known}")
        return words


class IntegrityPolicy(ModulePolicy):
    """The ``integrity`` section."""

    templates: tuple[TemplateRef, ...] = Field((), description="Built-in rule sets.")
    rules: tuple[RulePolicy, ...] = Field((), description="Custom rules.")
    schedule: Duration = Field(3600.0, description="Time between scheduled checks.")
    skip_hash_if_unchanged: bool = Field(
        False, description="Reuse the baseline hash when size, mtime, ctime and inode match."
    )
    hash: HashName = "sha256"
    jobs: int | None = Field(None, ge=1, le=256, description="Hashing processes; default: cores.")
    realtime: bool = Field(False, description="Also report changes as they happen (fanotify).")
    entities: bool = Field(True, description="Also watch users, packages, ports, units, ...")

    @field_validator("templates", mode="before")
    @classmethod
    def _names(cls, items: object) -> object:
        if isinstance(items, list | tuple):
            return tuple({"name": i} if isinstance(i, str) else i for i in items)
        return items
