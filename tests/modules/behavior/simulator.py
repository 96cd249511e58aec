"""A ransomware simulator for the test suite and the benchmark. It is harmless by construction.

``prepare --root BASE`` creates a fresh directory ``BASE/yoroi-sim-XXXXXX`` (marked by a
``.yoroi-simulator`` file), fills it with ordinary documents in a few subdirectories, and prints
its path. ``encrypt --dir DIR --variant V`` encrypts the documents of such a directory, and only
inside it: it refuses any directory without the marker, and every path it touches is checked
to lie under the directory's real path. Keys are random and thrown away.

Variants: ``inplace``, ``newdelete`` (ciphertext to a new file, original deleted), ``rename``
(rename to a new extension, then encrypt), ``intermittent`` (4 KiB of every 1 MiB), ``slow``
(``--delay`` between files), ``multiprocess`` (a forked child per ``--per-child`` files),
``base64`` (base64-armoured ciphertext). Every variant drops a ransom note in each directory.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MARKER = ".yoroi-simulator"
NOTE = "README_RESTORE_FILES.txt"
NOTE_TEXT = b"Your files are encrypted. This is a Yoroi test simulator; nothing was harmed.\n"
VARIANTS = ("inplace", "newdelete", "rename", "intermittent", "slow", "multiprocess", "base64")
WORDS = "invoice report customer order shipment budget meeting contract server backup".split()


def prepare(root: Path, files: int, size: int, seed: int) -> Path:
    """A new directory of documents (text, JSON, CSV, PDF-like), spread over subdirectories."""
    rng = random.Random(seed)
    target = Path(tempfile.mkdtemp(prefix="yoroi-sim-", dir=root))
    (target / MARKER).write_text("created by the Yoroi ransomware simulator\n")
    for index in range(files):
        sub = target / f"dept{index % 4}"
        sub.mkdir(exist_ok=True)
        kind = ("txt", "json", "csv", "pdf")[index % 4]
        (sub / f"doc{index:04d}.{kind}").write_bytes(_document(kind, size, rng))
    return target


def _document(kind: str, size: int, rng: random.Random) -> bytes:
    words = " ".join(rng.choice(WORDS) for _ in range(max(8, size // 7)))
    if kind == "json":  # valid JSON of about the size asked for
        return json.dumps({"id": rng.randrange(10**6), "notes": words[: max(size - 40, 8)]
                           }).encode()
    if kind == "csv":
        body = "\n".join(f"{i},{rng.choice(WORDS)},{rng.randrange(1000)}" for i in
                         range(max(4, size // 20))).encode()
    elif kind == "pdf":
        body = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" + words.encode()
    else:
        body = words.encode()
    return (body * (size // max(len(body), 1) + 1))[:size]


def documents(target: Path) -> list[Path]:
    return sorted(p for p in target.rglob("doc*") if p.is_file())


def _inside(target: Path, path: Path) -> Path:
    real = path.resolve()
    if not str(real).startswith(str(target) + os.sep):
        raise SystemExit(f"simulator: refusing {path}: outside {target}")
    return real


def _cipher(data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def encrypt_one(target: Path, path: Path, variant: str) -> None:
    path = _inside(target, path)
    data = path.read_bytes()
    if variant == "newdelete":
        _inside(target, path.with_name(path.name + ".locked")).write_bytes(_cipher(data))
        path.unlink()
    elif variant == "rename":
        moved = _inside(target, path.with_name(path.name + ".locked"))
        path.rename(moved)
        moved.write_bytes(_cipher(data))
    elif variant == "intermittent":
        with open(path, "r+b") as handle:
            for offset in range(0, len(data), 1 << 20):
                handle.seek(offset)
                handle.write(_cipher(data[offset:offset + 4096]))
    elif variant == "base64":
        path.write_bytes(base64.b64encode(_cipher(data)))
    else:  # inplace, slow, multiprocess
        with open(path, "r+b") as handle:
            handle.write(_cipher(data))


def encrypt(target: Path, variant: str, delay: float, per_child: int) -> int:
    target = target.resolve()
    if not (target / MARKER).is_file():
        raise SystemExit(f"simulator: {target} was not made by 'prepare'; refusing")
    victims = documents(target)
    for directory in sorted({p.parent for p in victims}):
        _inside(target, directory / NOTE).write_bytes(NOTE_TEXT)
    if variant == "multiprocess":
        return _in_children(target, victims, per_child)
    for path in victims:
        encrypt_one(target, path, variant)
        if delay:
            time.sleep(delay)
    return 0


def _in_children(target: Path, victims: list[Path], per_child: int) -> int:
    for start in range(0, len(victims), per_child):
        pid = os.fork()
        if pid == 0:
            for path in victims[start:start + per_child]:
                encrypt_one(target, path, "inplace")
            os._exit(0)
        os.waitpid(pid, 0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare")
    prep.add_argument("--root", type=Path, required=True)
    prep.add_argument("--files", type=int, default=40)
    prep.add_argument("--size", type=int, default=16384)
    prep.add_argument("--seed", type=int, default=7)
    run = commands.add_parser("encrypt")
    run.add_argument("--dir", type=Path, required=True)
    run.add_argument("--variant", choices=VARIANTS, required=True)
    run.add_argument("--delay", type=float, default=0.0)
    run.add_argument("--per-child", type=int, default=2)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(prepare(args.root, args.files, args.size, args.seed), flush=True)
        return 0
    delay = args.delay or (0.3 if args.variant == "slow" else 0.0)
    return encrypt(args.dir, args.variant, delay, args.per_child)


if __name__ == "__main__":
    sys.exit(main())
