"""OCSF 1.3 event classes, their JSON codec and the flat (dotted-key) view.

Build an event with only what you know; the OCSF bookkeeping (``class_name``, ``category_*``,
``activity_name``, ``type_uid``, ``type_name``, ``severity``, ``status``, ``time``,
``metadata``) is filled in::

    DetectionFinding(
        message="EICAR test file",
        severity_id=Severity.HIGH,
        finding_info=FindingInfo(title="EICAR", uid=finding_id,
                                 analytic=Analytic(uid="yoroi.av.eicar", name="EICAR")),
        file=File(path="/tmp/eicar.com"),
    )
"""

from __future__ import annotations

import time as _time
from typing import Any, ClassVar

import msgspec

from yoroi.errors import YoroiError
from yoroi.events.enums import (
    Action,
    Disposition,
    FileActivity,
    FindingActivity,
    FindingStatus,
    HttpActivityId,
    LifecycleActivity,
    NetworkActivityId,
    OcsfEnum,
    ProcessActivityId,
    RemediationActivity,
    Severity,
    Status,
    caption,
)
from yoroi.events.objects import (
    Actor,
    Endpoint,
    File,
    FindingInfo,
    HttpRequest,
    HttpResponse,
    Metadata,
    NetworkConnectionInfo,
    NetworkTraffic,
    Process,
    Product,
    Remediation,
    Resource,
    Vulnerability,
    _set,
    always,
)

Scalar = str | int | float | bool | None

OTHER_ID = 99  # the OCSF "Other" id of every enumeration


def now_ms() -> int:
    """The current time as OCSF ``timestamp_t``: milliseconds since the epoch."""
    return _time.time_ns() // 1_000_000


class Event(msgspec.Struct, tag_field="class_uid", kw_only=True, omit_defaults=True, frozen=True):
    """Base of every OCSF event class; ``class_uid`` is the JSON tag of the concrete class."""

    class_uid: ClassVar[int] = 0
    CLASS_NAME: ClassVar[str] = ""
    CATEGORY_UID: ClassVar[int] = 0
    CATEGORY_NAME: ClassVar[str] = ""
    ACTIVITY: ClassVar[type[OcsfEnum]] = OcsfEnum
    STATUS: ClassVar[type[OcsfEnum]] = Status

    class_name: str = ""
    category_uid: int = 0
    category_name: str = ""
    activity_id: int = always(0)
    activity_name: str = ""
    type_uid: int = 0
    type_name: str = ""
    time: int = msgspec.field(default_factory=now_ms)
    severity_id: Severity = always(Severity.INFORMATIONAL)
    severity: str = ""
    message: str
    status_id: int | None = None
    status: str | None = None
    status_code: str | None = None
    status_detail: str | None = None
    actor: Actor | None = None
    metadata: Metadata = msgspec.field(default_factory=Metadata)
    raw_data: str | None = None
    unmapped: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        cls = type(self)
        _set(self, "class_name", cls.CLASS_NAME)
        _set(self, "category_uid", cls.CATEGORY_UID)
        _set(self, "category_name", cls.CATEGORY_NAME)
        # An "Other" activity keeps the source's own name for it, as OCSF asks.
        if not self.activity_name or self.activity_id != OTHER_ID:
            _set(self, "activity_name", caption(cls.ACTIVITY, self.activity_id))
        _set(self, "type_uid", cls.class_uid * 100 + self.activity_id)
        _set(self, "type_name", f"{cls.CLASS_NAME}: {self.activity_name}")
        _set(self, "severity", caption(Severity, self.severity_id))
        if self.status_id is not None and self.status is None:
            _set(self, "status", caption(cls.STATUS, self.status_id))


