"""Values the behaviour-monitoring parts hand each other."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Activity(enum.StrEnum):
    """What a process did to a file."""

    OPEN = "open"  # opened (read or write) — the copy-on-first-open fallback hooks here
    WRITE = "write"  # content modified (closed after writing, or a pre-content write)
    CREATE = "create"  # a new directory entry
    DELETE = "delete"  # an entry removed
    RENAME = "rename"  # moved from ``old_path`` to ``path``


@dataclass(frozen=True)
class FileEvent:
    """One observed file activity, attributed to the acting process (``pid`` = tgid)."""

    activity: Activity
    path: str
    pid: int
    time: float  # time.monotonic()
    old_path: str | None = None  # RENAME: where it was


@dataclass(frozen=True)
class ContentProfile:
    """What a file's content looks like, from a bounded sample (see ``content.profile``)."""

    size: int
    entropy: float  # Shannon entropy of the sample, bits per byte (0..8)
    chunk_entropies: tuple[float, ...]  # entropy of fixed chunks at spread offsets
    kind: str | None  # a recognised type ("pdf", "png", "zip", "gzip", "text", "json", ...)
    base64: bool  # the sample is base64 text
    base64_entropy: float | None  # entropy of the decoded base64 sample, if base64
    compressed_ok: bool  # a compressed/archive format whose stream decodes (honest compression)


class Signal(enum.StrEnum):
    """Kinds of evidence that a process family behaves like ransomware."""

    ENTROPY_RISE = "entropy_rise"  # rewritten file went from structured to random-looking
    TYPE_CHANGE = "type_change"  # a recognised type became an unrecognised one
    IN_PLACE_OVERWRITE = "in_place_overwrite"  # existing file rewritten with ciphertext
    WRITE_NEW_DELETE = "write_new_delete"  # ciphertext written to a new file, original deleted
    RENAME_EXTENSION = "rename_extension"  # renamed to a new, unusual extension
    RANSOM_NOTE = "ransom_note"  # the same new text file dropped in many directories
    DECOY = "decoy"  # a decoy file planted by the module was touched
    PARTIAL_ENCRYPTION = "partial_encryption"  # only some chunks turned random (intermittent)
    ENCODED_CIPHERTEXT = "encoded_ciphertext"  # base64 (or similar) of random bytes


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence against a process family."""

    signal: Signal
    path: str
    pid: int
    weight: float
    detail: str = ""
