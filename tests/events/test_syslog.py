from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path

import pytest

from yoroi.errors import ConfigError, SinkError
from yoroi.events import Event, Severity, now_ms
from yoroi.events.sinks import SyslogSink
from yoroi.events.syslog import format_rfc5424, octet_frame, rfc3339_ms, truncate_utf8

from .conftest import sample_events
from .parsers import parse_cef, parse_leef
from .receivers import RFC5424, Receivers, UdpReceiver, make_pki

LOCAL = ("127.0.0.1", 0)


def test_rfc5424_header() -> None:
    msg = format_rfc5424("hello wörld", time_ms=1_700_000_000_123, severity=Severity.HIGH,
                         facility=20, hostname="web 01", procid="77", msgid="DetectionFinding",
                         bom=True)  # fmt: skip
    assert msg == (
        b"<163>1 2023-11-14T22:13:20.123Z web_01 yoroi 77 DetectionFinding - "
        + b"\xef\xbb\xbf" + "hello wörld".encode()
    )  # fmt: skip


def test_severity_maps_to_syslog_levels() -> None:
    pri = {s.caption: int(RFC5424.match(format_rfc5424("m", time_ms=0, severity=s, facility=0))
                              ["pri"]) for s in Severity}  # type: ignore[index]  # fmt: skip
    assert pri == {"Unknown": 5, "Informational": 6, "Low": 5, "Medium": 4, "High": 3,
                   "Critical": 2, "Fatal": 1, "Other": 5}  # fmt: skip


def test_timestamp_is_rfc3339_with_milliseconds() -> None:
    stamp = rfc3339_ms(now_ms())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    assert dt.datetime.fromisoformat(stamp).tzinfo is not None


def test_framing_and_safe_truncation() -> None:
    assert octet_frame(b"abc") == b"3 abc"
    cut = truncate_utf8("aé€".encode(), 4)  # a(1) é(2) €(3): € does not fit
    assert cut.decode() == "aé"


def _check(raw: bytes, event: Event, msgid: str) -> bytes:
    match = RFC5424.fullmatch(raw)
    assert match, raw
    assert int(match["pri"]) == 20 * 8 + {1: 6, 3: 4, 4: 3, 5: 2}.get(int(event.severity_id), 5)
    assert match["app"] == b"yoroi" and match["msgid"] == msgid.encode()
    assert match["ts"].decode() == rfc3339_ms(event.time)
    return match["msg"]


async def test_udp_one_datagram_per_event() -> None:
    loop = asyncio.get_running_loop()
    transport, receiver = await loop.create_datagram_endpoint(
        UdpReceiver, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    sink = SyslogSink("127.0.0.1", port, "udp", "cef", hostname="web-01")
    events = sample_events()
    await sink.open()
    await sink.write(events)
    async with asyncio.timeout(5):
        while len(receiver.datagrams) < len(events):
            receiver.arrived.clear()
            await receiver.arrived.wait()
    for raw, event in zip(receiver.datagrams, events, strict=True):
        header, ext = parse_cef(_check(raw, event, type(event).__name__).decode())
        assert ext["msg"] == event.message
    await sink.close()
    transport.close()


async def test_udp_cuts_long_messages() -> None:
    loop = asyncio.get_running_loop()
    transport, receiver = await loop.create_datagram_endpoint(
        UdpReceiver, local_addr=("127.0.0.1", 0)
    )
    sink = SyslogSink("127.0.0.1", transport.get_extra_info("sockname")[1], "udp", "json",
                      max_datagram=480)  # fmt: skip
    event = sample_events()[0]
    await sink.write([event])
    await asyncio.wait_for(receiver.arrived.wait(), 5)
    assert len(receiver.datagrams[0]) == 480
    await sink.close()
    transport.close()


@pytest.mark.parametrize("wire", ["cef", "leef", "json"])
async def test_tcp_octet_counting(wire: str, receivers: Receivers) -> None:
    receiver = await receivers()
    sink = SyslogSink("127.0.0.1", receiver.port, "tcp", wire, leef_delimiter="^")  # type: ignore[arg-type]
    events = sample_events()
    await sink.open()
    await sink.write(events)
    received = await receiver.wait_for(len(events))
    for raw, event in zip(received, events, strict=True):
        msg = _check(raw, event, type(event).__name__).decode()
        if wire == "cef":
            assert parse_cef(msg)[1]["msg"] == event.message
        elif wire == "leef":
            assert parse_leef(msg)[2]["msg"] == event.message
        else:
            assert f'"class_uid":{type(event).class_uid}' in msg
    await sink.close()


async def test_tls_with_a_private_ca(tmp_path: Path, receivers: Receivers) -> None:
    pki = make_pki(tmp_path)
    receiver = await receivers(tls=pki.server)
    sink = SyslogSink("127.0.0.1", receiver.port, "tls", "cef", ca_file=str(pki.ca_file))
    events = sample_events()
    await sink.write(events)
    received = await receiver.wait_for(len(events))
    payloads = [
        _check(r, e, type(e).__name__).decode() for r, e in zip(received, events, strict=True)
    ]
    assert [parse_cef(p)[1]["msg"] for p in payloads] == [e.message for e in events]
    await sink.close()


async def test_tls_checks_the_server_name_by_default(tmp_path: Path, receivers: Receivers) -> None:
    pki = make_pki(tmp_path)
    receiver = await receivers(tls=pki.server)
    wrong = SyslogSink("127.0.0.1", receiver.port, "tls", ca_file=str(pki.ca_file),
                       server_name="siem.example.org")  # fmt: skip
    with pytest.raises(SinkError, match="cannot connect"):
        await wrong.write(sample_events()[:1])
    unknown_ca = SyslogSink("127.0.0.1", receiver.port, "tls")
    with pytest.raises(SinkError, match="certificate verify failed"):
        await unknown_ca.write(sample_events()[:1])
    unchecked = SyslogSink("127.0.0.1", receiver.port, "tls", verify=False)
    await unchecked.write(sample_events()[:1])
    assert len(await receiver.wait_for(1)) == 1
    await unchecked.close()


async def test_refused_connection_is_a_sink_error_and_reconnects_later(
    receivers: Receivers,
) -> None:
    receiver = await receivers()
    port = receiver.port
    await receiver.close()
    sink = SyslogSink("127.0.0.1", port, "tcp")
    with pytest.raises(SinkError, match="cannot connect"):
        await sink.write(sample_events()[:1])
    again = await receivers()
    sink.transport.port = again.port
    await sink.write(sample_events()[:2])
    assert len(await again.wait_for(2)) == 2
    await sink.close()


def test_bad_configuration_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="facility"):
        SyslogSink("h", facility="local9")
    with pytest.raises(ConfigError, match="TLS files"):
        SyslogSink("h", protocol="tls", ca_file=str(tmp_path / "missing.pem"))
