"""Ed25519 signatures over the stored baseline, checked before every use.

The agent holds the key pair under ``<state>/integrity/``: ``key`` (PKCS#8 PEM, mode 0600) and
``key.pub`` (SubjectPublicKeyInfo PEM) beside it; a manager may later hold the private key and
hand out only the public one. A signed blob is ``MAGIC + signature (64 bytes) + payload``; the
signature covers the magic and the payload. Anything that does not verify is
:class:`BaselineTampered`, which callers report as an alert, never as a mere read error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from yoroi.errors import BaselineTampered, YoroiError

MAGIC = b"YOROI-IB1\n"
SIGNATURE_SIZE = 64
KEY_FILE, PUBLIC_KEY_FILE = "key", "key.pub"


@dataclass(frozen=True)
class KeyPair:
    """The signing key (absent when only verifying) and its public half."""

    public: Ed25519PublicKey
    private: Ed25519PrivateKey | None = None

    def sign(self, payload: bytes) -> bytes:
        """``payload`` wrapped with a signature."""
        if self.private is None:
            raise YoroiError("no private key here to sign the baseline with")
        return MAGIC + self.private.sign(MAGIC + payload) + payload

    def open(self, blob: bytes, source: str) -> bytes:
        """The payload of a signed blob, or :class:`BaselineTampered`."""
        head = len(MAGIC) + SIGNATURE_SIZE
        if not blob.startswith(MAGIC) or len(blob) < head:
            raise BaselineTampered(f"{source}: not a signed Yoroi baseline (header changed)")
        signature, payload = blob[len(MAGIC):head], blob[head:]
        try:
            self.public.verify(signature, MAGIC + payload)
        except InvalidSignature:
            raise BaselineTampered(
                f"{source}: the signature does not match: the baseline was changed after it "
                "was signed; investigate, then make a new one with 'yoroi integrity baseline'"
            ) from None
        return payload


def load_keys(directory: Path, create: bool) -> KeyPair:
    """The key pair in ``directory``; with ``create``, made (0600) when there is none."""
    private_path, public_path = directory / KEY_FILE, directory / PUBLIC_KEY_FILE
    if not private_path.exists() and create:
        return _create(private_path, public_path)
    public = _read_public(public_path)
    private = _read_private(private_path) if private_path.exists() else None
    if private is not None and _raw(private.public_key()) != _raw(public):
        raise BaselineTampered(f"{public_path}: does not belong to {private_path}")
    return KeyPair(public, private)


def _create(private_path: Path, public_path: Path) -> KeyPair:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    public_path.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(private.public_key(), private)


def _read_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise BaselineTampered(f"{path}: the public key is missing; the baseline cannot be "
                               "verified") from None
    except ValueError:
        raise BaselineTampered(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BaselineTampered(f"{path}: not an Ed25519 public key")
    return key


def _read_private(path: Path) -> Ed25519PrivateKey:
    if path.stat().st_mode & 0o077:
        raise YoroiError(f"{path}: readable by others; chmod 600 it (and consider the key "
                         "compromised)")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError:
        raise BaselineTampered(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BaselineTampered(f"{path}: not an Ed25519 private key")
    return key


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
