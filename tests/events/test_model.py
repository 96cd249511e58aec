from __future__ import annotations

import json

import msgspec
import pytest

import yoroi
from yoroi.errors import YoroiError
from yoroi.events import (
    EVENT_CLASSES,
    Analytic,
    DetectionFinding,
    Event,
    File,
    FileActivity,
    FileSystemActivity,
    FindingInfo,
    HttpActivity,
    HttpRequest,
    Severity,
    decode_json,
    encode_json,
    flatten,
    now_ms,
)

from .conftest import sample_events


def test_every_class_has_a_sample() -> None:
    assert {type(e) for e in sample_events()} == set(EVENT_CLASSES.values())


def test_round_trip_gives_an_equal_event_of_the_same_class(any_event: Event) -> None:
    back = decode_json(encode_json(any_event))
    assert type(back) is type(any_event)
    assert back == any_event


def test_json_has_the_contract_fields(any_event: Event) -> None:
    line = encode_json(any_event)
    assert b"\n" not in line
    doc = json.loads(line)
    assert doc["class_uid"] == type(any_event).class_uid
    assert doc["class_name"] == type(any_event).CLASS_NAME
    assert doc["type_uid"] == doc["class_uid"] * 100 + doc["activity_id"]
    assert doc["activity_name"] and doc["category_name"] and doc["severity"]
    assert abs(doc["time"] - now_ms()) < 60_000
    assert isinstance(doc["severity_id"], int)
    assert doc["message"] == any_event.message
    assert doc["metadata"]["product"] == {
        "name": "Yoroi",
        "vendor_name": "Yoroi",
        "version": yoroi.__version__,
    }
    assert doc["metadata"]["version"] == "1.3.0"
    assert not [k for k, v in doc.items() if v is None], "None fields are omitted"


def test_finding_with_no_boilerplate() -> None:
    finding = DetectionFinding(
        message="EICAR",
        severity_id=Severity.HIGH,
        finding_info=FindingInfo(title="EICAR", uid="f1", analytic=Analytic(uid="av.eicar")),
        file=File(path="/tmp/x/eicar.com"),
    )
    doc = json.loads(encode_json(finding))
    assert doc["class_uid"] == 2004 and doc["activity_id"] == 1 and doc["type_uid"] == 200401
    assert doc["severity"] == "High" and doc["category_uid"] == 2
    assert doc["finding_info"]["analytic"]["uid"] == "av.eicar"
    assert doc["file"] == {"path": "/tmp/x/eicar.com", "name": "eicar.com"}


def test_time_defaults_to_now_and_can_be_given() -> None:
    before = now_ms()
    event = FileSystemActivity(message="m", activity_id=FileActivity.CREATE, file=File(path="/a"))
    assert before <= event.time <= now_ms()
    given = FileSystemActivity(message="m", activity_id=1, file=File(path="/a"), time=1234)
    assert json.loads(encode_json(given))["time"] == 1234


def test_http_activity_takes_its_activity_from_the_method() -> None:
    post = HttpActivity(message="m", http_request=HttpRequest(http_method="post"))
    assert (post.activity_id, post.activity_name, post.type_uid) == (6, "Post", 400206)
    odd = HttpActivity(message="m", http_request=HttpRequest(http_method="PROPFIND"))
    assert (odd.activity_id, odd.activity_name) == (99, "PROPFIND")
    assert decode_json(encode_json(odd)) == odd


def test_events_are_frozen() -> None:
    event = sample_events()[1]
    with pytest.raises(AttributeError):
        event.message = "changed"  # type: ignore[misc]


def test_flatten_uses_dotted_ocsf_keys() -> None:
    flat = flatten(sample_events()[0])
    assert flat["finding_info.analytic.uid"] == "yoroi.vp.cve-2017-5638"
    assert flat["src_endpoint.ip"] == "203.0.113.7"
    assert flat["actor.process.pid"] == 4242
    assert flat["actor.process.parent_process.pid"] == 812
    assert flat["resources.0.uid"] == "web-01"
    assert flat["unmapped.matched.1"] == "#_memberAccess"
    assert flat["metadata.product.name"] == "Yoroi"
    assert all(isinstance(v, str | int | float | bool) for v in flat.values())


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"class_uid": 9999, "message": "x"}',
        b'{"message": "no class"}',
        b'{"class_uid": 2004, "message": "no finding_info"}',
        b'{"class_uid": 1001, "message": "x", "activity_id": 1, "file": {}, "time": "noon"}',
    ],
)
def test_decode_rejects_what_is_not_an_event(data: bytes) -> None:
    with pytest.raises(YoroiError, match="not a Yoroi OCSF event"):
        decode_json(data)


def test_decode_ignores_fields_it_does_not_model() -> None:
    event = sample_events()[1]
    doc = json.loads(encode_json(event))
    doc["observables"] = [{"name": "x"}]
    assert decode_json(msgspec.json.encode(doc)) == event
