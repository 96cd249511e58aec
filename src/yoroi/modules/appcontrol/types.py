"""Values the application-control parts hand each other."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Mode(enum.StrEnum):
    AUDIT = "audit"  # allow and report what is not recognised
    ENFORCE = "enforce"  # deny and report what is not recognised


class Source(enum.StrEnum):
    """Why a file is trusted."""

    INVENTORY = "inventory"  # on the host when the module was turned on
    PACKAGE = "package"  # a file of an installed package, matching the package database
    HASH = "hash"  # an explicit rule by SHA-256
    PATH = "path"  # an explicit rule by path (glob)
    MAINTENANCE = "maintenance"  # installed during a maintenance window / package-manager run


@dataclass(frozen=True)
class FileIdentity:
    """What makes a file "the same file": device, inode, change time (and size)."""

    dev: int
    ino: int
    ctime_ns: int
    size: int


@dataclass(frozen=True)
class TrustEntry:
    """One trusted executable or script, as recorded in the trust database."""

    path: str
    sha256: str
    size: int
    mode: int  # permission bits when trusted (a chmod makes it "changed")
    source: Source
    package: str | None = None


class Reason(enum.StrEnum):
    """Why an execution was judged as it was."""

    TRUSTED = "trusted"
    UNKNOWN = "unknown"  # not in the trust database
    CHANGED = "changed"  # in it, but content, name, path or permissions differ
    MEMFD = "memfd"  # code from a memfd (never trusted in enforce mode)
    SELF = "self"  # the agent itself and its module: always allowed
    DEADMAN = "deadman"  # the decision came too late: allowed, alerted
    OUT_OF_SCOPE = "out_of_scope"  # outside the policy's paths/users


@dataclass(frozen=True)
class Decision:
    """The verdict on one execution or code load."""

    allow: bool
    reason: Reason
    path: str
    sha256: str | None = None
    rule: str | None = None  # which trust source or rule decided
