"""Small CEF and LEEF parsers written from the format descriptions, independent of the encoders."""

from __future__ import annotations

_SIMPLE = {"\\\\": "\\", "\\|": "|", "\\=": "=", "\\n": "\n", "\\r": "\r", "\\t": "\t"}


def unescape(text: str, allowed: str) -> str:
    """Undo backslash escapes; ``allowed`` lists the letters after a backslash that may occur."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        assert nxt in allowed, f"unexpected escape \\{nxt} in {text!r}"
        if nxt == "x":
            out.append(chr(int(text[i + 2 : i + 4], 16)))
            i += 4
        elif nxt == "u":
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
        else:
            out.append(_SIMPLE["\\" + nxt])
            i += 2
    return "".join(out)


def split_unescaped(text: str, sep: str, limit: int) -> list[str]:
    """Split at ``sep`` characters not escaped by a backslash, at most ``limit`` times."""
    parts: list[str] = []
    start = i = 0
    while i < len(text) and len(parts) < limit:
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == sep:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """(7 header fields, extension dict) of one CEF line."""
    parts = split_unescaped(line, "|", 7)
    assert len(parts) == 8, line
    header = [unescape(p, "\\|nr") for p in parts[:7]]
    return header, _cef_extension(parts[7])


def _unescaped_equals(text: str) -> list[int]:
    found, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == "=":
            found.append(i)
        i += 1
    return found


def _cef_extension(text: str) -> dict[str, str]:
    equals = _unescaped_equals(text)
    starts = [text.rfind(" ", 0, p) + 1 for p in equals]
    pairs: dict[str, str] = {}
    for n, (start, eq) in enumerate(zip(starts, equals, strict=True)):
        key = text[start:eq]
        assert key.isalnum(), f"bad key {key!r}"
        end = starts[n + 1] - 1 if n + 1 < len(starts) else len(text)
        assert key not in pairs
        pairs[key] = unescape(text[eq + 1 : end], "\\=nr")
    return pairs


def parse_leef(line: str) -> tuple[list[str], str, dict[str, str]]:
    """(5 header fields, delimiter, attributes) of one LEEF 2.0 line."""
    parts = split_unescaped(line, "|", 6)
    assert len(parts) == 7, line
    header = [unescape(p, "\\|nr") for p in parts[:5]]
    declared = parts[5]
    delimiter = chr(int(declared[1:], 16)) if declared.startswith("x") else declared
    attributes: dict[str, str] = {}
    for item in parts[6].split(delimiter):
        key, _, value = item.partition("=")
        assert key not in attributes
        attributes[key] = unescape(value, "\\nrtxu")
    return header, delimiter, attributes
