"""The ransomware detector's thresholds, weights and windows, with their defaults explained.

Defaults: a verdict at a score of 10. A fully encrypted file scores 3.5 to 4 (two content
signals such as TYPE_CHANGE or ENTROPY_RISE plus IN_PLACE_OVERWRITE, or WRITE_NEW_DELETE alone,
capped at 4 per file), so the verdict falls on the 3rd file, and 2 files (a user encrypting
one or two files) stay below it. A decoy weighs the whole threshold: touching one is enough.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from yoroi.errors import PolicyError
from yoroi.modules.behavior.types import Signal

DEFAULT_WEIGHTS: Mapping[Signal, float] = MappingProxyType(
    {
        Signal.ENTROPY_RISE: 2.0,
        Signal.TYPE_CHANGE: 2.0,
        Signal.ENCODED_CIPHERTEXT: 2.0,
        Signal.PARTIAL_ENCRYPTION: 2.0,
        Signal.IN_PLACE_OVERWRITE: 1.5,
        Signal.WRITE_NEW_DELETE: 3.5,
        Signal.RENAME_EXTENSION: 1.0,
        Signal.RANSOM_NOTE: 3.0,
        Signal.DECOY: 10.0,
    }
)

# Package managers and the system's own housekeeping; backup tools are added by the policy.
DEFAULT_TRUSTED = frozenset(
    {
        "apt",
        "apt-get",
        "aptitude",
        "dpkg",
        "rpm",
        "dnf",
        "yum",
        "zypper",
        "unattended-upgr*",
        "packagekitd",
        "snapd",
    }
)

# Extensions whose appearance after a rename says nothing: common types, rotations, backups.
KNOWN_EXTENSIONS = frozenset(
    """
    txt md rst log csv tsv json xml html htm xhtml css js mjs ts py pyc rb pl php go rs java c h
    cc cpp hpp cs sh bash zsh conf cfg ini yaml yml toml properties env sql db sqlite sqlite3
    doc docx xls xlsx ppt pptx odt ods odp rtf pdf epub eml msg mbox ics vcf
    jpg jpeg png gif bmp tif tiff svg webp ico heic mp3 mp4 m4a wav avi mkv mov flac ogg webm
    zip gz tgz bz2 tbz2 xz txz zst lz4 lzma 7z rar tar cpio deb rpm iso img qcow2 vmdk
    gpg asc pgp age sig pem crt cer key pub p12 pfx kdbx
    so o a ko exe dll bin elf class jar war ear whl egg
    bak old orig tmp temp swp swo part partial new save dist rej lock pid sock
    dpkg-new dpkg-old dpkg-dist ucf-dist rpmnew rpmsave
    """.split()
)


@dataclass(frozen=True)
class DetectorSettings:
    """How the detector weighs evidence; built once from the behaviour policy."""

    threshold: float = 10.0  # score at which a family is judged ransomware
    half_life: float = 3600.0  # seconds for a piece of evidence to lose half its weight
    per_file_cap: float = 4.0  # most one file can add, whatever signals it shows
    weights: Mapping[Signal, float] = field(default_factory=lambda: DEFAULT_WEIGHTS)
    pair_window: float = 300.0  # seconds between a new ciphertext file and a deletion it pairs
    entropy_rise: float = 1.0  # bits per byte an entropy must rise by to count
    note_directories: int = 3  # the same note in this many directories is a ransom note
    note_sizes: tuple[int, int] = (32, 64 * 1024)  # smallest and largest ransom note
    page_kinds: frozenset[str] = frozenset({"sqlite", "sqlite-wal", "sqlite-journal"})
    trusted: frozenset[str] = DEFAULT_TRUSTED  # process names (fnmatch patterns) never scored
    known_extensions: frozenset[str] = KNOWN_EXTENSIONS
    memory: int = 4096  # paths remembered per table (profiles, new files, deletions)

    def __post_init__(self) -> None:
        problems = [
            f"behavior: {name} must be > 0, got {value!r}"
            for name, value in (
                ("threshold", self.threshold),
                ("half_life", self.half_life),
                ("per_file_cap", self.per_file_cap),
                ("pair_window", self.pair_window),
                ("note_directories", self.note_directories),
                ("memory", self.memory),
            )
            if not value > 0
        ]
        problems += [
            f"behavior: weight of {signal} must be >= 0, got {weight!r}"
            for signal, weight in self.weights.items()
            if not weight >= 0
        ]
        if problems:
            raise PolicyError(problems[0], problems)

    def weight(self, signal: Signal) -> float:
        """The weight of ``signal`` (the default when the policy leaves it out)."""
        return self.weights.get(signal, DEFAULT_WEIGHTS[signal])

    def trusts(self, name: str) -> bool:
        """True if a process called ``name`` (comm or executable base name) is trusted."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.trusted)
