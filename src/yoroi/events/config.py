"""Sink configuration (``agent.events.sinks`` in the agent's YAML) and :func:`build_sinks`.

Each list item is one sink, chosen by ``type``::

    sinks:
      - type: jsonl
        path: /var/log/yoroi/events.jsonl
      - type: syslog
        host: siem.example.org
        port: 6514
        protocol: tls
        format: cef
        ca_file: /etc/yoroi/siem-ca.pem
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from yoroi.events.leef import check_delimiter
from yoroi.events.queue import DEFAULT_QUEUE_SIZE, DEFAULT_SPOOL_MAX_BYTES, QueuedSink
from yoroi.events.sinks import JsonLinesSink, Sink, StdoutSink, SyslogSink
from yoroi.events.syslog import FACILITIES


class _SinkBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_size: int = Field(
        DEFAULT_QUEUE_SIZE,
        ge=1,
        description="Events held in memory while the sink is slow or down; beyond this they "
        "spill to the spool.",
    )
    spool_max_bytes: int = Field(
        DEFAULT_SPOOL_MAX_BYTES,
        ge=0,
        description="Bytes of disk the spool may use once memory is full; beyond this events "
        "are dropped and counted. 0 disables spilling.",
    )


class JsonlSinkSpec(_SinkBase):
    """Append one OCSF JSON object per line to a file (follows logrotate)."""

    type: Literal["jsonl"]
    path: Path = Field(description="The events file; parent directories are created (0750).")
    fsync: Literal["always", "interval", "never"] = Field(
        "interval",
        description="When to force data to disk: after every batch, at most once a second, "
        "or never.",
    )


class StdoutSinkSpec(_SinkBase):
    """Print events on standard output."""

    type: Literal["stdout"]
    format: Literal["json", "text"] = Field(
        "text", description="json: one OCSF object per line; text: one readable line per event."
    )


class SyslogSinkSpec(_SinkBase):
    """Send events to a syslog receiver or SIEM as RFC 5424 messages."""

    type: Literal["syslog"]
    host: str = Field(min_length=1, description="Receiver host name or IP address.")
    port: int = Field(514, ge=1, le=65535, description="Receiver port (6514 is usual for TLS).")
    protocol: Literal["udp", "tcp", "tls"] = Field(
        "udp", description="udp (RFC 5426), tcp (RFC 6587) or tls (RFC 5425)."
    )
    format: Literal["cef", "leef", "json"] = Field(
        "cef", description="Payload: ArcSight CEF, QRadar LEEF 2.0, or OCSF JSON."
    )
    facility: str = Field("local4", description="Syslog facility name (local0..local7, ...).")
    ca_file: Path | None = Field(
        None, description="PEM file of the CA(s) that signed the receiver's certificate (tls)."
    )
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = Field(None, description="Private key (PEM) of cert_file.")
    verify: bool = Field(
        True, description="Check the receiver's certificate and host name (tls). Keep it on."
    )
    server_name: str | None = Field(
        None, description="Name expected in the receiver's certificate; defaults to host."
    )
    leef_delimiter: str = Field(
        "\t", description="LEEF attribute delimiter: one character, e.g. '^' (default: tab)."
    )
    max_datagram: int = Field(
        8192, ge=480, le=65507, description="UDP: longer messages are cut to this many bytes."
    )

    @field_validator("facility")
    @classmethod
    def _known_facility(cls, value: str) -> str:
        if value not in FACILITIES:
            raise ValueError(f"unknown facility {value!r}; use one of {', '.join(FACILITIES)}")
        return value

    @field_validator("leef_delimiter")
    @classmethod
    def _usable_delimiter(cls, value: str) -> str:
        try:
            return check_delimiter(value)
        except Exception as exc:
            raise ValueError(str(exc)) from None


SinkSpec = Annotated[JsonlSinkSpec | StdoutSinkSpec | SyslogSinkSpec, Field(discriminator="type")]


def make_sink(spec: JsonlSinkSpec | StdoutSinkSpec | SyslogSinkSpec) -> Sink:
    """The sink a spec describes (not yet opened)."""
    if isinstance(spec, JsonlSinkSpec):
        return JsonLinesSink(spec.path, fsync=spec.fsync)
    if isinstance(spec, StdoutSinkSpec):
        return StdoutSink(format=spec.format)
    return SyslogSink(
        spec.host, spec.port, spec.protocol, spec.format,
        facility=spec.facility,
        ca_file=str(spec.ca_file) if spec.ca_file else None,
        cert_file=str(spec.cert_file) if spec.cert_file else None,
        key_file=str(spec.key_file) if spec.key_file else None,
        verify=spec.verify, server_name=spec.server_name,
        leef_delimiter=spec.leef_delimiter, max_datagram=spec.max_datagram,
    )  # fmt: skip


def build_sinks(
    specs: list[JsonlSinkSpec | StdoutSinkSpec | SyslogSinkSpec], spool_dir: Path | None
) -> list[QueuedSink]:
    """One :class:`QueuedSink` per spec, spooling under ``spool_dir`` (not started yet).

    Raises :class:`~yoroi.errors.ConfigError` when a TLS file cannot be loaded.
    """
    return [
        QueuedSink(
            make_sink(spec),
            queue_size=spec.queue_size,
            spool_dir=spool_dir if spec.spool_max_bytes else None,
            spool_max_bytes=spec.spool_max_bytes,
        )
        for spec in specs
    ]
