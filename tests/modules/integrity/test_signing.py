"""Ed25519 signing of baselines: what verifies, and what is called tampering."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from yoroi.errors import BaselineTampered, YoroiError
from yoroi.modules.integrity.signing import (
    KEY_FILE,
    MAGIC,
    PUBLIC_KEY_FILE,
    load_keys,
)


def test_round_trip_and_key_modes(tmp_path: Path) -> None:
    keys = load_keys(tmp_path / "k", create=True)
    blob = keys.sign(b"payload")
    assert blob.startswith(MAGIC)
    assert load_keys(tmp_path / "k", create=False).open(blob, "b") == b"payload"
    assert stat.S_IMODE(os.stat(tmp_path / "k" / KEY_FILE).st_mode) == 0o600
    assert (tmp_path / "k" / PUBLIC_KEY_FILE).read_bytes().startswith(b"-----BEGIN PUBLIC KEY")


@pytest.mark.parametrize("where", [0, len(MAGIC) + 3, -1], ids=["magic", "signature", "payload"])
def test_any_flipped_byte_is_tampering(tmp_path: Path, where: int) -> None:
    keys = load_keys(tmp_path, create=True)
    blob = bytearray(keys.sign(b"some baseline payload"))
    blob[where] ^= 0x01
    with pytest.raises(BaselineTampered, match="b.msgpack"):
        keys.open(bytes(blob), "b.msgpack")


def test_truncated_blob_is_tampering(tmp_path: Path) -> None:
    keys = load_keys(tmp_path, create=True)
    with pytest.raises(BaselineTampered):
        keys.open(keys.sign(b"x")[:20], "b")


def test_a_replaced_key_pair_does_not_verify_the_old_blob(tmp_path: Path) -> None:
    blob = load_keys(tmp_path / "one", create=True).sign(b"x")
    other = load_keys(tmp_path / "two", create=True)
    with pytest.raises(BaselineTampered, match="signature does not match"):
        other.open(blob, "b")


def test_public_key_not_matching_private_key(tmp_path: Path) -> None:
    load_keys(tmp_path / "one", create=True)
    load_keys(tmp_path / "two", create=True)
    (tmp_path / "one" / PUBLIC_KEY_FILE).write_bytes(
        (tmp_path / "two" / PUBLIC_KEY_FILE).read_bytes())
    with pytest.raises(BaselineTampered, match="does not belong"):
        load_keys(tmp_path / "one", create=False)


def test_missing_public_key(tmp_path: Path) -> None:
    load_keys(tmp_path, create=True)
    (tmp_path / PUBLIC_KEY_FILE).unlink()
    with pytest.raises(BaselineTampered, match="public key is missing"):
        load_keys(tmp_path, create=False)


def test_verifying_needs_only_the_public_key(tmp_path: Path) -> None:
    blob = load_keys(tmp_path, create=True).sign(b"x")
    (tmp_path / KEY_FILE).unlink()
    keys = load_keys(tmp_path, create=False)
    assert keys.open(blob, "b") == b"x"
    with pytest.raises(YoroiError, match="no private key"):
        keys.sign(b"y")


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_keys(tmp_path, create=True)
    (tmp_path / KEY_FILE).chmod(0o644)
    with pytest.raises(YoroiError, match="chmod 600"):
        load_keys(tmp_path, create=False)
