"""What a file's content looks like, from a bounded sample: entropy, type, armour, honesty.

The sampling contract (``sample``): the first 64 KiB of the file (the *head*, for the type, the
text shape and base64), and 16 chunks of 4 KiB (for the entropies): for a file of up to 64 KiB
the chunks tile it; for a larger one the first four tile its first 16 KiB and twelve more are
spread evenly over the rest. At most 112 KiB is read however big the file is, and the same
offsets are sampled before and after a change of the same file, so chunk entropies compare.

Entropy is Shannon's, in bits per byte, of the byte histogram; ``looks_random`` compares it with
what truly random bytes of the same length reach, since a short sample of random bytes scores
well under 8 (4 KiB: about 7.95).
"""

from __future__ import annotations

import binascii
import codecs
import functools
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from yoroi.modules.behavior import formats
from yoroi.modules.behavior.types import ContentProfile

HEAD_SIZE = 64 * 1024
CHUNK_SIZE = 4 * 1024
CHUNK_COUNT = 16
_HEAD_CHUNKS = 4  # chunks tiling the start of a large file; the others are spread

_TEXT_CONTROLS = bytes(set(range(32)) - {9, 10, 11, 12, 13, 27}) + b"\x7f"
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_URLSAFE = bytes.maketrans(b"-_", b"+/")
_MIN_BASE64 = 64  # shorter runs of letters and digits are words, not armour

_Reader = Callable[[int, int], bytes]  # (offset, length) -> bytes


class Sample(NamedTuple):
    """A bounded sample of a file: its head, its entropy chunks, and its full size."""

    head: bytes
    chunks: list[bytes]
    size: int


