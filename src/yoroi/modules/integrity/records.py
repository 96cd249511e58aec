"""What a change record carries beyond the attributes: a masked diff of small text files.

At baseline (and accept) time a raw copy of every small text file the rules hash is kept under
``<state>/integrity/text`` (owner-only, bounded); when a check finds such a file modified, the
record gets a unified diff from the baseline's text to today's, with secret-looking values
masked (:func:`~yoroi.modules.integrity.textdiff.diff_text`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from yoroi.modules.integrity.baseline import Baseline
from yoroi.modules.integrity.textdiff import TextCopies, diff_text

TEXT_DIR = "text"
ENTITIES_FILE = "entities.json"  # the entity snapshot beside the file baseline
MAX_TEXT = 64 * 1024


def text_copies(store_dir: Path) -> TextCopies:
    return TextCopies(store_dir / TEXT_DIR, max_file_bytes=MAX_TEXT)


def keep_texts(store_dir: Path, baseline: Baseline, paths: Iterable[str] | None = None) -> int:
    """Copy the small text files of ``baseline`` (or only ``paths``); how many were kept."""
    copies = text_copies(store_dir)
    chosen = baseline.states if paths is None else {
        p: baseline.states[p] for p in paths if p in baseline.states}
    kept = 0
    for path, state in chosen.items():
        if state.type == "file" and state.sha256 and (state.size or 0) <= MAX_TEXT:
            kept += copies.keep(path)
    return kept


def with_diff(store_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Add ``diff`` to the record of a modified text file whose baseline text was kept."""
    if record.get("change") != "modified" or "sha256" not in record.get("attributes", ()):
        return record
    old = text_copies(store_dir).get(record["path"])
    if old is None:
        return record
    try:
        data = Path(record["path"]).read_bytes()
    except OSError:
        return record
    if len(data) > MAX_TEXT:
        return record
    try:
        new = data.decode("utf-8")
    except UnicodeDecodeError:
        return record
    diff = diff_text(old, new, record["path"])
    return {**record, "diff": diff} if diff else record
