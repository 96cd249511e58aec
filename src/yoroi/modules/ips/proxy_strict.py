"""What the reverse proxy refuses as a hardened HTTP server would, whatever the rules say.

Two kinds, as Apache sorts them in front of ModSecurity:

- a **malformed** request (:func:`malformed`, :func:`head_fault`) never reaches the rules: a
  version that is not HTTP/1.x, a request target that is neither origin-form nor absolute-form
  (authority-form only for CONNECT, ``*`` only for OPTIONS, never a fragment), an empty or
  invalid ``Host``, both ``Content-Length`` and ``Transfer-Encoding`` (RFC 9112 6.3: the
  request-smuggling shape), bare LF or CR line ends and obs-fold in the head. Answered 400.
- a well-formed request the proxy does **not serve** (:func:`unserved`) is refused after the
  rules have inspected it, so that they still record it: CONNECT and TRACE (405), an HTTP
  version other than 1.0 and 1.1 (505).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass
from typing import Any

import h11

from yoroi.modules.ips.proxy_upstream import READ_SIZE, H11Stream, PeerClosed

REFUSED_METHODS = frozenset({b"CONNECT", b"TRACE"})
ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"  # the Allow header of a 405
SERVED_VERSIONS = frozenset({b"1.0", b"1.1"})

# A host name or IPv4 address (the characters Apache accepts in a host name), or an IPv6
# literal; then an optional port. No percent-encoding: DNS names never need it.
HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{0,5})?")
AUTHORITY = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}")
ABSOLUTE = re.compile(rb"https?://", re.IGNORECASE)


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused and with which status."""

    status: int
    reason: str


def malformed(request: h11.Request, fault: str | None = None) -> Refusal | None:
    """The refusal of a request whose line or headers a strict HTTP/1.1 server rejects;
    ``fault`` is what :func:`head_fault` found in its raw head."""
    if fault is not None:
        return Refusal(400, fault)
    if request.http_version.startswith(b"0."):
        return Refusal(400, f"HTTP/{request.http_version.decode()} request line")
    return bad_target(request.method, request.target) or bad_headers(request)


def bad_target(method: bytes, target: bytes) -> Refusal | None:
    """A request target of the wrong form for its method (RFC 9112 3.2)."""
    if b"#" in target:
        return Refusal(400, "fragment in the request target")
    if method == b"CONNECT":
        return None if AUTHORITY.fullmatch(target) else Refusal(
            400, "CONNECT target is not host:port")
    if target == b"*":
        return None if method == b"OPTIONS" else Refusal(400, "'*' target without OPTIONS")
    # A bare query (Apache lets it through to the rules) goes upstream under the root path.
    if target.startswith((b"/", b"?")) or ABSOLUTE.match(target):
        return None
    return Refusal(400, "request target is neither a path nor an absolute URL")


def upstream_target(target: bytes) -> bytes:
    """The request target as the upstream gets it: a bare query is given the root path."""
    return b"/" + target if target.startswith(b"?") else target


def bad_headers(request: h11.Request) -> Refusal | None:
    """An invalid Host, or message framing a proxy must not pass on."""
    hosts = [value for name, value in request.headers if name == b"host"]
    if hosts and not HOST.fullmatch(hosts[0]):
        return Refusal(400, "empty or invalid Host header")
    framing = {name for name, _ in request.headers} & {b"content-length", b"transfer-encoding"}
    if len(framing) == 2:
        return Refusal(400, "both Content-Length and Transfer-Encoding")
    if b"transfer-encoding" in framing and request.http_version == b"1.0":
        return Refusal(400, "Transfer-Encoding in an HTTP/1.0 request")
    return None


def unserved(request: h11.Request) -> Refusal | None:
    """The refusal of a well-formed request that the proxy does not serve."""
    if request.http_version not in SERVED_VERSIONS:
        return Refusal(505, f"HTTP/{request.http_version.decode()} not supported")
    if request.method in REFUSED_METHODS:
        return Refusal(405, f"method {request.method.decode()} not allowed")
    return None


def head_end(data: bytes) -> int:
    """The length of the request head at the start of ``data`` (up to its last line's LF,
    without the empty line), or -1 while it is incomplete."""
    ends = [at for at in (data.find(b"\n\r\n"), data.find(b"\n\n")) if at >= 0]
    return min(ends) + 1 if ends else -1


def head_fault(head: bytes) -> str | None:
    """Line-end faults h11 lets through: bare LF, bare CR, obs-fold (RFC 9112 2.2, 5.2)."""
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf:
        return "bare LF line end in the request head"
    if head.count(b"\r") != crlf:
        return "bare CR in the request head"
    if b"\n " in head or b"\n\t" in head:
        return "obs-fold (folded header line)"
    return None


class ClientStream(H11Stream):
    """The client side of the proxy: also checks the raw bytes of each request head, which
    h11 reads leniently; ``fault`` says what is wrong with the last one, if anything."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_header_bytes: int = 64 * 1024) -> None:
        super().__init__(h11.SERVER, reader, writer, max_header_bytes)
        self.max_header_bytes = max_header_bytes
        self.fault: str | None = None

    async def next_event(self, timeout: float) -> Any:
        """The next h11 event (a request's head checked first)."""
        if self.conn.their_state is h11.IDLE:
            await self.check_head(timeout)
        return await super().next_event(timeout)

    async def check_head(self, timeout: float) -> None:
        """Read until the next request head is buffered whole (or cannot be), and check it."""
        self.fault = None
        while True:
            data, closed = self.conn.trailing_data
            end = head_end(data)
            if end >= 0:
                self.fault = head_fault(data[:end])
                return
            if closed or len(data) > self.max_header_bytes:
                return  # h11 answers for an unfinished or oversized head
            async with asyncio.timeout(timeout):
                try:
                    chunk = await self.reader.read(READ_SIZE)
                except (ConnectionError, ssl.SSLError) as exc:
                    raise PeerClosed(str(exc)) from exc
            self.conn.receive_data(chunk)
