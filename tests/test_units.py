"""Sizes and durations as administrators write them."""

from __future__ import annotations

import pytest

from yoroi.units import parse_duration, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("0", 0), ("512", 512), ("64K", 65536), ("2M", 2 * 1024**2), ("1.5G", 3 * 1024**3 // 2),
    ("1GiB", 1024**3), ("3kb", 3072), (4096, 4096),
])
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1", "12X", "1..2M", -5])
def test_bad_sizes_say_how_to_write_one(text: str | int) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("12h", 43200.0), ("7d", 604800.0),
    ("1w", 604800.0), ("250ms", 0.25), (2.5, 2.5),
])
def test_durations(text: str | float, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "soon", "5y", "-3s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [None, [], {}, True])
def test_values_of_the_wrong_type_are_value_errors(value: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)  # type: ignore[arg-type]
