"""What a change of content says: is the new content ciphertext, and what did the change destroy.

Pure functions of two ``ContentProfile``s; the detector adds who did it, where and when.
"""

from __future__ import annotations

from yoroi.modules.behavior import content, formats
from yoroi.modules.behavior.types import ContentProfile, Signal

# A 4 KiB chunk of text or code stays under this; one of ciphertext reaches about 7.95.
_STRUCTURED_CHUNK = 6.5


def random_looking(profile: ContentProfile) -> bool:
    """The sampled bytes are as random as random bytes of that length."""
    return content.looks_random(profile.entropy, content.sampled_length(profile.size))


def encoded_ciphertext(profile: ContentProfile) -> bool:
    """Base64 text whose decoded bytes are random (and not an honest archive)."""
    if not profile.base64 or profile.base64_entropy is None or profile.compressed_ok:
        return False
    decoded = content.sampled_length(profile.size) * 3 // 4
    return content.looks_random(profile.base64_entropy, decoded)


def encrypted_looking(profile: ContentProfile) -> bool:
    """The content is, or looks like, ciphertext.

    Random bytes of no known type, random bytes behind the magic of a compressed format that
    does not decode, base64 of random bytes, or a format that is encrypted by design.
    """
    if profile.kind in formats.ENCRYPTED_KINDS or encoded_ciphertext(profile):
        return True
    if not random_looking(profile):
        return False
    return profile.kind is None or (
        profile.kind in formats.COMPRESSED_KINDS and not profile.compressed_ok
    )


def jumped_chunks(before: ContentProfile, after: ContentProfile) -> int:
    """How many sampled chunks went from structured to random (intermittent encryption)."""
    return sum(
        1
        for b, a in zip(before.chunk_entropies, after.chunk_entropies, strict=False)
        if b < _STRUCTURED_CHUNK and content.looks_random(a, content.CHUNK_SIZE)
    )


def honest_rewrite(
    before: ContentProfile, after: ContentProfile, page_kinds: frozenset[str]
) -> bool:
    """The file kept its type and is still valid: a database page write, an archive update."""
    if before.kind is None or after.kind != before.kind:
        return False
    return before.kind in page_kinds or after.compressed_ok


def assess(
    before: ContentProfile, after: ContentProfile, rise: float, page_kinds: frozenset[str]
) -> list[tuple[Signal, str]]:
    """The signals that rewriting ``before`` into ``after`` shows, each with a detail line."""
    if encrypted_looking(before) or honest_rewrite(before, after, page_kinds):
        return []
    signals: list[tuple[Signal, str]] = []
    whole = encrypted_looking(after)
    if encoded_ciphertext(after):
        detail = f"base64 of random bytes ({after.base64_entropy:.2f} bits/byte decoded)"
        signals.append((Signal.ENCODED_CIPHERTEXT, detail))
    elif random_looking(after) and after.entropy - before.entropy >= rise:
        detail = f"entropy {before.entropy:.2f} -> {after.entropy:.2f} bits/byte"
        signals.append((Signal.ENTROPY_RISE, detail))
    jumped = 0 if whole else jumped_chunks(before, after)
    if jumped:
        detail = f"{jumped} of {len(after.chunk_entropies)} sampled chunks turned random"
        signals.append((Signal.PARTIAL_ENCRYPTION, detail))
    if before.kind is not None and after.kind != before.kind and (whole or jumped):
        signals.append((Signal.TYPE_CHANGE, f"{before.kind} -> {after.kind or 'unknown'}"))
    elif before.kind is not None and whole:
        signals.append((Signal.TYPE_CHANGE, f"{before.kind} -> fake {after.kind}"))
    return signals
