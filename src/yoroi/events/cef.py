"""ArcSight Common Event Format (CEF) 0 encoder.

``CEF:0|Yoroi|Yoroi Agent|<version>|<signature id>|<name>|<severity>|<extension>``

Header fields escape ``\\`` and ``|``; extension values escape ``\\``, ``=``, and newlines as
``\\n`` / ``\\r``. Header fields escape newlines the same way so that a message is always one
line. The OCSF-to-CEF key table is :data:`CEF_FIELDS`; see docs/events.md.
"""

from __future__ import annotations

from yoroi.events import mapping as m
from yoroi.events.model import Event, Scalar

VENDOR = "Yoroi"
PRODUCT = "Yoroi Agent"

# Custom string fields: (cs key, its label, OCSF sources).
CUSTOM_STRINGS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("cs1", "ruleUid", m.RULE_UID),
    ("cs2", "cve", m.CVE),
    ("cs3", "findingUid", ("finding_info.uid",)),
    ("cs4", "cmdLine", ("actor.process.cmd_line", "process.cmd_line")),
    ("cs5", "module", m.MODULE),
    ("cs6", "commandUid", ("command_uid",)),
)

CEF_FIELDS: m.FieldMap = (
    ("rt", ("time",)),
    ("cat", ("class_name",)),
    ("act", m.ACTION),
    ("outcome", m.OUTCOME),
    ("msg", ("message",)),
    ("src", ("src_endpoint.ip",)),
    ("spt", ("src_endpoint.port",)),
    ("shost", ("src_endpoint.hostname",)),
    ("dst", ("dst_endpoint.ip",)),
    ("dpt", ("dst_endpoint.port",)),
    ("dhost", ("dst_endpoint.hostname",)),
    ("proto", ("connection_info.protocol_name",)),
    ("suser", m.ACTOR_USER),
    ("suid", ("actor.user.uid", "actor.process.user.uid")),
    ("duser", m.TARGET_USER),
    ("sproc", ("actor.process.name",)),
    ("spid", ("actor.process.pid",)),
    ("dproc", ("process.name",)),
    ("dpid", ("process.pid",)),
    ("fname", ("file.name",)),
    ("filePath", ("file.path",)),
    ("fileHash", ("file.hashes.0.value",)),
    ("fsize", ("file.size",)),
    ("request", ("http_request.url.url_string",)),
    ("requestMethod", ("http_request.http_method",)),
    ("requestClientApplication", ("http_request.user_agent",)),
    ("externalId", ("metadata.uid",)),
    *((key, sources) for key, _label, sources in CUSTOM_STRINGS),
)

_LABELS = {key: label for key, label, _sources in CUSTOM_STRINGS}

_HEADER_ESCAPES = str.maketrans({"\\": "\\\\", "|": "\\|", "\n": "\\n", "\r": "\\r"})
_VALUE_ESCAPES = str.maketrans({"\\": "\\\\", "=": "\\=", "\n": "\\n", "\r": "\\r"})


def escape_header(value: str) -> str:
    """Escape one CEF header field."""
    return value.translate(_HEADER_ESCAPES)


def escape_value(value: str) -> str:
    """Escape one CEF extension value."""
    return value.translate(_VALUE_ESCAPES)


def cef_extension(flat: dict[str, Scalar]) -> list[tuple[str, str]]:
    """The unescaped ``(key, value)`` pairs of the extension, labels after their cs field."""
    pairs: list[tuple[str, str]] = []
    for key, value in m.apply(CEF_FIELDS, flat):
        pairs.append((key, value))
        if key in _LABELS:
            pairs.append((f"{key}Label", _LABELS[key]))
    return pairs


def encode_cef(event: Event) -> str:
    """The event as one CEF line (no trailing newline)."""
    flat = m.flat_view(event)
    header = [
        "CEF:0",
        escape_header(VENDOR),
        escape_header(PRODUCT),
        escape_header(m.text(flat.get("metadata.product.version", ""))),
        escape_header(m.signature_id(flat)),
        escape_header(m.event_name(flat)),
        str(m.CEF_SEVERITY.get(int(event.severity_id), 0)),
    ]
    extension = " ".join(f"{key}={escape_value(value)}" for key, value in cef_extension(flat))
    return "|".join(header) + "|" + extension
