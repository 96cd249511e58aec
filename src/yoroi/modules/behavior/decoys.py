"""Decoy files: planted by the module, never touched by honest software.

Each watched directory gets two small documents whose names sort first and last (ransomware
often walks directories in order), with ordinary-looking content. Any change, rename or deletion
of one by a process other than the agent is evidence enough on its own.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)
NAMES = ("!000-archive-index.docx", "~zzz-ledger-backup.xlsx")
_BODY = b"PK\x03\x04" + b"Quarterly ledger, do not edit. " * 40


class Decoys:
    """The decoys of a set of directories: plant, recognise, remove."""

    def __init__(self, directories: tuple[str, ...]) -> None:
        self.directories = directories
        self.paths: frozenset[str] = frozenset()

    def plant(self) -> list[str]:
        """Create the decoys that are missing; returns the paths planted."""
        planted: list[str] = []
        for directory in self.directories:
            for name in NAMES:
                path = Path(directory) / name
                if path.exists():
                    continue
                try:
                    path.write_bytes(_BODY + secrets.token_hex(8).encode())
                    os.chmod(path, 0o644)
                except OSError as exc:
                    log.warning("cannot plant decoy %s: %s", path, exc)
                    continue
                planted.append(str(path))
        self.paths = frozenset(str(Path(d) / n) for d in self.directories for n in NAMES)
        return planted

    def is_decoy(self, path: str | None) -> bool:
        return path is not None and path in self.paths

    def remove(self) -> None:
        """Take the decoys away (the module is stopping or being disabled)."""
        for path in self.paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove decoy %s: %s", path, exc)
        self.paths = frozenset()