def chunk_offsets(size: int) -> list[int]:
    """Where the entropy chunks of a file of ``size`` bytes start."""
    if size <= CHUNK_SIZE * CHUNK_COUNT:
        return list(range(0, size, CHUNK_SIZE))
    first = [i * CHUNK_SIZE for i in range(_HEAD_CHUNKS)]
    start, spread = first[-1] + CHUNK_SIZE, CHUNK_COUNT - _HEAD_CHUNKS
    span = size - CHUNK_SIZE - start
    return first + [start + span * i // (spread - 1) for i in range(spread)]


def sample(source: bytes | str | os.PathLike[str] | int) -> Sample:
    """Read the sample of ``source``: file content, a path, or an open descriptor.

    A descriptor is read with ``pread`` (its file position does not move). OSError from
    reading (the file vanished, access denied) is left to the caller.
    """
    if isinstance(source, bytes):
        data = source
        return _sample_of(len(data), lambda offset, n: data[offset : offset + n])
    if isinstance(source, int):
        return _sample_fd(source)
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _sample_fd(fd)
    finally:
        os.close(fd)


def _sample_fd(fd: int) -> Sample:
    size = os.fstat(fd).st_size
    return _sample_of(size, lambda offset, n: os.pread(fd, n, offset))


def _sample_of(size: int, read: _Reader) -> Sample:
    head = read(0, min(size, HEAD_SIZE))
    chunks = [
        head[offset : offset + CHUNK_SIZE]
        if offset + CHUNK_SIZE <= len(head)
        else read(offset, CHUNK_SIZE)
        for offset in chunk_offsets(size)
    ]
    return Sample(head, chunks, size)


def profile(
    data: bytes, size: int | None = None, *, chunks: Sequence[bytes] | None = None
) -> ContentProfile:
    """Profile a sample: ``data`` is the head of a file of ``size`` bytes (default: all of it).

    ``chunks`` are the entropy chunks from ``sample``; when omitted they are taken from
    ``data`` at the offsets of the sampling contract that fall inside it. Never raises on any
    bytes.
    """
    size = len(data) if size is None else size
    if chunks is None:
        chunks = [data[o : o + CHUNK_SIZE] for o in chunk_offsets(size) if o < len(data)]
    counts = [Counter(chunk) for chunk in chunks if chunk]
    total = [0] * 256
    for count in counts:
        for value, n in count.items():
            total[value] += n
    kind = classify(data)
    armoured = kind == "base64"
    decoded = _decode_base64(data) if armoured else b""
    return ContentProfile(
        size=size,
        entropy=_entropy_of(total),
        chunk_entropies=tuple(_entropy_of(count.values()) for count in counts),
        kind=kind,
        base64=armoured,
        base64_entropy=entropy(decoded) if armoured else None,
        compressed_ok=_compressed_ok(kind, data, size, decoded),
    )


def profile_of(source: bytes | str | os.PathLike[str] | int) -> ContentProfile:
    """``profile`` of the ``sample`` of ``source``."""
    head, chunks, size = sample(source)
    return profile(head, size, chunks=chunks)


def entropy(data: bytes) -> float:
    """Shannon entropy of ``data`` in bits per byte (0 for empty data)."""
    return _entropy_of(Counter(data).values())


# n * log2(n) for the counts of one chunk: a table lookup is three times faster than log2
_N_LOG_N = [0.0] + [n * math.log2(n) for n in range(1, CHUNK_SIZE + 1)]


def _entropy_of(counts: Iterable[int]) -> float:
    counts = [c for c in counts if c]
    n = sum(counts)
    if n == 0:
        return 0.0
    table = _N_LOG_N
    if n < len(table):
        spread = sum(map(table.__getitem__, counts))
    else:
        spread = sum(c * math.log2(c) for c in counts)
    return min(8.0, max(0.0, math.log2(n) - spread / n))


@functools.lru_cache(maxsize=512)
def random_entropy(n: int) -> float:
    """Expected entropy of ``n`` truly random bytes (plug-in estimate, bits per byte).

    Exact sum over the binomial count of each of the 256 values, truncated where the
    probabilities vanish.
    """
    if n <= 1:
        return 0.0
    p, expected = 1 / 256, 0.0
    pmf = (1 - p) ** n  # P(count = 0)
    limit = min(n, int(n * p + 12 * math.sqrt(n * p) + 12))
    for c in range(1, limit + 1):
        pmf *= (n - c + 1) / c * p / (1 - p)
        expected += pmf * (c / n) * math.log2(n / c)
    return 256 * expected


def looks_random(entropy_value: float, length: int) -> bool:
    """True if ``entropy_value`` over ``length`` bytes is what random bytes would give.

    The tolerance widens for short samples, whose entropy varies more (4 standard deviations).
    """
    tolerance = 0.1 + 4 / math.sqrt(max(length, 1))
    return length >= 64 and entropy_value >= random_entropy(length) - tolerance


def sampled_length(size: int) -> int:
    """How many bytes the entropy of a file of ``size`` bytes was computed over."""
    return min(size, CHUNK_SIZE * CHUNK_COUNT)


def classify(head: bytes) -> str | None:
    """The type of a file from its head: magic bytes first, then the shape of its text."""
    kind = formats.kind_by_magic(head)
    if kind is not None or not head:
        return kind
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "text"
    if b"\x00" in head or len(head.translate(None, _TEXT_CONTROLS)) < len(head) * 0.99:
        return None
    return _text_shape(head)


def _text_shape(head: bytes) -> str:
    stripped = head.translate(None, b"\r\n")
    if len(stripped) >= _MIN_BASE64 and not stripped.translate(_URLSAFE, _BASE64_ALPHABET):
        return "base64"
    start = head.lstrip()[:64]
    if start[:1] in (b"{", b"[") and start[1:].lstrip()[:1] in b'"{[]}-0123456789tfn':
        return "json"
    lowered = start.lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "html"
    if lowered.startswith(b"<") and lowered[1:2].isalpha() or lowered.startswith(b"<?xml"):
        return "xml"
    return "csv" if _is_csv(head) else "text"


def _is_csv(head: bytes) -> bool:
    lines = head[:4096].splitlines()[:-1]  # the last line may be cut by the sample
    if len(lines) < 2:
        return False
    return any(
        lines[0].count(separator) > 0 and len({line.count(separator) for line in lines}) == 1
        for separator in (b",", b";", b"\t", b"|")
    )


def _decode_base64(head: bytes) -> bytes:
    stripped = head.translate(_URLSAFE, b"\r\n")
    whole = len(stripped) - len(stripped) % 4
    try:
        return binascii.a2b_base64(stripped[:whole])
    except binascii.Error:
        return b""


def _compressed_ok(kind: str | None, head: bytes, size: int, decoded: bytes) -> bool:
    if kind == "base64":  # armour around an honest archive is still an honest archive
        inner = formats.kind_by_magic(decoded)
        return formats.compressed_ok(inner, decoded, size * 3 // 4)
    return formats.compressed_ok(kind, head, size)
