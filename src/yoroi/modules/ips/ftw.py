"""go-ftw regression tests (the YAML format of the OWASP CRS test suite), read into requests.

Each YAML file holds ``tests``; each test has ``stages``; each stage an ``input`` (a request
given field by field, or whole as ``raw_request`` / base64 ``encoded_request``) and an
``output`` (``status``, ``log_contains``, ``no_log_contains``, ``expect_error``). As go-ftw
does, a body gets ``Content-Length`` and (form) ``Content-Type`` headers unless given or
``stop_magic`` is set, and a ``data`` list is joined with CRLF. :meth:`Request.wire` gives the
bytes a test client puts on the wire: a raw request as written, malformed or not, since what
the HTTP server makes of malformed requests is part of what the suite tests.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from yoroi.errors import ConfigError

Header = tuple[str, str]


class MalformedRequest(ValueError):
    """A test request that cannot even be built (e.g. ``encoded_request`` is not base64)."""


@dataclass(frozen=True)
class Request:
    """One HTTP request of a test stage, given field by field or as ``raw`` bytes."""

    method: str
    uri: str
    version: str
    headers: tuple[Header, ...]
    body: bytes = b""
    raw: bytes | None = None

    def wire(self) -> bytes:
        """The bytes sent to the server: the raw request, or the fields as go-ftw joins them
        (request line and headers as given, whatever they hold)."""
        if self.raw is not None:
            return self.raw
        lines = [f"{self.method} {self.uri} {self.version}",
                 *(f"{name}: {value}" for name, value in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body


@dataclass(frozen=True)
class Expect:
    """What the stage expects: a status among ``status``, log lines, or an error."""

    status: frozenset[int] = frozenset()
    log_contains: str | None = None
    no_log_contains: str | None = None
    expect_error: bool = False


@dataclass(frozen=True)
class Stage:
    """A request (or the reason it cannot be built) and its expectations."""

    request: Request | None
    expect: Expect
    malformed: str | None = None


@dataclass(frozen=True)
class FtwTest:
    """One titled test: one or more stages, all of which must pass."""

    title: str
    source: Path
    stages: tuple[Stage, ...]


def load_tests(directory: Path) -> list[FtwTest]:
    """Every enabled test of every ``*.yaml`` under ``directory``, in file order."""
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such test directory")
    tests: list[FtwTest] = []
    for path in sorted(directory.rglob("*.yaml")):
        tests.extend(_load_file(path))
    if not tests:
        raise ConfigError(f"{directory}: no go-ftw tests (*.yaml with 'tests:') found")
    return tests


def _load_file(path: Path) -> Iterator[FtwTest]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid YAML test file: {exc}") from exc
    if not isinstance(document, dict) or "tests" not in document:
        return
    if not document.get("meta", {}).get("enabled", True):
        return
    for index, test in enumerate(document["tests"] or ()):
        try:
            title = str(test.get("test_title") or f"{path.stem}-{index}")
            stages = tuple(_stage(item.get("stage", item)) for item in test["stages"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}: test #{index + 1}: malformed ({exc!r})") from exc
        yield FtwTest(title, path, stages)


def _stage(stage: Mapping[str, Any]) -> Stage:
    expect = _expect(stage.get("output") or {})
    try:
        return Stage(_request(stage["input"]), expect)
    except MalformedRequest as exc:
        return Stage(None, expect, malformed=str(exc))


def _expect(output: Mapping[str, Any]) -> Expect:
    status = output.get("status")
    statuses = status if isinstance(status, list) else [] if status is None else [status]
    return Expect(
        status=frozenset(int(s) for s in statuses),
        log_contains=_text(output.get("log_contains")),
        no_log_contains=_text(output.get("no_log_contains")),
        expect_error=bool(output.get("expect_error", False)),
    )


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _request(data: Mapping[str, Any]) -> Request:
    if "encoded_request" in data:
        try:
            return raw_request(base64.b64decode(str(data["encoded_request"]), validate=False))
        except binascii.Error as exc:
            raise MalformedRequest(f"encoded_request is not base64: {exc}") from exc
    if "raw_request" in data:
        return raw_request(str(data["raw_request"]).encode("utf-8"))
    headers = tuple((str(k), _header_value(v)) for k, v in (data.get("headers") or {}).items())
    body = _body(data.get("data"))
    names = {name.lower() for name, _ in headers}
    if body and not data.get("stop_magic", False):
        headers += _completed(names, len(body))
    return Request(
        method=str(data.get("method", "GET")),
        uri=str(data.get("uri", "/")),
        version=str(data.get("version", "HTTP/1.1")),
        headers=headers,
        body=body,
    )


def _completed(names: set[str], length: int) -> tuple[Header, ...]:
    added: tuple[Header, ...] = ()
    if "content-type" not in names:
        added += (("Content-Type", "application/x-www-form-urlencoded"),)
    if "content-length" not in names:
        added += (("Content-Length", str(length)),)
    return added


def _header_value(value: Any) -> str:
    return "" if value is None else str(value)


def _body(data: Any) -> bytes:
    if data is None:
        return b""
    if isinstance(data, list):
        data = "\r\n".join(str(line) for line in data)
    return str(data).encode("utf-8")


def raw_request(raw: bytes) -> Request:
    """A request given as bytes on the wire; only its method is read (a HEAD answer has no
    body), the rest goes to the server untouched."""
    method = raw.split(None, 1)[0].decode("latin-1") if raw.strip() else ""
    return Request(method, "", "", (), raw=raw)
