"""nftables through its JSON API, one atomic transaction at a time.

Yoroi's firewall speaks to the kernel's packet filter only through this module. It drives the
``nft`` command-line tool (Debian package ``nftables``) with its JSON interface, always with an
argument list (never a shell) and always feeding the document on stdin, so that a batch of any
size (100,000 set elements and more) fits::

    nft = Nftables()                     # or Nftables(netns="yoroi-test-1a2b") for a namespace
    nft.apply([
        {"add": {"table": {"family": "inet", "name": "yoroi"}}},
        {"add": {"chain": {"family": "inet", "table": "yoroi", "name": "input",
                           "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}},
    ])
    doc = nft.list_table("inet", "yoroi")            # {"nftables": [...]} or None
    chains = objects(doc, "chain")                   # [{"family": "inet", "name": "input", ...}]

Commands are the objects of the ``nftables`` array documented in ``libnftables-json(5)``:
``{"add": {...}}``, ``{"delete": {...}}``, ``{"flush": {...}}``, ``{"create": ...}``,
``{"insert": ...}``, ``{"replace": ...}``. :meth:`Nftables.apply` sends them as one transaction:
the kernel applies the whole batch or nothing. When nft refuses a batch, :class:`NftablesError`
(a :class:`~yoroi.errors.PlatformError`) carries nft's error lines and, when it can be known, the
index of the failing command. nft names the index itself for documents it cannot parse; for
commands the kernel refuses (a rule for a chain that does not exist) nft says only *what* failed,
so the adapter finds *where* by checking ever shorter prefixes of the batch with ``nft -c``
(which asks the kernel without committing), a binary search of a few extra runs on the error
path only.

Reading back uses JSON ``list`` commands on stdin too, so no table name ever passes through
nft's command-line parser (a name such as ``"x; flush ruleset"`` cannot become a command).
A listing is checked for repeated set elements, the mark of a dump the kernel took while it was
resizing a set's hash table (for a moment after a large insert; the dump then repeats some
elements and misses as many); such a listing is taken again after a short pause.

Errors: no ``nft`` (or no ``ip`` for a namespace) raises :class:`~yoroi.errors.Unsupported`
naming the package to install; a caller without ``CAP_NET_ADMIN`` gets
:class:`~yoroi.errors.PermissionDenied`; anything else nft refuses is :class:`NftablesError`.

:class:`NftablesBackend` is the protocol the firewall module codes against;
:class:`yoroi.platform.fakes.nftables.FakeNftables` is its in-memory twin for unit tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from yoroi.errors import PermissionDenied, PlatformError, Unsupported

Command = dict[str, Any]
"""One element of the ``nftables`` array, e.g. ``{"add": {"table": {...}}}``."""

Ruleset = dict[str, Any]
"""A whole JSON document as nft prints it: ``{"nftables": [{"metainfo": ...}, ...]}``."""

Commands = Sequence[Mapping[str, Any]] | Mapping[str, Any]
"""What :meth:`NftablesBackend.apply` accepts: a list of commands, one command, or a document."""

NFT_HINT = "install the nftables package (apt-get install nftables)"
IP_HINT = "install the iproute2 package (apt-get install iproute2)"
DEFAULT_TIMEOUT = 60.0

# Tools live in sbin, which is often missing from a non-root PATH.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_COMMAND_INDEX = re.compile(r"Parsing command array at index (\d+) failed")
_LOCATION = re.compile(r"^\S+:\d+:\d+-\d+: ")
_DENIED = ("Operation not permitted", "Permission denied")
_NO_NETNS = "Cannot open network namespace"
_BISECT_LIMIT = 4 << 20  # bytes of JSON; beyond this a failing batch is not searched
_RELIST_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 0.0)  # the last try's delay is never slept


class NftablesError(PlatformError):
    """nft refused a batch; nothing of it was applied.

    ``errors`` holds nft's error lines (without their ``internal:0:0-0:`` location prefix),
    ``index`` the position of the failing command in the batch when known, ``command`` that
    command.
    """

    def __init__(
        self,
        message: str,
        *,
        errors: Sequence[str] = (),
        index: int | None = None,
        command: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.errors = list(errors)
        self.index = index
        self.command = command


@runtime_checkable
class NftablesBackend(Protocol):
    """What the firewall needs from nftables; :class:`Nftables` and ``FakeNftables`` provide it."""

    def apply(self, commands: Commands) -> None:
        """Apply ``commands`` as one atomic transaction; raise ``PlatformError`` on refusal."""
        ...

    def check(self, commands: Commands) -> None:
        """Validate ``commands`` as :meth:`apply` would, changing nothing."""
        ...

    def list_table(self, family: str, name: str) -> Ruleset | None:
        """The table as a JSON document, or None when it does not exist."""
        ...

    def list_ruleset(self) -> Ruleset:
        """The whole ruleset as a JSON document."""
        ...

    def version(self) -> str:
        """The nftables version, e.g. ``"1.0.6"``."""
        ...


def batch(commands: Commands) -> list[Command]:
    """Normalise what :meth:`Nftables.apply` accepts into a list of commands.

    A mapping with an ``nftables`` key is a whole document (its ``metainfo`` is dropped); any
    other mapping is one command.
    """
    if isinstance(commands, Mapping):
        if "nftables" in commands:
            items = commands["nftables"]
            return [dict(c) for c in items if "metainfo" not in c]
        return [dict(commands)]
    return [dict(c) for c in commands]


def document(commands: Commands) -> Ruleset:
    """Wrap commands into the ``{"nftables": [...]}`` document nft reads."""
    return {"nftables": batch(commands)}


def objects(ruleset: Mapping[str, Any] | None, kind: str) -> list[dict[str, Any]]:
    """The objects of one kind (``"table"``, ``"chain"``, ``"set"``, ``"rule"``...) in a listing."""
    if not ruleset:
        return []
    return [item[kind] for item in ruleset.get("nftables", []) if kind in item]


def find_tool(name: str, hint: str) -> str:
    """Absolute path of a system tool, looking in sbin even when PATH lacks it."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN])
    found = shutil.which(name, path=search)
    if found is None:
        raise Unsupported(f"{name} not found: {hint}")
    return found


