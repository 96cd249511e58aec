"""IBM QRadar Log Event Extended Format (LEEF) 2.0 encoder.

``LEEF:2.0|Yoroi|Yoroi Agent|<version>|<event id>|<delimiter>|key=value<delimiter>...``

The delimiter is declared in hex (``x09`` for the default tab, ``x5E`` for ``^``). LEEF defines no
escaping, and a value must never hold the delimiter or a line break, so Yoroi escapes values
with backslashes: ``\\\\``, ``\\n``, ``\\r``, ``\\t`` and ``\\xHH`` for the delimiter (``\\uHHHH``
above U+00FF). Header fields escape ``\\`` and ``|`` (and line breaks) as in CEF.
"""

from __future__ import annotations

import datetime as dt
import functools

from yoroi.errors import ConfigError
from yoroi.events import mapping as m
from yoroi.events.cef import escape_header
from yoroi.events.model import Event, Scalar

VENDOR = "Yoroi"
PRODUCT = "Yoroi Agent"
DEV_TIME_FORMAT = "yyyy-MM-dd'T'HH:mm:ss.SSSZ"

# LEEF predefined keys first, then Yoroi's own (camelCase, as LEEF custom keys usually are).
LEEF_FIELDS: m.FieldMap = (
    ("cat", ("class_name",)),
    ("src", ("src_endpoint.ip",)),
    ("srcPort", ("src_endpoint.port",)),
    ("dst", ("dst_endpoint.ip",)),
    ("dstPort", ("dst_endpoint.port",)),
    ("proto", ("connection_info.protocol_name",)),
    ("usrName", m.ACTOR_USER),
    ("url", ("http_request.url.url_string",)),
    ("identHostName", ("src_endpoint.hostname",)),
    ("msg", ("message",)),
    ("title", ("finding_info.title",)),
    ("action", m.ACTION),
    ("outcome", m.OUTCOME),
    ("ruleUid", m.RULE_UID),
    ("findingUid", ("finding_info.uid",)),
    ("cve", m.CVE),
    ("module", m.MODULE),
    ("commandUid", ("command_uid",)),
    ("targetUser", m.TARGET_USER),
    ("procName", ("actor.process.name",)),
    ("pid", ("actor.process.pid",)),
    ("cmdLine", ("actor.process.cmd_line",)),
    ("targetProcName", ("process.name",)),
    ("targetPid", ("process.pid",)),
    ("fileName", ("file.name",)),
    ("filePath", ("file.path",)),
    ("fileHash", ("file.hashes.0.value",)),
    ("fileSize", ("file.size",)),
    ("requestMethod", ("http_request.http_method",)),
    ("userAgent", ("http_request.user_agent",)),
    ("httpStatus", ("http_response.code",)),
    ("externalId", ("metadata.uid",)),
)

_FORBIDDEN_DELIMITERS = "=\\|\n\r"


def check_delimiter(delimiter: str) -> str:
    """Return ``delimiter`` if LEEF can use it, else raise :class:`ConfigError`."""
    if len(delimiter) != 1 or delimiter in _FORBIDDEN_DELIMITERS or delimiter.isalnum():
        raise ConfigError(
            f"LEEF delimiter {delimiter!r} is not usable: give one character that is not a "
            "letter, digit, '=', '\\', '|' or a line break (e.g. '\\t' or '^')"
        )
    return delimiter


def declare_delimiter(delimiter: str) -> str:
    """The header's delimiter field: ``x09`` for tab, ``x5E`` for ``^``."""
    return f"x{ord(delimiter):02X}"


def _hex_escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


@functools.cache
def _value_escapes(delimiter: str) -> dict[int, str]:
    table = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    table[delimiter] = table.get(delimiter, _hex_escape(delimiter))
    return str.maketrans(table)


def escape_value(value: str, delimiter: str = "\t") -> str:
    """Escape one LEEF attribute value so that it holds no delimiter and no line break."""
    return value.translate(_value_escapes(delimiter))


def dev_time(epoch_ms: int) -> str:
    """``epoch_ms`` in :data:`DEV_TIME_FORMAT` (UTC)."""
    stamp = dt.datetime.fromtimestamp(epoch_ms / 1000, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}+0000"


def leef_attributes(event: Event, flat: dict[str, Scalar]) -> list[tuple[str, str]]:
    """The unescaped ``(key, value)`` attributes of the event."""
    pairs = [
        ("devTime", dev_time(event.time)),
        ("devTimeFormat", DEV_TIME_FORMAT),
        ("sev", str(m.LEEF_SEVERITY.get(int(event.severity_id), 1))),
    ]
    return pairs + m.apply(LEEF_FIELDS, flat)


def encode_leef(event: Event, delimiter: str = "\t") -> str:
    """The event as one LEEF 2.0 line (no trailing newline)."""
    check_delimiter(delimiter)
    flat = m.flat_view(event)
    header = [
        "LEEF:2.0",
        escape_header(VENDOR),
        escape_header(PRODUCT),
        escape_header(m.text(flat.get("metadata.product.version", ""))),
        escape_header(m.signature_id(flat)),
        declare_delimiter(delimiter),
    ]
    body = delimiter.join(
        f"{key}={escape_value(value, delimiter)}" for key, value in leef_attributes(event, flat)
    )
    return "|".join(header) + "|" + body