class DetectionFinding(Event, tag=2004, kw_only=True, frozen=True):
    """Detection Finding (2004): something a protection module detected (and maybe blocked)."""

    class_uid: ClassVar[int] = 2004
    CLASS_NAME: ClassVar[str] = "Detection Finding"
    CATEGORY_UID: ClassVar[int] = 2
    CATEGORY_NAME: ClassVar[str] = "Findings"
    ACTIVITY: ClassVar[type[OcsfEnum]] = FindingActivity
    STATUS: ClassVar[type[OcsfEnum]] = FindingStatus

    finding_info: FindingInfo
    activity_id: FindingActivity = always(FindingActivity.CREATE)
    resources: list[Resource] = msgspec.field(default_factory=list)
    file: File | None = None
    process: Process | None = None
    src_endpoint: Endpoint | None = None
    dst_endpoint: Endpoint | None = None
    http_request: HttpRequest | None = None
    vulnerabilities: list[Vulnerability] = msgspec.field(default_factory=list)
    remediation: Remediation | None = None
    action_id: Action | None = None
    action: str | None = None
    disposition_id: Disposition | None = None
    disposition: str | None = None
    confidence_id: int | None = None
    confidence_score: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.action is None and self.action_id is not None:
            _set(self, "action", caption(Action, self.action_id))
        if self.disposition is None and self.disposition_id is not None:
            _set(self, "disposition", caption(Disposition, self.disposition_id))


class FileSystemActivity(Event, tag=1001, kw_only=True, frozen=True):
    """File System Activity (1001): a file was created, changed, renamed, deleted..."""

    class_uid: ClassVar[int] = 1001
    CLASS_NAME: ClassVar[str] = "File System Activity"
    CATEGORY_UID: ClassVar[int] = 1
    CATEGORY_NAME: ClassVar[str] = "System Activity"
    ACTIVITY: ClassVar[type[OcsfEnum]] = FileActivity

    activity_id: FileActivity
    file: File
    file_result: File | None = None


class ProcessActivity(Event, tag=1007, kw_only=True, frozen=True):
    """Process Activity (1007): a process was launched, terminated, changed its user..."""

    class_uid: ClassVar[int] = 1007
    CLASS_NAME: ClassVar[str] = "Process Activity"
    CATEGORY_UID: ClassVar[int] = 1
    CATEGORY_NAME: ClassVar[str] = "System Activity"
    ACTIVITY: ClassVar[type[OcsfEnum]] = ProcessActivityId

    activity_id: ProcessActivityId
    process: Process
    exit_code: int | None = None


class NetworkActivity(Event, tag=4001, kw_only=True, frozen=True):
    """Network Activity (4001): a connection was opened, refused, closed..."""

    class_uid: ClassVar[int] = 4001
    CLASS_NAME: ClassVar[str] = "Network Activity"
    CATEGORY_UID: ClassVar[int] = 4
    CATEGORY_NAME: ClassVar[str] = "Network Activity"
    ACTIVITY: ClassVar[type[OcsfEnum]] = NetworkActivityId

    activity_id: NetworkActivityId
    src_endpoint: Endpoint | None = None
    dst_endpoint: Endpoint | None = None
    connection_info: NetworkConnectionInfo | None = None
    traffic: NetworkTraffic | None = None


class HttpActivity(Event, tag=4002, kw_only=True, frozen=True):
    """HTTP Activity (4002): an HTTP request; ``activity_id`` defaults from its method."""

    class_uid: ClassVar[int] = 4002
    CLASS_NAME: ClassVar[str] = "HTTP Activity"
    CATEGORY_UID: ClassVar[int] = 4
    CATEGORY_NAME: ClassVar[str] = "Network Activity"
    ACTIVITY: ClassVar[type[OcsfEnum]] = HttpActivityId

    activity_id: HttpActivityId = always(HttpActivityId.UNKNOWN)
    http_request: HttpRequest | None = None
    http_response: HttpResponse | None = None
    src_endpoint: Endpoint | None = None
    dst_endpoint: Endpoint | None = None
    connection_info: NetworkConnectionInfo | None = None

    def __post_init__(self) -> None:
        method = self.http_request.http_method if self.http_request else None
        if self.activity_id == HttpActivityId.UNKNOWN and method:
            found = HttpActivityId.__members__.get(method.upper(), HttpActivityId.OTHER)
            _set(self, "activity_id", found)
            if found == HttpActivityId.OTHER and not self.activity_name:
                _set(self, "activity_name", method.upper())
        super().__post_init__()


class _RemediationEvent(Event, kw_only=True, frozen=True):
    """Common fields of the Remediation classes: the command that was carried out."""

    CATEGORY_UID: ClassVar[int] = 7
    CATEGORY_NAME: ClassVar[str] = "Remediation"
    ACTIVITY: ClassVar[type[OcsfEnum]] = RemediationActivity

    activity_id: RemediationActivity
    command_uid: str


