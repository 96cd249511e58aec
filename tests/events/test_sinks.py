from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from yoroi.errors import SinkError
from yoroi.events import decode_json
from yoroi.events.sinks import JsonLinesSink, Sink, StdoutSink, format_text

from .conftest import sample_events


def lines(path: Path) -> list[str]:
    return [json.loads(line)["message"] for line in path.read_text().splitlines()]


async def test_jsonl_creates_private_directories_and_file(tmp_path: Path) -> None:
    path = tmp_path / "log" / "yoroi" / "events.jsonl"
    sink = JsonLinesSink(path, fsync="always")
    assert isinstance(sink, Sink)
    await sink.open()
    await sink.write(sample_events())
    await sink.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o750
    decoded = [decode_json(line) for line in path.read_bytes().splitlines()]
    assert [type(e) for e in decoded] == [type(e) for e in sample_events()]


async def test_jsonl_appends_and_follows_rotation(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"kept": "line from before"}\n')
    events = sample_events()
    sink = JsonLinesSink(path)
    await sink.open()
    await sink.write(events[:2])
    os.rename(path, tmp_path / "events.jsonl.1")  # logrotate's rename
    await sink.write(events[2:4])
    assert lines(path) == [e.message for e in events[2:4]]
    path.unlink()  # removed outright
    await sink.write(events[4:5])
    await sink.close()
    rotated = (tmp_path / "events.jsonl.1").read_text().splitlines()
    assert rotated[0] == '{"kept": "line from before"}'
    assert [json.loads(x)["message"] for x in rotated[1:]] == [e.message for e in events[:2]]
    assert lines(path) == [events[4].message]


async def test_jsonl_unwritable_place_is_a_sink_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    sink = JsonLinesSink(tmp_path / "file" / "events.jsonl")
    with pytest.raises(SinkError, match="cannot open event file"):
        await sink.open()


async def test_stdout_json_and_text() -> None:
    stream = io.BytesIO()
    await StdoutSink("json", stream=stream).write(sample_events())
    assert [json.loads(x)["class_uid"] for x in stream.getvalue().splitlines()] == [
        type(e).class_uid for e in sample_events()
    ]
    stream = io.BytesIO()
    await StdoutSink("text", stream=stream).write(sample_events())
    text = stream.getvalue().decode().splitlines()
    assert len(text) == len(sample_events())
    assert "CRITICAL" in text[0] and "Detection Finding: Create: Struts2 OGNL" in text[0]
    assert "rule=yoroi.vp.cve-2017-5638" in text[0] and "src=203.0.113.7" in text[0]
    assert "module=ips" in text[-1] and "Application Lifecycle: Start" in text[-1]


def test_text_line_never_breaks() -> None:
    event = sample_events()[1]
    line = format_text(type(event)(message="two\nlines\r", activity_id=1, file=event.file))
    assert "\n" not in line and "\r" not in line and "two\\nlines\\r" in line
