"""Unified diffs of text configuration files, with secret-looking values masked.

:func:`diff_text` compares the old content (the caller keeps it: :class:`TextCopies` holds
bounded copies of small text files taken at baseline time) with the new one and renders a
unified diff in which secrets never appear. Lines are compared raw and masked only for
display, so a changed password still shows as a changed line -- ``-password=<masked>``,
``+password=<masked>`` -- without either value.

What is masked (:func:`mask_lines`):

- the value of a key whose last word looks secret: ``password``, ``passwd``, ``passphrase``,
  ``secret``, ``token``, ``salt``, ``credential(s)``, ``apikey``/``api_key``, ``authorization``,
  and ``key`` when written ``key=``/``key:`` (``AUTH_KEY = ...``, ``"api-key": ...``), in
  ``key=value``, ``key: value``, ``key value`` and PHP ``define('DB_PASSWORD', '...')`` forms.
  A key whose secret word is not the last one (``PasswordAuthentication yes``,
  ``HostKey /etc/ssh/ssh_host_rsa_key``, ``AuthorizedKeysFile``) is a setting, not a secret;
- everything between ``-----BEGIN ... PRIVATE KEY-----`` and its ``-----END`` line;
- the password hash of shadow-like lines (``name:$6$...:...``; a leading ``!`` or ``*`` stays);
- the password of a URL (``scheme://user:secret@host``).

Limits: masking is by pattern, so a secret under an innocent name (``DB_CONN=...``) shows, and
an innocent value under a secret-looking name is hidden.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MASK", "TextCopies", "diff_text", "is_text", "mask_lines"]

MASK = "<masked>"
_SECRET_WORDS = frozenset({
    "password", "passwd", "pass", "pwd", "passphrase", "secret", "token", "salt", "credential",
    "credentials", "apikey", "authorization",
})  # fmt: skip
_ASSIGN = re.compile(
    r"""^(?P<head>[#;]*\s*(?:export\s+)?(?P<q>["']?)(?P<key>[A-Za-z_][\w.-]*)(?P=q)"""
    r"""\s*(?P<sep>[=:]|\s)\s*)(?P<value>\S.*?)(?P<tail>[;,]?\s*)$"""
)
_PHP_DEFINE = re.compile(
    r"""^(?P<head>\s*define\(\s*(?P<q>["'])(?P<key>[\w-]+)(?P=q)\s*,\s*)"""
    r"""(?P<value>.*?)(?P<tail>\s*\)\s*;?\s*)$""",
    re.IGNORECASE,
)
_SHADOW = re.compile(
    r"^(?P<head>[^:\s#]+:[!*]?)(?P<value>\$[^:]+|[A-Za-z0-9./]{13,})(?P<tail>:.*)$"
)
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]+:)(?P<value>[^@/\s]+)(?=@)", re.IGNORECASE
)
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*-----")
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def _secret_key(key: str, separator: str) -> bool:
    """The key's last word is secret-looking (``key`` itself only in ``key=``/``key:``)."""
    words = [w.lower() for w in _WORDS.findall(key)]
    if not words:
        return False
    last = words[-1]
    if last in _SECRET_WORDS or (len(words) > 1 and words[-2:] == ["api", "key"]):
        return True
    return last == "key" and separator in "=:,"


def _mask_line(line: str) -> str:
    for pattern, separator in ((_PHP_DEFINE, ","), (_ASSIGN, None)):
        match = pattern.match(line)
        sep = separator or (match.group("sep") if match else "")
        if match and _secret_key(match.group("key"), sep.strip() or " "):
            return f"{match.group('head')}{MASK}{match.group('tail')}"
    match = _SHADOW.match(line)
    if match:
        return f"{match.group('head')}{MASK}{match.group('tail')}"
    return _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}", line)


def mask_lines(lines: Sequence[str]) -> list[str]:
    """``lines`` with secret-looking values replaced by ``<masked>`` (see the module doc)."""
    masked: list[str] = []
    in_key = False
    for line in lines:
        if in_key:
            in_key = not _PEM_END.search(line)
            masked.append(line if not in_key else MASK)
        elif _PEM_BEGIN.search(line):
            in_key = not _PEM_END.search(line.split("PRIVATE KEY", 1)[1])
            masked.append(line)
        else:
            masked.append(_mask_line(line))
    return masked


def diff_text(old: str, new: str, path: str, *, context: int = 3) -> str:
    """A unified diff of ``old`` -> ``new`` labelled with ``path``; "" when they are equal."""
    old_raw, new_raw = old.splitlines(), new.splitlines()
    old_shown, new_shown = mask_lines(old_raw), mask_lines(new_raw)
    matcher = difflib.SequenceMatcher(None, old_raw, new_raw, autojunk=False)
    out: list[str] = []
    for group in matcher.get_grouped_opcodes(context):
        if not out:
            out += [f"--- {path}", f"+++ {path}"]
        out.append(_hunk_header(group))
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out += [f" {line}" for line in new_shown[j1:j2]]
                continue
            out += [f"-{line}" for line in old_shown[i1:i2]]
            out += [f"+{line}" for line in new_shown[j1:j2]]
    return "\n".join(out) + "\n" if out else ""


def _hunk_header(group: Sequence[tuple[str, int, int, int, int]]) -> str:
    first, last = group[0], group[-1]
    return f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@"


def _range(start: int, stop: int) -> str:
    length = stop - start
    if length == 1:
        return str(start + 1)
    return f"{start + 1 if length else start},{length}"


def is_text(data: bytes) -> bool:
    """True for UTF-8 without NUL bytes: what a configuration file looks like."""
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class TextCopies:
    """Bounded raw copies of small text files, kept so that a later change can be diffed.

    A copy is kept only for a regular text file of at most ``max_file_bytes``, and only while
    all copies together stay within ``max_total_bytes`` (further files are refused, not
    evicted, so which files have copies does not depend on the order of changes). Copies hold
    the raw text, secrets included: the directory is created owner-only (0700) and each copy
    0600; masking happens when a diff is shown.
    """

    def __init__(
        self, root: Path, *, max_file_bytes: int = 64 * 1024, max_total_bytes: int = 64 << 20
    ) -> None:
        self.root = root
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._total = sum(p.stat().st_size for p in root.iterdir() if p.is_file())

    def keep(self, path: str) -> bool:
        """Copy ``path`` now (replacing an older copy); False when it does not qualify."""
        data = _read_small(path, self.max_file_bytes)
        if data is None or not is_text(data):
            self.forget(path)
            return False
        target = self._slot(path)
        old = target.stat().st_size if target.exists() else 0
        if self._total - old + len(data) > self.max_total_bytes:
            return False
        tmp = target.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
        self._total += len(data) - old
        return True

    def get(self, path: str) -> str | None:
        """The kept text of ``path``, or None."""
        try:
            return self._slot(path).read_bytes().decode("utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def forget(self, path: str) -> None:
        """Drop the copy of ``path`` if there is one."""
        target = self._slot(path)
        try:
            size = target.stat().st_size
            target.unlink()
        except FileNotFoundError:
            return
        self._total -= size

    @property
    def total_bytes(self) -> int:
        """Bytes held by all copies."""
        return self._total

    def _slot(self, path: str) -> Path:
        return self.root / hashlib.sha256(os.fsencode(path)).hexdigest()


def _read_small(path: str, limit: int) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    return data if len(data) <= limit else None