class FileRemediationActivity(_RemediationEvent, tag=7002, kw_only=True, frozen=True):
    """File Remediation Activity (7002): a file was quarantined, deleted or restored."""

    class_uid: ClassVar[int] = 7002
    CLASS_NAME: ClassVar[str] = "File Remediation Activity"

    file: File


class ProcessRemediationActivity(_RemediationEvent, tag=7003, kw_only=True, frozen=True):
    """Process Remediation Activity (7003): a process (tree) was killed or stopped."""

    class_uid: ClassVar[int] = 7003
    CLASS_NAME: ClassVar[str] = "Process Remediation Activity"

    process: Process


class NetworkRemediationActivity(_RemediationEvent, tag=7004, kw_only=True, frozen=True):
    """Network Remediation Activity (7004): an address was banned or unbanned."""

    class_uid: ClassVar[int] = 7004
    CLASS_NAME: ClassVar[str] = "Network Remediation Activity"

    src_endpoint: Endpoint | None = None
    dst_endpoint: Endpoint | None = None
    connection_info: NetworkConnectionInfo | None = None


class ApplicationLifecycle(Event, tag=6002, kw_only=True, frozen=True):
    """Application Lifecycle (6002): the agent or one of its modules started, stopped...

    ``app`` is Yoroi itself; name the module in ``app.feature``. A crash is
    ``LifecycleActivity.STOP`` with ``status_id=Status.FAILURE``; a reload is ``UPDATE``.
    """

    class_uid: ClassVar[int] = 6002
    CLASS_NAME: ClassVar[str] = "Application Lifecycle"
    CATEGORY_UID: ClassVar[int] = 6
    CATEGORY_NAME: ClassVar[str] = "Application Activity"
    ACTIVITY: ClassVar[type[OcsfEnum]] = LifecycleActivity

    activity_id: LifecycleActivity
    app: Product = msgspec.field(default_factory=Product)


AnyEvent = (
    DetectionFinding
    | FileSystemActivity
    | ProcessActivity
    | NetworkActivity
    | HttpActivity
    | FileRemediationActivity
    | ProcessRemediationActivity
    | NetworkRemediationActivity
    | ApplicationLifecycle
)

EVENT_CLASSES: dict[int, type[Event]] = {
    cls.class_uid: cls
    for cls in (
        DetectionFinding,
        FileSystemActivity,
        ProcessActivity,
        NetworkActivity,
        HttpActivity,
        FileRemediationActivity,
        ProcessRemediationActivity,
        NetworkRemediationActivity,
        ApplicationLifecycle,
    )
}

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


def encode_json(event: Event) -> bytes:
    """The event as one line of JSON (no newline inside or at the end)."""
    return _encoder.encode(event)


def decode_json(data: bytes | str) -> Event:
    """Parse one JSON event back into its class (chosen by ``class_uid``).

    Raises :class:`YoroiError` when the data is not JSON, names an unknown ``class_uid`` or
    breaks the schema.
    """
    try:
        event: Event = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise YoroiError(f"not a Yoroi OCSF event: {exc}") from None
    return event


def flatten(event: Event) -> dict[str, Scalar]:
    """The event as ``{"dotted.ocsf.key": scalar}``; list items are keyed by index.

    ``{"finding_info.analytic.uid": "r1", "actor.process.pid": 42, "resources.0.name": ...}``
    """
    out: dict[str, Scalar] = {}
    _walk(msgspec.to_builtins(event), "", out)
    return out


def _walk(value: Any, prefix: str, out: dict[str, Scalar]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _walk(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, f"{prefix}.{index}", out)
    else:
        out[prefix] = value


__all__ = [
    "AnyEvent",
    "ApplicationLifecycle",
    "DetectionFinding",
    "EVENT_CLASSES",
    "Event",
    "FileRemediationActivity",
    "FileSystemActivity",
    "HttpActivity",
    "NetworkActivity",
    "NetworkRemediationActivity",
    "ProcessActivity",
    "ProcessRemediationActivity",
    "Scalar",
    "decode_json",
    "encode_json",
    "flatten",
    "now_ms",
]
