from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yoroi.errors import ConfigError
from yoroi.events import (
    Actor,
    Analytic,
    DetectionFinding,
    Endpoint,
    Event,
    File,
    FindingInfo,
    Process,
    Severity,
    User,
)
from yoroi.events.leef import encode_leef

from .conftest import sample_events
from .parsers import parse_leef


def test_finding_maps_to_leef_attributes() -> None:
    finding = sample_events()[0]
    line = encode_leef(finding)
    assert line.startswith("LEEF:2.0|Yoroi|Yoroi Agent|0.1.0|yoroi.vp.cve-2017-5638|x09|")
    header, delimiter, attrs = parse_leef(line)
    assert delimiter == "\t"
    stamp = dt.datetime.strptime(attrs["devTime"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert int(stamp.timestamp() * 1000) == finding.time
    assert attrs["devTimeFormat"] == "yyyy-MM-dd'T'HH:mm:ss.SSSZ"
    assert attrs["sev"] == "9"
    assert (attrs["src"], attrs["srcPort"], attrs["dst"], attrs["dstPort"]) == (
        "203.0.113.7", "51515", "192.0.2.10", "8080",
    )  # fmt: skip
    assert attrs["usrName"] == "tomcat"
    assert attrs["url"] == "http://192.0.2.10:8080/upload.action"
    assert attrs["cat"] == "Detection Finding"
    assert (attrs["ruleUid"], attrs["cve"], attrs["action"]) == (
        "yoroi.vp.cve-2017-5638", "CVE-2017-5638", "Blocked",
    )  # fmt: skip
    assert (attrs["filePath"], attrs["pid"]) == ("/srv/www/upload/eicar.com", "4242")


def test_network_activity_has_proto() -> None:
    _, _, attrs = parse_leef(encode_leef(sample_events()[3]))
    assert (attrs["proto"], attrs["dstPort"]) == ("tcp", "445")


def test_every_class_encodes_with_caret(any_event: Event) -> None:
    line = encode_leef(any_event, "^")
    header, delimiter, attrs = parse_leef(line)
    assert line.split("|")[5] == "x5E" and delimiter == "^"
    assert attrs["msg"] == any_event.message


def test_severity_scale() -> None:
    scale = {}
    for severity in Severity:
        event = DetectionFinding(message="m", severity_id=severity,
                                 finding_info=FindingInfo(title="t", uid="u"))  # fmt: skip
        scale[severity.caption] = parse_leef(encode_leef(event))[2]["sev"]
    assert scale == {"Unknown": "1", "Informational": "1", "Low": "3", "Medium": "5",
                     "High": "7", "Critical": "9", "Fatal": "10", "Other": "1"}  # fmt: skip


@pytest.mark.parametrize("bad", ["", "ab", "=", "|", "\\", "\n", "a", "7"])
def test_unusable_delimiters_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="LEEF delimiter"):
        encode_leef(sample_events()[1], bad)


def test_values_never_hold_the_delimiter_or_newlines() -> None:
    nasty = "tab\there^caret\nnew\rret\\back=eq|pipe\\x5e"
    event = DetectionFinding(message=nasty, finding_info=FindingInfo(title="t", uid="u"))
    for delimiter in ("\t", "^", "~", "¦"):
        line = encode_leef(event, delimiter)
        body = line.split("|", 6)[6]
        msg = next(item for item in body.split(delimiter) if item.startswith("msg="))
        assert "\n" not in line and "\r" not in line and delimiter not in msg
        assert parse_leef(line)[2]["msg"] == nasty


text = st.text(max_size=40)
delimiters = st.sampled_from(["\t", "^", "~", "#", ";", " ", "\x01", "¦"])


@settings(max_examples=300, deadline=None)
@given(message=text, rule=text, path=text, user=text, ip=text, delimiter=delimiters)
def test_any_text_comes_back_exactly(
    message: str, rule: str, path: str, user: str, ip: str, delimiter: str
) -> None:
    event = DetectionFinding(
        message=message,
        finding_info=FindingInfo(title=rule, uid=rule, analytic=Analytic(uid=rule)),
        file=File(path=path),
        actor=Actor(process=Process(pid=1, cmd_line=message), user=User(name=user)),
        src_endpoint=Endpoint(ip=ip),
    )
    line = encode_leef(event, delimiter)
    assert "\n" not in line and "\r" not in line
    header, found, attrs = parse_leef(line)
    assert found == delimiter and header[4] == (rule or "200401")
    expected = {"msg": message, "ruleUid": rule, "filePath": path, "usrName": user,
                "src": ip, "cmdLine": message, "title": rule}  # fmt: skip
    assert {k: attrs.get(k, "") for k in expected} == expected
