from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from yoroi.events.config import SinkSpec, SyslogSinkSpec, build_sinks
from yoroi.events.queue import QueuedSink
from yoroi.events.sinks import JsonLinesSink, StdoutSink, SyslogSink

SPECS = TypeAdapter(list[SinkSpec])

DOC = """
sinks:
  - type: jsonl
    path: /var/log/yoroi/events.jsonl
  - type: stdout
    format: json
    queue_size: 100
  - type: syslog
    host: 127.0.0.1
    port: 6514
    protocol: tls
    format: leef
    leef_delimiter: "^"
    verify: false
    spool_max_bytes: 1048576
"""


def test_yaml_example_builds_queued_sinks(tmp_path: Path) -> None:
    specs = SPECS.validate_python(yaml.safe_load(DOC)["sinks"])
    built = build_sinks(specs, spool_dir=tmp_path)
    assert all(isinstance(q, QueuedSink) for q in built)
    jsonl, stdout, syslog = (q.sink for q in built)
    assert isinstance(jsonl, JsonLinesSink) and jsonl.path == Path("/var/log/yoroi/events.jsonl")
    assert isinstance(stdout, StdoutSink) and stdout.format == "json"
    assert isinstance(syslog, SyslogSink) and syslog.leef_delimiter == "^"
    assert [q.queue_size for q in built] == [10_000, 100, 10_000]
    assert built[2].spool is not None and built[2].spool.max_bytes == 1 << 20
    assert built[0].spool is not None and built[0].spool.directory.parent == tmp_path


def test_defaults() -> None:
    spec = SyslogSinkSpec(type="syslog", host="siem")
    assert (spec.port, spec.protocol, spec.format, spec.facility) == (514, "udp", "cef", "local4")
    assert spec.verify is True and spec.leef_delimiter == "\t"
    assert spec.spool_max_bytes == 64 * 1024 * 1024
    assert SyslogSinkSpec.model_fields["host"].description


@pytest.mark.parametrize(
    ("item", "where"),
    [
        ({"type": "jsonl", "path": "/x", "colour": "red"}, "colour"),
        ({"type": "kafka"}, "type"),
        ({"type": "syslog", "host": "h", "facility": "local9"}, "facility"),
        ({"type": "syslog", "host": "h", "leef_delimiter": "="}, "leef_delimiter"),
        ({"type": "syslog", "host": "h", "port": 70000}, "port"),
        ({"type": "stdout", "queue_size": 0}, "queue_size"),
    ],
)
def test_mistakes_are_named(item: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SPECS.validate_python([item])
    assert where in str(caught.value)


def test_spool_can_be_disabled(tmp_path: Path) -> None:
    specs = SPECS.validate_python([{"type": "stdout", "spool_max_bytes": 0}])
    assert build_sinks(specs, spool_dir=tmp_path)[0].spool is None
    assert build_sinks(specs, spool_dir=None)[0].spool is None
