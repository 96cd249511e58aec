"""Content profiles on real data: entropy, types by magic and shape, base64 armour, honesty."""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import json
import lzma
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import sysconfig
import zipfile
import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from yoroi.modules.behavior import content, formats
from yoroi.modules.behavior.content import profile, profile_of, sample

TEXT = Path(json.__file__).read_bytes() + Path(zipfile.__file__).read_bytes()
IMAGES = Path(sysconfig.get_paths()["stdlib"]) / "test" / "imghdrdata"


def aes(data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def png(width: int = 64, height: int = 64) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    rows = b"".join(b"\x00" + bytes((x * y) % 256 for x in range(width)) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def pdf() -> bytes:
    stream = zlib.compress(TEXT[:20000])
    return (
        b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
        + b"4 0 obj\n<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream)
        + stream
        + b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    )


def docx() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<?xml version='1.0'?><Types/>")
        archive.writestr("word/document.xml", TEXT[:30000].decode())
    return buffer.getvalue()


def odt() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("mimetype", "application/vnd.oasis.opendocument.text")
        archive.writestr("content.xml", TEXT[:5000].decode(), zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def sqlite_db(tmp_path: Path) -> bytes:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO t (name) VALUES (?)", [(f"user {i}",) for i in range(500)])
    db.close()
    return path.read_bytes()


def rar5() -> bytes:
    body = bytes([1, 0])  # header type 1 (main archive), flags 0
    sized = bytes([len(body)]) + body
    return b"Rar!\x1a\x07\x01\x00" + struct.pack("<I", zlib.crc32(sized)) + sized + b"\x00" * 32


def tool_output(argv: list[str], data: bytes) -> bytes:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed")
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


class TestEntropy:
    def test_random_bytes_score_near_8_and_constant_bytes_0(self) -> None:
        assert content.entropy(os.urandom(65536)) > 7.99
        assert content.entropy(bytes(4096)) == 0.0
        assert content.entropy(b"") == 0.0

    def test_text_is_structured(self) -> None:
        assert 4.0 < content.entropy(TEXT[:65536]) < 5.5

    def test_random_reference_matches_real_random_bytes(self) -> None:
        for length in (256, 4096, 65536):
            measured = sum(content.entropy(os.urandom(length)) for _ in range(20)) / 20
            assert abs(measured - content.random_entropy(length)) < 0.03
            assert content.looks_random(content.entropy(os.urandom(length)), length)

    def test_profile_entropy_is_that_of_the_sampled_bytes(self) -> None:
        data = TEXT[:50000]
        assert profile(data).entropy == pytest.approx(content.entropy(data))
        assert len(profile(data).chunk_entropies) == 13


class TestKinds:
    @pytest.mark.parametrize(
        ("make", "kind"),
        [
            (pdf, "pdf"),
            (png, "png"),
            (docx, "docx"),
            (odt, "odt"),
            (lambda: gzip.compress(TEXT), "gzip"),
            (lambda: bz2.compress(TEXT), "bzip2"),
            (lambda: lzma.compress(TEXT), "xz"),
            (rar5, "rar"),
            (lambda: Path(sys.executable).read_bytes()[:65536], "elf"),
            (lambda: TEXT, "text"),
            (lambda: json.dumps({"users": [{"id": i} for i in range(50)]}).encode(), "json"),
            (lambda: b"<?xml version='1.0'?>\n<a><b/></a>\n", "xml"),
            (lambda: b"<!DOCTYPE html>\n<html><body>hi</body></html>\n", "html"),
            (lambda: b"id,name,mail\n1,ann,a@x\n2,bob,b@x\n3,cy,c@x\n", "csv"),
            (lambda: base64.encodebytes(os.urandom(3000)), "base64"),
            (lambda: b"Salted__" + os.urandom(1000), "openssl"),
        ],
    )
    def test_kind(self, make: object, kind: str) -> None:
        data = make()  # type: ignore[operator]
        assert profile(data).kind == kind

    def test_sqlite(self, tmp_path: Path) -> None:
        assert profile(sqlite_db(tmp_path)).kind == "sqlite"

    @pytest.mark.parametrize(("name", "kind"), [("python.jpg", "jpeg"), ("python.gif", "gif")])
    def test_real_images(self, name: str, kind: str) -> None:
        if not (IMAGES / name).exists():
            pytest.skip(f"no {name} in this Python's test data")
        assert profile_of(str(IMAGES / name)).kind == kind

    def test_random_bytes_have_no_kind(self) -> None:
        assert profile(os.urandom(8192)).kind is None
        assert profile(aes(TEXT[:8192])).kind is None


class TestCompressedOk:
    @pytest.mark.parametrize(
        "make",
        [
            lambda: gzip.compress(TEXT),
            lambda: bz2.compress(TEXT),
            lambda: lzma.compress(TEXT),
            docx,
            odt,
            png,
            rar5,
        ],
    )
    def test_real_compressed_output_decodes(self, make: object) -> None:
        assert profile(make()).compressed_ok  # type: ignore[operator]

    @pytest.mark.parametrize(
        "argv", [["zstd", "-q", "-c"], ["xz", "-c"], ["bzip2", "-c"], ["gzip", "-c"]]
    )
    def test_real_compressor_tools(self, argv: list[str]) -> None:
        output = tool_output(argv, TEXT * 4)
        assert profile(output[: content.HEAD_SIZE], len(output)).compressed_ok

    def test_real_7z(self, tmp_path: Path) -> None:
        if shutil.which("7z") is None:
            pytest.skip("7z is not installed")
        (tmp_path / "a.txt").write_bytes(TEXT)
        archive = tmp_path / "a.7z"
        subprocess.run(
            ["7z", "a", "-bd", str(archive), str(tmp_path / "a.txt")],
            capture_output=True,
            check=True,
        )
        found = profile_of(str(archive))
        assert (found.kind, found.compressed_ok) == ("7z", True)

    def test_real_jpeg(self) -> None:
        if not (IMAGES / "python.jpg").exists():
            pytest.skip("no python.jpg in this Python's test data")
        assert profile_of(str(IMAGES / "python.jpg")).compressed_ok

    @pytest.mark.parametrize(
        "magic",
        [
            b"\x1f\x8b\x08\x00",
            b"BZh91AY&SY",
            b"\xfd7zXZ\x00",
            b"PK\x03\x04",
            b"7z\xbc\xaf\x27\x1c",
            b"Rar!\x1a\x07\x01\x00",
            b"\x89PNG\r\n\x1a\n",
            b"\xff\xd8\xff",
        ],
    )
    def test_random_bytes_behind_a_magic_are_not_compression(self, magic: bytes) -> None:
        for _ in range(20):
            fake = profile(magic + aes(TEXT[:40000]))
            assert fake.kind is not None
            assert not fake.compressed_ok

    def test_fake_zstd_is_rarely_accepted(self) -> None:
        accepted = sum(
            profile(b"\x28\xb5\x2f\xfd" + os.urandom(8000)).compressed_ok for _ in range(300)
        )
        assert accepted <= 9

    def test_text_is_not_compressed(self) -> None:
        assert not profile(TEXT).compressed_ok


class TestBase64:
    def test_base64_of_ciphertext_decodes_to_random(self) -> None:
        found = profile(base64.encodebytes(aes(TEXT[:40000])))
        assert found.base64 and 5.8 < found.entropy < 6.1
        assert found.base64_entropy is not None and found.base64_entropy > 7.9

    def test_base64_of_text_decodes_to_text(self) -> None:
        found = profile(base64.b64encode(TEXT[:40000]))
        assert found.base64 and found.base64_entropy is not None
        assert found.base64_entropy < 5.5

    def test_base64_of_an_archive_is_honest(self) -> None:
        assert profile(base64.encodebytes(gzip.compress(os.urandom(30000)))).compressed_ok

    def test_prose_is_not_base64(self) -> None:
        assert not profile(TEXT).base64 and profile(TEXT).base64_entropy is None


class TestSample:
    def test_large_file_reads_are_bounded_and_spread(self, tmp_path: Path) -> None:
        path = tmp_path / "big"
        path.write_bytes(os.urandom(10 * 1024 * 1024))
        head, chunks, size = sample(str(path))
        assert size == 10 * 1024 * 1024 and len(head) == content.HEAD_SIZE
        offsets = content.chunk_offsets(size)
        assert len(chunks) == len(offsets) == content.CHUNK_COUNT
        assert offsets[-1] + content.CHUNK_SIZE == size
        read_beyond_head = sum(1 for o in offsets if o + content.CHUNK_SIZE > content.HEAD_SIZE)
        assert content.HEAD_SIZE + read_beyond_head * content.CHUNK_SIZE <= 128 * 1024

    def test_small_file_chunks_tile_it(self) -> None:
        data = TEXT[:10000]
        head, chunks, size = sample(data)
        assert head == data and b"".join(chunks) == data and size == 10000

    def test_descriptor_position_does_not_move(self, tmp_path: Path) -> None:
        path = tmp_path / "f"
        path.write_bytes(TEXT * 10)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.lseek(fd, 5, os.SEEK_SET)
            by_fd = sample(fd)
            assert os.lseek(fd, 0, os.SEEK_CUR) == 5
        finally:
            os.close(fd)
        assert by_fd == sample(str(path)) == sample(path.read_bytes())

    def test_profile_of_path_equals_profile_of_sample(self, tmp_path: Path) -> None:
        path = tmp_path / "f.gz"
        path.write_bytes(gzip.compress(TEXT * 30))
        head, chunks, size = sample(str(path))
        assert profile_of(path) == profile(head, size, chunks=chunks)


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from([magic for _, magic, _ in formats.MAGIC] + [b"", b"{", b"<html"]),
    body=st.binary(max_size=5000),
    size_delta=st.integers(min_value=0, max_value=10**7),
)
def test_profile_never_raises_and_stays_in_range(
    prefix: bytes, body: bytes, size_delta: int
) -> None:
    data = prefix + body
    for size in (len(data), len(data) + size_delta):
        found = profile(data, size)
        assert 0.0 <= found.entropy <= 8.0
        assert all(0.0 <= e <= 8.0 for e in found.chunk_entropies)
        assert found.base64_entropy is None or 0.0 <= found.base64_entropy <= 8.0
