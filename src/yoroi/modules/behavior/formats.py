"""File types by magic bytes, and whether a compressed format's bytes really decode.

No libmagic: a small table of signatures, refined for containers (a zip that is a docx), and for
the compressed and archive formats a bounded check that the stream is genuine — a gzip header in
front of random bytes is ciphertext in disguise, not compression.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable

# (offset, signature, kind); the first match wins, so longer signatures come before shorter ones.
MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"%PDF-", "pdf"),
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"),
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),
    (0, b"\x1f\x8b", "gzip"),
    (0, b"BZh", "bzip2"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"\x28\xb5\x2f\xfd", "zstd"),
    (0, b"\x04\x22\x4d\x18", "lz4"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"Rar!\x1a\x07", "rar"),
    (0, b"\x7fELF", "elf"),
    (0, b"MZ", "pe"),
    (0, b"SQLite format 3\x00", "sqlite"),
    (0, b"\x37\x7f\x06\x82", "sqlite-wal"),
    (0, b"\x37\x7f\x06\x83", "sqlite-wal"),
    (0, b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7", "sqlite-journal"),
    (257, b"ustar", "tar"),
    (0, b"RIFF", "riff"),
    (4, b"ftyp", "mp4"),
    (0, b"ID3", "mp3"),
    (0, b"OggS", "ogg"),
    (0, b"fLaC", "flac"),
    (0, b"\xca\xfe\xba\xbe", "java-class"),
    (0, b"II*\x00", "tiff"),
    (0, b"MM\x00*", "tiff"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole"),  # .doc/.xls of old Office
    (0, b"Salted__", "openssl"),
    (0, b"age-encryption.org/v1\n", "age"),
    (0, b"-----BEGIN PGP MESSAGE-----", "pgp"),
    (0, b"LUKS\xba\xbe", "luks"),
)

# Formats whose content is ciphertext by design: encrypted whatever their entropy.
ENCRYPTED_KINDS = frozenset({"openssl", "age", "pgp", "luks"})

# Zip refinements: a marker found near the start of the archive names the document type.
_ZIP_MARKERS: tuple[tuple[bytes, str], ...] = (
    (b"mimetypeapplication/vnd.oasis.opendocument.text", "odt"),
    (b"mimetypeapplication/vnd.oasis.opendocument.spreadsheet", "ods"),
    (b"mimetypeapplication/vnd.oasis.opendocument.presentation", "odp"),
    (b"mimetypeapplication/epub+zip", "epub"),
    (b"word/", "docx"),
    (b"xl/", "xlsx"),
    (b"ppt/", "pptx"),
    (b"[Content_Types].xml", "ooxml"),
    (b"META-INF/", "jar"),
)
ZIP_KINDS = frozenset({"zip", "odt", "ods", "odp", "epub", "docx", "xlsx", "pptx", "ooxml", "jar"})

_RIFF_TYPES = {b"WEBP": "webp", b"WAVE": "wav", b"AVI ": "avi"}

_MAX_OUTPUT = 64 * 1024  # decompress at most this much: enough to see a stream is genuine


def kind_by_magic(head: bytes) -> str | None:
    """The type that ``head`` (the start of a file) announces, or None."""
    for offset, signature, kind in MAGIC:
        if head.startswith(signature, offset):
            return _refine(kind, head)
    return None


def _refine(kind: str, head: bytes) -> str:
    if kind == "zip":
        return next((name for marker, name in _ZIP_MARKERS if marker in head[:4096]), "zip")
    if kind == "riff":
        return _RIFF_TYPES.get(head[8:12], "riff")
    if kind == "pe":
        return "pe" if _is_pe(head) else "mz"
    return kind


def _is_pe(head: bytes) -> bool:
    if len(head) < 0x40:
        return False
    (offset,) = struct.unpack_from("<I", head, 0x3C)
    return head.startswith(b"PE\x00\x00", offset)


def compressed_ok(kind: str | None, head: bytes, size: int) -> bool:
    """True if ``kind`` is a compressed or archive format and ``head`` really decodes as one.

    ``head`` is the start of the file, ``size`` its full length. Bounded: at most 64 KiB of
    output is produced. Kinds with no check here (text, pdf, ...) give False.
    """
    check = _CHECKS.get("zip" if kind in ZIP_KINDS else kind or "")
    if check is None:
        return False
    try:
        return check(head, size)
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError, struct.error, IndexError):
        return False


def _stream_ok(
    decompressor: zlib._Decompress | bz2.BZ2Decompressor | lzma.LZMADecompressor, data: bytes
) -> bool:
    """The stream decodes without error and produces output (or ends) within the sample."""
    out = decompressor.decompress(data, _MAX_OUTPUT)
    return bool(out) or decompressor.eof


def _gzip_ok(head: bytes, size: int) -> bool:
    return head[2:3] == b"\x08" and _stream_ok(zlib.decompressobj(31), head)


def _bzip2_ok(head: bytes, size: int) -> bool:
    decompressor = bz2.BZ2Decompressor()
    out = decompressor.decompress(head, _MAX_OUTPUT)
    # bzip2 emits nothing until a whole block (up to 900 kB) is in: without an error so far, and
    # with the block magic right, the stream is taken as genuine.
    return bool(out) or decompressor.eof or head[4:10] in (b"1AY&SY", b"\x17rE8P\x90")


def _xz_ok(head: bytes, size: int) -> bool:
    return _stream_ok(lzma.LZMADecompressor(lzma.FORMAT_XZ), head)


def _zip_ok(head: bytes, size: int) -> bool:
    if head.startswith(b"PK\x05\x06"):
        return bool(size == 22 + struct.unpack_from("<H", head, 20)[0])
    flags, method, crc, csize, usize, nlen, xlen = struct.unpack_from("<2xHH4xIIIHH", head, 4)
    if flags & 1:  # an encrypted member: its bytes cannot be told from ciphertext, by design
        return False
    start = 30 + nlen + xlen
    data = head[start : start + csize] if csize else head[start:]
    complete = csize > 0 and len(data) == csize
    if method == 0:
        return not complete or zlib.crc32(data) == crc
    if method != 8:
        return method in (12, 14)  # bzip2/lzma members: rare, taken on trust
    decompressor = zlib.decompressobj(-15)
    out = decompressor.decompress(data, _MAX_OUTPUT)
    if complete and decompressor.eof and usize == len(out):
        return bool(zlib.crc32(out) == crc)
    return bool(out) or decompressor.eof


def _zstd_ok(head: bytes, size: int) -> bool:
    """Walk the frame header and the block headers that fit in the sample.

    Without a zstd decoder in the standard library this is structural: the reserved bit, the
    block types, the block sizes against the window, the first literals. Random bytes behind
    the magic fail it about 995 times in 1000.
    """
    descriptor = head[4]
    if descriptor & 0x08:
        return False
    single = descriptor & 0x20
    fcs_bytes = (0, 2, 4, 8)[descriptor >> 6] or (1 if single else 0)
    position = 5 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3]
    if single:
        window = int.from_bytes(head[position : position + fcs_bytes], "little")
        window += 256 if fcs_bytes == 2 else 0
    else:
        exponent = 10 + (head[5] >> 3)
        window = (1 << exponent) + ((1 << exponent) // 8) * (head[5] & 7)
    return _zstd_blocks_ok(head, size, position + fcs_bytes, min(window, 128 * 1024), descriptor)


def _zstd_blocks_ok(head: bytes, size: int, position: int, limit: int, descriptor: int) -> bool:
    blocks = 0
    while position + 3 <= len(head):
        header = int.from_bytes(head[position : position + 3], "little")
        block_type, block_size = (header >> 1) & 3, header >> 3
        if block_type == 3 or block_size > limit:
            return False
        # the first compressed block cannot reuse a Huffman table ("treeless" literals)
        if blocks == 0 and block_type == 2 and position + 3 < len(head):
            if head[position + 3] & 3 == 3:
                return False
        blocks += 1
        position += 3 + (1 if block_type == 1 else block_size)
        if header & 1:  # last block: the frame must end where the file (or a checksum) does
            end = position + (4 if descriptor & 0x04 else 0)
            return len(head) < size or end <= size
    return blocks > 0 or len(head) < size


def _7z_ok(head: bytes, size: int) -> bool:
    (stored_crc,) = struct.unpack_from("<I", head, 8)
    next_offset, next_size = struct.unpack_from("<QQ", head, 12)
    return bool(zlib.crc32(head[12:32]) == stored_crc and 32 + next_offset + next_size <= size)


def _rar_ok(head: bytes, size: int) -> bool:
    if head.startswith(b"Rar!\x1a\x07\x01\x00"):  # RAR 5: CRC32 over the vint size and header
        (stored_crc,) = struct.unpack_from("<I", head, 8)
        header_size, length = _vint(head, 12)
        return bool(zlib.crc32(head[12 : 12 + length + header_size]) == stored_crc)
    # RAR 4: the main header follows the 7-byte marker; its CRC is the low 16 bits of CRC32.
    stored, header_type, _flags, header_size = struct.unpack_from("<HBHH", head, 7)
    body = head[9 : 7 + header_size]
    return bool(header_type == 0x73 and zlib.crc32(body) & 0xFFFF == stored)


def _vint(data: bytes, offset: int) -> tuple[int, int]:
    """A RAR 5 variable-length integer at ``offset``: (value, bytes used)."""
    value = 0
    for used in range(10):
        byte = data[offset + used]
        value |= (byte & 0x7F) << (7 * used)
        if not byte & 0x80:
            return value, used + 1
    raise ValueError("vint longer than 10 bytes")


def _png_ok(head: bytes, size: int) -> bool:
    """Every chunk that fits in the sample carries a right CRC32 (at least IHDR)."""
    position, checked = 8, 0
    while position + 12 <= len(head):
        (length,) = struct.unpack_from(">I", head, position)
        end = position + 8 + length
        if end + 4 > len(head):
            break
        (stored,) = struct.unpack_from(">I", head, end)
        if zlib.crc32(head[position + 4 : end]) != stored:
            return False
        checked += 1
        position = end + 4
    return checked > 0


_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


# start-of-frame markers (SOF0-SOF15 but DHT C4, JPG C8, DAC CC)
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_ok(head: bytes, size: int) -> bool:
    """Walk the marker segments; inside scan data, 0xFF may only be stuffed or a marker.

    An end-of-image marker counts only after a frame and a scan: random bytes behind the
    SOI magic hit ``FF D9`` early often enough to fool a plain walk.
    """
    position = 2
    framed = scanned = False
    while position + 2 <= len(head):
        if head[position] != 0xFF:
            return False
        marker = head[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if marker < 0xC0 or marker == 0xD8:
            return False
        if marker == 0xD9:
            return framed and scanned
        if position + 4 > len(head):
            break
        (length,) = struct.unpack_from(">H", head, position + 2)
        if length < 2:
            return False
        position += 2 + length
        framed = framed or marker in _JPEG_FRAMES
        if marker == 0xDA:
            scanned = framed
            position = _skip_scan(head, position)
            if position < 0:
                return False
    return position > 2 and len(head) < size  # walked off a truncated sample, not off the file


def _skip_scan(head: bytes, position: int) -> int:
    """Offset of the marker ending the scan data at ``position``; -1 if the data is invalid."""
    while True:
        position = head.find(b"\xff", position)
        if position < 0 or position + 1 >= len(head):
            return len(head)
        follower = head[position + 1]
        if follower == 0x00 or 0xD0 <= follower <= 0xD7 or follower == 0xFF:
            position += 2 if follower != 0xFF else 1
            continue
        return position if follower >= 0xC0 else -1


_CHECKS: dict[str, Callable[[bytes, int], bool]] = {
    "gzip": _gzip_ok,
    "bzip2": _bzip2_ok,
    "xz": _xz_ok,
    "zip": _zip_ok,
    "zstd": _zstd_ok,
    "7z": _7z_ok,
    "rar": _rar_ok,
    "png": _png_ok,
    "jpeg": _jpeg_ok,
}
COMPRESSED_KINDS = frozenset(_CHECKS) | ZIP_KINDS
