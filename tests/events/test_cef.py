from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from yoroi.events import (
    Actor,
    Analytic,
    DetectionFinding,
    Endpoint,
    Event,
    File,
    FindingInfo,
    HttpRequest,
    Process,
    Severity,
    Url,
    User,
)
from yoroi.events.cef import encode_cef

from .conftest import sample_events
from .parsers import parse_cef


def test_finding_maps_to_standard_cef_keys() -> None:
    finding = sample_events()[0]
    header, ext = parse_cef(encode_cef(finding))
    assert header == [
        "CEF:0", "Yoroi", "Yoroi Agent", "0.1.0", "yoroi.vp.cve-2017-5638",
        "CVE-2017-5638 Struts2 Content-Type OGNL", "9",
    ]  # fmt: skip
    assert ext["rt"] == str(finding.time)
    assert ext["msg"] == "Struts2 OGNL injection blocked"
    assert (ext["src"], ext["spt"], ext["shost"]) == ("203.0.113.7", "51515", "evil.example")
    assert (ext["dst"], ext["dpt"]) == ("192.0.2.10", "8080")
    assert (ext["sproc"], ext["spid"], ext["suser"]) == ("sh", "4242", "tomcat")
    assert (ext["fname"], ext["filePath"]) == ("eicar.com", "/srv/www/upload/eicar.com")
    assert ext["fileHash"] == "275a021b" * 8
    assert ext["request"] == "http://192.0.2.10:8080/upload.action"
    assert ext["requestMethod"] == "POST"
    assert (ext["act"], ext["cat"]) == ("Blocked", "Detection Finding")
    assert (ext["cs1Label"], ext["cs1"]) == ("ruleUid", "yoroi.vp.cve-2017-5638")
    assert (ext["cs2Label"], ext["cs2"]) == ("cve", "CVE-2017-5638")
    assert (ext["cs3Label"], ext["cs3"]) == ("findingUid", "f-0001")
    assert (ext["cs4Label"], ext["cs4"]) == ("cmdLine", "sh -c 'id'")


def test_remediation_says_what_was_done_and_whether_it_worked() -> None:
    killed = sample_events()[6]
    header, ext = parse_cef(encode_cef(killed))
    assert header[4] == "700302" and header[5] == "Process Remediation Activity: Evict"
    assert (ext["act"], ext["outcome"], ext["dpid"]) == ("Evict", "Failure", "4242")
    assert (ext["cs6Label"], ext["cs6"]) == ("commandUid", "cmd-2")


def test_every_class_encodes(any_event: Event) -> None:
    header, ext = parse_cef(encode_cef(any_event))
    assert header[0] == "CEF:0" and ext["msg"] == any_event.message


def test_severity_scale() -> None:
    scale = {}
    for severity in Severity:
        event = DetectionFinding(message="m", severity_id=severity,
                                 finding_info=FindingInfo(title="t", uid="u"))  # fmt: skip
        scale[severity.caption] = parse_cef(encode_cef(event))[0][6]
    assert scale == {"Unknown": "0", "Informational": "1", "Low": "3", "Medium": "5",
                     "High": "7", "Critical": "9", "Fatal": "10", "Other": "0"}  # fmt: skip


def test_escaping_of_pipes_backslashes_equals_and_newlines() -> None:
    nasty = "a|b\\c=d\ne\rf \\= \\|"
    event = DetectionFinding(
        message=nasty, finding_info=FindingInfo(title=nasty, uid="u", analytic=Analytic(uid=nasty))
    )
    line = encode_cef(event)
    assert "\n" not in line and "\r" not in line
    assert "a\\|b\\\\c=d\\ne\\rf \\\\= \\\\\\|" in line  # header form
    assert "msg=a|b\\\\c\\=d\\ne\\rf \\\\\\= \\\\|" in line  # extension form
    header, ext = parse_cef(line)
    assert header[4] == header[5] == ext["msg"] == ext["cs1"] == nasty


text = st.text(max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    message=text, title=text, rule=text, path=text, user=text, cmd=text, url=text, ip=text,
    port=st.integers(0, 65535), pid=st.integers(0, 2**31),
)  # fmt: skip
def test_any_text_stays_on_one_line_and_comes_back_exactly(
    message: str, title: str, rule: str, path: str, user: str, cmd: str, url: str, ip: str,
    port: int, pid: int,
) -> None:  # fmt: skip
    event = DetectionFinding(
        message=message,
        finding_info=FindingInfo(title=title, uid=rule, analytic=Analytic(uid=rule)),
        file=File(path=path, name=path),
        actor=Actor(process=Process(pid=pid, name=cmd, cmd_line=cmd), user=User(name=user)),
        src_endpoint=Endpoint(ip=ip, port=port),
        http_request=HttpRequest(url=Url(url_string=url)),
    )
    line = encode_cef(event)
    assert "\n" not in line and "\r" not in line
    header, ext = parse_cef(line)
    assert header[4:6] == [rule or "200401", title or "Detection Finding: Create"]
    expected = {"msg": message, "filePath": path, "fname": path, "suser": user, "sproc": cmd,
                "cs4": cmd, "spid": str(pid), "src": ip, "spt": str(port), "request": url,
                "cs1": rule, "cs3": rule}  # fmt: skip
    assert {k: ext.get(k, "") for k in expected} == expected
