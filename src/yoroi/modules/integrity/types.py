"""Values the integrity-monitoring parts hand each other: file states, entity records, changes."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Attribute(enum.StrEnum):
    """What a baseline rule records about a file (the rule chooses a subset)."""

    TYPE = "type"  # file, dir, symlink, fifo, socket, block, char
    SHA256 = "sha256"
    BLAKE3 = "blake3"
    SIZE = "size"
    MODE = "mode"  # permission bits incl. setuid/setgid/sticky
    UID = "uid"
    GID = "gid"
    MTIME = "mtime"
    CTIME = "ctime"
    INODE = "inode"
    NLINK = "nlink"
    LINK = "link"  # symlink target
    XATTRS = "xattrs"
    ACL = "acl"  # system.posix_acl_access / default
    CAPS = "caps"  # security.capability


@dataclass(frozen=True)
class FileState:
    """One file as the baseline (or a check) saw it; ``None`` = not recorded by the rule."""

    path: str
    type: str
    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    inode: int | None = None
    nlink: int | None = None
    sha256: str | None = None
    blake3: str | None = None
    link: str | None = None
    xattrs: tuple[tuple[str, str], ...] | None = None  # (name, hex value), sorted
    acl: str | None = None
    caps: str | None = None


class ChangeKind(enum.StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    MODIFIED = "modified"


@dataclass(frozen=True)
class FileChange:
    """A difference between the baseline and now: which attributes, before and after."""

    path: str
    kind: ChangeKind
    attributes: tuple[str, ...] = ()  # Attribute values that differ (MODIFIED)
    before: FileState | None = None
    after: FileState | None = None


@dataclass(frozen=True)
class EntityChange:
    """A change of a system entity (a user, a package, a listening port, a sysctl, ...)."""

    entity: str  # "user", "group", "sudoers", "package", "unit", "timer", "crontab", "port",
    #              "kmod", "suid", "authorized_key", "sysctl"
    key: str  # what identifies it within its kind: user name, "tcp/0.0.0.0:22", ...
    kind: ChangeKind
    before: Mapping[str, object] | None = None
    after: Mapping[str, object] | None = None
    fields: tuple[str, ...] = field(default=())  # the fields that differ (MODIFIED)
