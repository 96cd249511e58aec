"""Syslog receivers on 127.0.0.1 for the tests: UDP, and TCP/TLS with octet counting."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

RFC5424 = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
    rb"(?P<msgid>\S+) (?P<sd>-) (?P<msg>.*)",
    re.DOTALL,
)


def parse_frames(data: bytes) -> list[bytes]:
    """Complete octet-counted frames in ``data`` (a cut-off last frame is ignored)."""
    frames, pos = [], 0
    while (space := data.find(b" ", pos)) != -1:
        length = int(data[pos:space])
        end = space + 1 + length
        if end > len(data):
            break
        frames.append(data[space + 1 : end])
        pos = end
    return frames


@dataclass
class StreamReceiver:
    """Accepts connections; ``reading`` cleared means it accepts but never reads."""

    reading: asyncio.Event = field(default_factory=asyncio.Event)
    connections: list[bytearray] = field(default_factory=list)
    server: asyncio.Server | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    accept_once: bool = False
    closed: bool = False

    port: int = 0

    def messages(self) -> list[bytes]:
        return [m for data in self.connections for m in parse_frames(bytes(data))]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        self.connections.append(buffer)
        self.writers.append(writer)
        if self.accept_once:
            assert self.server is not None
            self.server.close()  # later connections are refused: a hung, then dead, SIEM
        await self.reading.wait()
        try:
            while chunk := await reader.read(65536):
                buffer += chunk
                self.changed.set()
        except (ConnectionError, ssl.SSLError):
            pass
        writer.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        assert self.server is not None
        self.server.close()
        self.reading.set()
        for writer in self.writers:
            writer.close()
        await asyncio.sleep(0.01)
        for writer in self.writers:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
        await self.server.wait_closed()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        async with asyncio.timeout(timeout):
            while len(self.messages()) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.messages()


async def stream_receiver(
    tls: ssl.SSLContext | None = None,
    reading: bool = True,
    port: int = 0,
    accept_once: bool = False,
) -> StreamReceiver:
    """A receiver on 127.0.0.1 (``accept_once``: stop listening after the first connection)."""
    receiver = StreamReceiver(accept_once=accept_once)
    if reading:
        receiver.reading.set()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    receiver.port = int(sock.getsockname()[1])
    receiver.server = await asyncio.start_server(receiver.handle, sock=sock, ssl=tls)
    return receiver


class UdpReceiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.datagrams.append(data)
        self.arrived.set()


@dataclass
class Pki:
    ca_file: Path
    server: ssl.SSLContext


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_pki(directory: Path) -> Pki:
    """A throw-away CA and a server certificate for localhost / 127.0.0.1."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(hours=1)
    ca = (
        x509.CertificateBuilder().subject_name(_name("Yoroi test CA"))
        .issuer_name(_name("Yoroi test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(san, critical=False).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(cert.public_bytes(pem))
    (directory / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(directory / "server.pem", directory / "server.key")
    return Pki(ca_file=directory / "ca.pem", server=server)


Receivers = Callable[..., Awaitable[StreamReceiver]]
