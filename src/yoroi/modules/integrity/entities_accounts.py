"""Entity collectors for accounts: users, groups, sudoers rules and SSH authorized keys.

Password hashes are never recorded: only the state of the password (``set``, ``empty``,
``locked``, ``disabled``, ``unknown``) and the day it last changed, which moves when the hash
does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import posixpath
import re
from dataclasses import dataclass

from yoroi.modules.integrity.entities_context import Context, Record, Records, logical_lines

_KEY_TYPE = re.compile(r"^(?:ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+)(?:@\S+)?$")
_INCLUDE = re.compile(r"^[@#](include|includedir)\s+(.+)$")
_SUDO_COMMENT = re.compile(r"(?:^|\s)#(?!\d)(?!include).*$")
_MAX_INCLUDE_DEPTH = 8


@dataclass(frozen=True, slots=True)
class _Account:
    name: str
    password: str
    uid: int
    gid: int
    gecos: str
    home: str
    shell: str


def _accounts(ctx: Context) -> list[_Account]:
    accounts: list[_Account] = []
    for number, line in enumerate((ctx.read_text("/etc/passwd") or "").splitlines(), 1):
        fields = line.split(":")
        if not line or line.startswith("#"):
            continue
        if len(fields) != 7 or not fields[2].isdigit() or not fields[3].isdigit():
            ctx.notice(f"/etc/passwd line {number}: not name:pw:uid:gid:gecos:home:shell, skipped")
            continue
        name, password, uid, gid, gecos, home, shell = fields
        accounts.append(_Account(name, password, int(uid), int(gid), gecos, home, shell))
    return accounts


def password_state(field: str) -> str:
    """What a passwd/shadow password field allows, without keeping the hash."""
    if field == "":
        return "empty"
    if field.startswith("!"):
        return "locked"
    if field.startswith("*") or field in {"x", "NP"} or len(field) < 13 and "$" not in field:
        return "disabled"
    return "set"


def _shadow(ctx: Context) -> dict[str, list[str]] | None:
    text = ctx.read_text("/etc/shadow")
    if text is None:
        return None
    return {fields[0]: fields for line in text.splitlines() if len(fields := line.split(":")) >= 3}


def _day(fields: list[str] | None, index: int) -> int | None:
    if fields is None or len(fields) <= index or not fields[index].isdigit():
        return None
    return int(fields[index])


def collect_users(ctx: Context) -> Records:
    """Users of /etc/passwd, with the password state from /etc/shadow."""
    shadow = _shadow(ctx)
    users: Records = {}
    for account in _accounts(ctx):
        if account.name in users:
            ctx.notice(f"/etc/passwd: user {account.name} listed twice, the first kept")
            continue
        entry = shadow.get(account.name) if shadow is not None else None
        if account.password != "x":
            state = password_state(account.password)
        elif entry is not None:
            state = password_state(entry[1])
        else:
            state = "unknown"
        users[account.name] = {
            "uid": account.uid, "gid": account.gid, "gecos": account.gecos,
            "home": account.home, "shell": account.shell, "password": state,
            "password_changed": _day(entry, 2), "expires": _day(entry, 7),
        }  # fmt: skip
    return users


def collect_groups(ctx: Context) -> Records:
    """Groups of /etc/group with their members (sorted)."""
    groups: Records = {}
    for number, line in enumerate((ctx.read_text("/etc/group") or "").splitlines(), 1):
        fields = line.split(":")
        if not line or line.startswith("#"):
            continue
        if len(fields) != 4 or not fields[2].isdigit():
            ctx.notice(f"/etc/group line {number}: not name:pw:gid:members, skipped")
            continue
        members = sorted({m for m in fields[3].split(",") if m})
        groups.setdefault(fields[0], {"gid": int(fields[2]), "members": members})
    return groups


def _sudoers_file(ctx: Context, path: str, depth: int, rules: dict[str, set[str]]) -> None:
    text = ctx.read_text(path, quiet_missing=depth > 0)
    if text is None:
        return
    for line in logical_lines("\n".join(_SUDO_COMMENT.sub("", raw) for raw in text.splitlines())):
        rules.setdefault(line, set()).add(path)
        include = _INCLUDE.match(line)
        if include is None:
            continue
        if depth >= _MAX_INCLUDE_DEPTH:
            ctx.notice(f"{path}: includes nested deeper than {_MAX_INCLUDE_DEPTH}, not followed")
            continue
        target = posixpath.join(posixpath.dirname(path), include.group(2).strip('"'))
        if include.group(1) == "include":
            _sudoers_file(ctx, target, depth + 1, rules)
            continue
        for name in ctx.listdir(target):
            if not name.endswith("~") and "." not in name:  # sudo skips these names
                _sudoers_file(ctx, f"{target}/{name}", depth + 1, rules)


def collect_sudoers(ctx: Context) -> Records:
    """Effective lines of /etc/sudoers and the files it includes, each with its files."""
    rules: dict[str, set[str]] = {}
    _sudoers_file(ctx, "/etc/sudoers", 0, rules)
    return {line: {"files": sorted(files)} for line, files in rules.items()}


def fingerprint(blob_b64: str) -> str | None:
    """OpenSSH's ``SHA256:...`` fingerprint of a base64 public key, None when not base64."""
    try:
        blob = base64.b64decode(blob_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _split_options(line: str) -> tuple[str, str]:
    """(options, rest) of an authorized_keys line: options end at the first unquoted blank."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char in " \t" and not quoted:
            return line[:index], line[index:].strip()
    return line, ""


def parse_authorized_key(line: str) -> Record | None:
    """Type, fingerprint, options and comment of one authorized_keys line; None if malformed."""
    options = ""
    if not _KEY_TYPE.match(line.split(None, 1)[0]):
        options, line = _split_options(line)
    fields = line.split(None, 2)
    if len(fields) < 2 or not _KEY_TYPE.match(fields[0]):
        return None
    digest = fingerprint(fields[1])
    if digest is None:
        return None
    comment = fields[2] if len(fields) > 2 else ""
    return {"type": fields[0], "fingerprint": digest, "options": options, "comment": comment}


def collect_authorized_keys(ctx: Context) -> Records:
    """Every key of every user's authorized_keys files, keyed ``user:SHA256:...``."""
    keys: Records = {}
    seen: set[str] = set()
    for account in _accounts(ctx):
        for relative in ctx.options.authorized_keys_files:
            path = posixpath.normpath(posixpath.join(account.home or "/", relative))
            if path in seen:
                continue
            seen.add(path)
            _keys_of(ctx, account.name, path, keys)
    return keys


def _keys_of(ctx: Context, user: str, path: str, keys: Records) -> None:
    text = ctx.read_text(path)
    for number, line in enumerate((text or "").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key = parse_authorized_key(line)
        if key is None:
            ctx.notice(f"{path} line {number}: not a public key, skipped")
            continue
        # sshd uses the first line that matches a key, so a repeat is not effective
        keys.setdefault(f"{user}:{key['fingerprint']}", {"user": user, "file": path, **key})


COLLECTORS = {
    "user": collect_users,
    "group": collect_groups,
    "sudoers": collect_sudoers,
    "authorized_key": collect_authorized_keys,
}
