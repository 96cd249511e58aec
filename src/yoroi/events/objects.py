"""OCSF 1.3 objects (the parts of an event): files, processes, users, endpoints, findings.

Every object is a frozen ``msgspec.Struct`` with OCSF field names; fields left at ``None`` or
empty are omitted from JSON. A field that must always appear uses :func:`always`.
"""

from __future__ import annotations

import os.path
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

import yoroi
from yoroi.events.enums import (
    AnalyticType,
    Direction,
    FileType,
    HashAlgorithm,
    caption,
)

OCSF_VERSION = "1.3.0"

T = TypeVar("T")


def always(value: T) -> T:
    """A field default that is written to JSON even when unchanged (``omit_defaults`` skips it)."""
    factory: Callable[[], T] = lambda: value  # noqa: E731
    return msgspec.field(default_factory=factory)


def _set(obj: msgspec.Struct, name: str, value: Any) -> None:
    msgspec.structs.force_setattr(obj, name, value)


class Object(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """Base of every OCSF object: keyword-only, frozen, ``None`` fields omitted."""


class Feature(Object, kw_only=True, frozen=True):
    """A feature of a product: for Yoroi, a protection module ("antimalware", "ips", ...)."""

    name: str | None = None
    uid: str | None = None
    version: str | None = None


class Product(Object, kw_only=True, frozen=True):
    """The product that reported the event (Yoroi unless stated otherwise)."""

    name: str = always("Yoroi")
    vendor_name: str = always("Yoroi")
    version: str = always(yoroi.__version__)
    uid: str | None = None
    feature: Feature | None = None


class Metadata(Object, kw_only=True, frozen=True):
    """Event metadata: who produced it, under which OCSF schema version."""

    product: Product = msgspec.field(default_factory=Product)
    version: str = always(OCSF_VERSION)
    uid: str | None = None
    correlation_uid: str | None = None
    log_name: str | None = None
    original_time: str | None = None


class Fingerprint(Object, kw_only=True, frozen=True):
    """A hash of a file; ``algorithm`` is filled in from ``algorithm_id``."""

    algorithm_id: HashAlgorithm
    value: str
    algorithm: str | None = None

    def __post_init__(self) -> None:
        if self.algorithm is None:
            _set(self, "algorithm", caption(HashAlgorithm, self.algorithm_id))


class User(Object, kw_only=True, frozen=True):
    """A user account; ``uid`` is the numeric id as a string (OCSF ``string_t``)."""

    name: str | None = None
    uid: str | None = None
    type_id: int | None = None
    domain: str | None = None


class File(Object, kw_only=True, frozen=True):
    """A file. ``name`` defaults to the last component of ``path``.

    ``security_descriptor`` carries the Unix permission bits as an octal string ("0640").
    """

    path: str | None = None
    name: str | None = None
    parent_folder: str | None = None
    type_id: FileType | None = None
    type: str | None = None
    size: int | None = None
    hashes: list[Fingerprint] = msgspec.field(default_factory=list)
    owner: User | None = None
    security_descriptor: str | None = None
    uid: str | None = None
    mime_type: str | None = None
    created_time: int | None = None
    modified_time: int | None = None
    accessed_time: int | None = None
    xattributes: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name is None and self.path:
            _set(self, "name", os.path.basename(self.path.rstrip("/")) or self.path)
        if self.type is None and self.type_id is not None:
            _set(self, "type", caption(FileType, self.type_id))


class Image(Object, kw_only=True, frozen=True):
    """A container image."""

    name: str | None = None
    tag: str | None = None
    uid: str | None = None


class Container(Object, kw_only=True, frozen=True):
    """The container a process runs in."""

    uid: str | None = None
    name: str | None = None
    runtime: str | None = None
    image: Image | None = None


class Process(Object, kw_only=True, frozen=True):
    """A process; ``uid`` is a unique id across pid reuse (e.g. "pid:start_time")."""

    pid: int | None = None
    uid: str | None = None
    name: str | None = None
    file: File | None = None
    cmd_line: str | None = None
    user: User | None = None
    parent_process: Process | None = None
    created_time: int | None = None
    terminated_time: int | None = None
    container: Container | None = None
    working_directory: str | None = None


class Actor(Object, kw_only=True, frozen=True):
    """Who did it: the process and user, or the Yoroi module (``app_name``) that asked."""

    process: Process | None = None
    user: User | None = None
    app_name: str | None = None


class Endpoint(Object, kw_only=True, frozen=True):
    """A network endpoint (``src_endpoint`` / ``dst_endpoint``)."""

    ip: str | None = None
    port: int | None = None
    hostname: str | None = None
    name: str | None = None
    uid: str | None = None
    mac: str | None = None


class NetworkConnectionInfo(Object, kw_only=True, frozen=True):
    """The connection: transport protocol and direction."""

    protocol_name: str | None = None
    protocol_num: int | None = None
    direction_id: Direction | None = None
    direction: str | None = None
    uid: str | None = None

    def __post_init__(self) -> None:
        if self.direction is None and self.direction_id is not None:
            _set(self, "direction", caption(Direction, self.direction_id))


class NetworkTraffic(Object, kw_only=True, frozen=True):
    """Byte and packet counts of a connection."""

    bytes_in: int | None = None
    bytes_out: int | None = None
    packets_in: int | None = None
    packets_out: int | None = None


class Url(Object, kw_only=True, frozen=True):
    """A URL, whole (``url_string``) and in parts."""

    url_string: str | None = None
    scheme: str | None = None
    hostname: str | None = None
    port: int | None = None
    path: str | None = None
    query_string: str | None = None


class HttpHeader(Object, kw_only=True, frozen=True):
    """One HTTP header."""

    name: str
    value: str


class HttpRequest(Object, kw_only=True, frozen=True):
    """An HTTP request."""

    http_method: str | None = None
    url: Url | None = None
    user_agent: str | None = None
    version: str | None = None
    referrer: str | None = None
    http_headers: list[HttpHeader] = msgspec.field(default_factory=list)
    length: int | None = None


class HttpResponse(Object, kw_only=True, frozen=True):
    """An HTTP response."""

    code: int | None = None
    status: str | None = None
    message: str | None = None
    length: int | None = None
    http_headers: list[HttpHeader] = msgspec.field(default_factory=list)


class Analytic(Object, kw_only=True, frozen=True):
    """The rule, signature or model that produced a finding; ``uid`` is the rule id."""

    uid: str | None = None
    name: str | None = None
    type_id: AnalyticType | None = None
    type: str | None = None
    category: str | None = None
    desc: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if self.type is None and self.type_id is not None:
            _set(self, "type", caption(AnalyticType, self.type_id))


class FindingInfo(Object, kw_only=True, frozen=True):
    """What was found: title, unique id of this finding, and the analytic that found it."""

    title: str
    uid: str
    analytic: Analytic | None = None
    types: list[str] = msgspec.field(default_factory=list)
    desc: str | None = None
    data_sources: list[str] = msgspec.field(default_factory=list)
    created_time: int | None = None


class Resource(Object, kw_only=True, frozen=True):
    """A resource the finding is about (a host, a web application, a share...)."""

    uid: str | None = None
    name: str | None = None
    type: str | None = None
    hostname: str | None = None
    labels: list[str] = msgspec.field(default_factory=list)


class Cve(Object, kw_only=True, frozen=True):
    """A CVE identifier ("CVE-2017-5638")."""

    uid: str
    cvss_score: float | None = None


class Vulnerability(Object, kw_only=True, frozen=True):
    """A vulnerability the finding exploits or targets."""

    cve: Cve | None = None
    title: str | None = None
    desc: str | None = None


class Remediation(Object, kw_only=True, frozen=True):
    """How to remediate a finding (advice, not the action taken: see the Remediation events)."""

    desc: str | None = None
    references: list[str] = msgspec.field(default_factory=list)
    kb_article_list: list[str] = msgspec.field(default_factory=list)
