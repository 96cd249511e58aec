"""TLS termination with the site's certificate (a self-signed one made here)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.modules.ips.proxy_support import MARKER, Client, MarkerInspector, upstream_server, url
from yoroi.modules.ips.proxy import ProxyConfig, ProxyServer
from yoroi.modules.ips.proxy_upstream import Upstream


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost / 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "site.crt", directory / "site.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_is_terminated_and_inspected(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    with upstream_server() as upstream:
        config = ProxyConfig(("127.0.0.1", 0), Upstream.parse(url(upstream)), cert=cert, key=key,
                             grace=1.0)
        proxy = ProxyServer(config, MarkerInspector())
        await proxy.start()
        client = await Client.open(proxy.address, tls=trust)
        fine = await client.request("POST", "/form", b"name=O'Brien")
        blocked = await client.request("GET", f"/?x={MARKER}")
        await client.close()
        assert await proxy.reload() is False  # no factory: nothing to reload
        await proxy.stop()
    assert fine.status == 200 and blocked.status == 403
    assert upstream.seen[0].headers["X-Forwarded-Proto"] == "https"
    assert upstream.seen[0].body == b"name=O'Brien"
