"""Named network namespaces: create, join with veth pairs, run commands inside, delete.

A network namespace is a private copy of the network stack (interfaces, addresses, routes,
nftables ruleset). Yoroi uses them so that firewall code can be exercised against the real
kernel without touching the host's own ruleset, and later for ``yoroi firewall --netns NAME``::

    with NetNamespace() as a, NetNamespace() as b:   # yoroi-test-<random>, lo up
        a.add_veth_pair(b, "10.199.3.1/30", "10.199.3.2/30")
        server = b.popen([sys.executable, "-m", "http.server", "8080"])
        a.run(["curl", "http://10.199.3.2:8080/"], timeout=5)
    # both namespaces deleted, processes started with popen() terminated

Everything goes through ``ip`` (Debian package ``iproute2``) with argument lists, never a shell.
The veth pair is created *inside* the first namespace with its peer moved straight into the
second (``ip -n A link add ... peer name ... netns B``), so neither end nor its address ever
appears on the host. Leaving the ``with`` block terminates the processes this object started
(by pid, never by name), closes their pipes and deletes the namespace, also when the block
raised; a namespace that was only *attached* (``create=False``) is left alone.

Errors: no ``ip`` raises :class:`~yoroi.errors.Unsupported`; a caller without ``CAP_SYS_ADMIN``
gets :class:`~yoroi.errors.PermissionDenied`; other refusals are
:class:`~yoroi.errors.PlatformError` with ip's message.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from yoroi.errors import PermissionDenied, PlatformError
from yoroi.platform.linux.nftables import IP_HINT, find_tool

TEST_PREFIX = "yoroi-test-"
NETNS_DIR = Path("/run/netns")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DENIED = ("Operation not permitted", "Permission denied")
_STOP_GRACE = 3.0


def namespaces() -> list[str]:
    """Names of the namespaces ``ip netns`` knows (the entries of ``/run/netns``)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def exists(name: str) -> bool:
    """Whether a named network namespace exists."""
    return (NETNS_DIR / name).exists()


def _check_name(name: str) -> str:
    if not _NAME.match(name) or name in {".", ".."}:
        raise PlatformError(f"invalid network namespace name {name!r}: use letters, digits, _.-")
    return name


def _ip(args: Sequence[str], *, timeout: float = 30.0) -> str:
    """Run ``ip ARGS``; return stdout, or raise the matching error with ip's message."""
    argv = [find_tool("ip", IP_HINT), *args]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PlatformError(f"{' '.join(argv)} did not finish within {timeout:g} s") from exc
    if result.returncode != 0:
        message = f"ip {' '.join(args)} failed: {result.stderr.strip() or result.returncode}"
        if any(marker in result.stderr for marker in _DENIED):
            raise PermissionDenied(f"{message} (network namespaces need root)")
        raise PlatformError(message)
    return result.stdout


class NetNamespace:
    """A named network namespace, created on entry and deleted on exit.

    ``name`` defaults to ``yoroi-test-<random hex>``. With ``create=False`` the object attaches
    to an existing namespace and never deletes it. :meth:`run` and :meth:`popen` execute a
    command inside it (``ip netns exec``).
    """

    def __init__(self, name: str | None = None, *, create: bool = True) -> None:
        self.name = _check_name(name or f"{TEST_PREFIX}{secrets.token_hex(4)}")
        self.owned = create
        self.created = False
        self._children: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> NetNamespace:
        if self.owned:
            self.create()
        elif not exists(self.name):
            raise PlatformError(f"network namespace {self.name!r} does not exist")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NetNamespace({self.name!r}, created={self.created})"

    def create(self) -> None:
        """Add the namespace and bring its loopback up; on failure nothing is left behind."""
        _ip(["netns", "add", self.name])
        self.created = True
        try:
            _ip(["-n", self.name, "link", "set", "lo", "up"])
        except BaseException:
            self.delete()
            raise

    def close(self) -> None:
        """Terminate the processes started here, then delete the namespace if we created it."""
        try:
            self.stop_children()
        finally:
            if self.created:
                self.delete()

    def delete(self) -> None:
        """Delete the namespace (``ip netns del``); its interfaces go with it."""
        if exists(self.name):
            _ip(["netns", "del", self.name])
        self.created = False

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside this namespace."""
        return [find_tool("ip", IP_HINT), "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], *, timeout: float = 30.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside the namespace (``capture_output`` defaults to True)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("check", False)
        return subprocess.run(self.exec_argv(argv), timeout=timeout, **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running process (a server) inside the namespace.

        The process is terminated when the namespace object closes, if it still runs, and
        the pipes opened for it are closed then.
        """
        process: subprocess.Popen[Any] = subprocess.Popen(self.exec_argv(argv), **kwargs)
        self._children.append(process)
        return process

    def stop_children(self) -> None:
        """Terminate (then kill) what :meth:`popen` started, and close those processes' pipes."""
        for process in self._children:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=_STOP_GRACE)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        self._children.clear()

    def ip(self, *args: str) -> str:
        """Run ``ip -n NAME ARGS`` and return its output."""
        return _ip(["-n", self.name, *args])

    def pids(self) -> list[int]:
        """Pids of the processes running inside the namespace (``ip netns pids``)."""
        return [int(p) for p in _ip(["netns", "pids", self.name]).split()]

    def add_veth_pair(
        self,
        peer: NetNamespace,
        address: str,
        peer_address: str,
        *,
        name: str | None = None,
        peer_name: str | None = None,
    ) -> tuple[str, str]:
        """Join this namespace to ``peer`` with a veth pair; return the two interface names.

        ``address`` / ``peer_address`` are CIDR addresses such as ``10.199.0.1/30`` and
        ``10.199.0.2/30``. The pair is created inside this namespace and its peer end moved
        directly into ``peer``: nothing appears in the host's namespace.
        """
        tag = secrets.token_hex(3)
        name = name or f"yv{tag}a"
        peer_name = peer_name or f"yv{tag}b"
        self.ip("link", "add", name, "type", "veth", "peer", "name", peer_name, "netns", peer.name)
        for space, ifname, cidr in ((self, name, address), (peer, peer_name, peer_address)):
            space.ip("addr", "add", cidr, "dev", ifname)
            space.ip("link", "set", ifname, "up")
        return name, peer_name
