"""Sizes and durations as administrators write them: ``64M``, ``2G``, ``90s``, ``12h``, ``7d``."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_FACTORS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(text: str | int) -> int:
    """Bytes from ``123``, ``64K``, ``2M``, ``1.5G``, ``1GiB`` (binary multiples)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size {text} is negative")
        return text
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a size; write e.g. 512K, 64M or 2G")
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size; write e.g. 512K, 64M or 2G")
    return int(float(match.group(1)) * _SIZE_FACTORS[match.group(2).upper()])


def parse_duration(text: str | float) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``1w`` or ``250ms``."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"duration {text} is negative")
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration; write e.g. 30s, 15m, 12h or 7d")
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write e.g. 30s, 15m, 12h or 7d")
    return float(match.group(1)) * _DURATION_FACTORS[(match.group(2) or "s").lower()]