class Nftables:
    """The kernel's nftables, driven through ``nft -j``, optionally inside a network namespace.

    ``netns`` names a namespace created with ``ip netns add``; every nft run then goes through
    ``ip netns exec NAME``. ``timeout`` bounds each nft run in seconds.
    """

    def __init__(self, netns: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.netns = netns
        self.timeout = timeout

    def apply(self, commands: Commands) -> None:
        """Apply ``commands`` as one transaction: all of them or, on error, none."""
        self._transaction(batch(commands), check_only=False)

    def check(self, commands: Commands) -> None:
        """Validate ``commands`` against the kernel (``nft -c``) without applying them."""
        self._transaction(batch(commands), check_only=True)

    def list_table(self, family: str, name: str) -> Ruleset | None:
        """The table ``family name`` as nft lists it, or None when it does not exist."""
        return self._listing({"table": {"family": family, "name": name}})

    def list_ruleset(self) -> Ruleset:
        """The whole ruleset (of the namespace, when one is set)."""
        listing = self._listing({"ruleset": None})
        if listing is None:
            raise PlatformError("nft found no ruleset to list")
        return listing

    def version(self) -> str:
        """The version of the ``nft`` tool, e.g. ``"1.0.6"``."""
        result = self._nft(["--version"], None)
        if result.returncode != 0:
            raise self._failure(result, "nft --version")
        match = re.search(r"v(\d[\w.~+-]*)", _text(result.stdout))
        if match is None:
            raise PlatformError(f"cannot read the nft version from {_text(result.stdout)!r}")
        return match.group(1)

    def _listing(self, what: dict[str, Any]) -> Ruleset | None:
        """Run a JSON ``list`` command until the kernel gives a self-consistent dump.

        The kernel dumps a large set over several netlink messages, resuming each by skipping
        the elements already sent; if the set's hash table is resized in between (it is, for a
        while after a big insert) the dump repeats some elements and misses as many. A
        repeated element is therefore a sure sign, and the listing is simply taken again.
        """
        payload = _encode([{"list": what}])
        for delay in _RELIST_DELAYS:
            result = self._nft(["-j", "-f", "-"], payload)
            if result.returncode != 0:
                _raise_for_environment(_text(result.stderr), self.netns)
                if "No such file or directory" in _text(result.stderr):
                    return None
                raise self._failure(result, f"list {next(iter(what))}")
            listing = _decode(result.stdout)
            if not _has_repeated_elements(listing):
                return listing
            time.sleep(delay)
        raise PlatformError("the kernel kept returning inconsistent set dumps; try again")

    def _transaction(self, commands: list[Command], *, check_only: bool) -> None:
        if not commands:
            return
        payload = _encode(commands)
        result = self._send(payload, check_only=check_only)
        if result.returncode == 0:
            return
        stderr = _text(result.stderr)
        _raise_for_environment(stderr, self.netns)
        errors = _error_lines(stderr)
        index = _reported_index(stderr)
        if index is None and len(commands) == 1:
            index = 0
        elif index is None and len(payload) <= _BISECT_LIMIT:
            index = self._locate(commands)
        raise _batch_error(errors, index, commands)

    def _send(self, payload: bytes, *, check_only: bool) -> subprocess.CompletedProcess[bytes]:
        flags = ["-c"] if check_only else []
        return self._nft([*flags, "-j", "-f", "-"], payload)

    def _locate(self, commands: list[Command]) -> int | None:
        """Index of the first command whose prefix the kernel refuses (binary search)."""
        low, high = 1, len(commands)  # invariant: prefix[:high] fails, prefix[:low - 1] passes
        if self._send(_encode(commands[:high]), check_only=True).returncode == 0:
            return None
        while low < high:
            middle = (low + high) // 2
            if self._send(_encode(commands[:middle]), check_only=True).returncode == 0:
                low = middle + 1
            else:
                high = middle
        return high - 1

    def _nft(self, args: list[str], stdin: bytes | None) -> subprocess.CompletedProcess[bytes]:
        argv = [find_tool("nft", NFT_HINT), *args]
        if self.netns is not None:
            argv = [find_tool("ip", IP_HINT), "netns", "exec", self.netns, *argv]
        try:
            return subprocess.run(
                argv, input=stdin, capture_output=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise PlatformError(f"nft did not answer within {self.timeout:g} s") from exc
        except PermissionError as exc:
            raise PermissionDenied(f"cannot run {argv[0]}: {exc}") from exc

    def _failure(self, result: subprocess.CompletedProcess[bytes], what: str) -> PlatformError:
        stderr = _text(result.stderr)
        _raise_for_environment(stderr, self.netns)
        lines = _error_lines(stderr) or [f"exit status {result.returncode}"]
        return NftablesError(f"nft {what} failed: {'; '.join(lines)}", errors=lines)


def _encode(commands: Sequence[Mapping[str, Any]]) -> bytes:
    return json.dumps({"nftables": list(commands)}, separators=(",", ":")).encode()


def _decode(stdout: bytes) -> Ruleset:
    try:
        parsed = json.loads(stdout)
    except ValueError as exc:
        raise PlatformError(f"nft printed something that is not JSON: {exc}") from exc
    if not isinstance(parsed, dict) or not isinstance(parsed.get("nftables"), list):
        raise PlatformError("nft printed JSON without an 'nftables' array")
    return parsed


def _has_repeated_elements(listing: Ruleset) -> bool:
    for item in listing["nftables"]:
        body = item.get("set") or item.get("map") or {}
        elements = body.get("elem", [])
        keys = {e if isinstance(e, str | int) else json.dumps(e, sort_keys=True) for e in elements}
        if len(keys) != len(elements):
            return True
    return False


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _error_lines(stderr: str) -> list[str]:
    """nft's error messages without location prefixes or the echoed command line."""
    lines = []
    for line in stderr.splitlines():
        line = _LOCATION.sub("", line.strip())
        if line.startswith("Error: "):
            lines.append(line.removeprefix("Error: "))
    return lines


def _reported_index(stderr: str) -> int | None:
    match = _COMMAND_INDEX.search(stderr)
    return int(match.group(1)) if match else None


def _raise_for_environment(stderr: str, netns: str | None) -> None:
    """Turn a missing namespace or a missing privilege into their own errors."""
    if netns is not None and _NO_NETNS in stderr:
        raise PlatformError(f"network namespace {netns!r} does not exist (ip netns add {netns})")
    if any(marker in stderr for marker in _DENIED):
        detail = "; ".join(_error_lines(stderr)) or stderr.strip()
        raise PermissionDenied(f"nftables needs root (CAP_NET_ADMIN): {detail}")


def _batch_error(errors: list[str], index: int | None, commands: list[Command]) -> NftablesError:
    # The "Parsing ... array at index" lines only locate; the first other line says what is wrong.
    reasons = [e for e in errors if not e.startswith("Parsing ")] or errors or ["unknown error"]
    reasons = [reason.rstrip(".") for reason in reasons]
    command = commands[index] if index is not None and 0 <= index < len(commands) else None
    where = ""
    if command is not None:
        where = f" at command {index} of {len(commands)} ({_summary(command)})"
    message = f"nft refused the batch{where}: {'; '.join(reasons)}; nothing was applied"
    return NftablesError(message, errors=errors, index=index, command=command)


def _summary(command: Mapping[str, Any], limit: int = 160) -> str:
    text = json.dumps(command, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 3] + "..."
