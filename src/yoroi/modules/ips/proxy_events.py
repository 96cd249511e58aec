"""OCSF events of an HTTP exchange: one HTTP Activity, and a Detection Finding per rule that
matched (rule id, CVE, matched variable with its value redacted to a prefix, client, action)."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from yoroi.events import (
    Action as OcsfAction,
)
from yoroi.events import (
    DetectionFinding,
    Disposition,
    Event,
    HttpActivity,
    Severity,
    encode_json,
)
from yoroi.events.objects import (
    Analytic,
    Cve,
    Endpoint,
    FindingInfo,
    HttpRequest,
    HttpResponse,
    Resource,
    Url,
    Vulnerability,
)
from yoroi.modules.ips.frontend import Action, Exchange, ExchangeHook
from yoroi.modules.ips.types import RuleMatch

# ModSecurity severities 0 (emergency) .. 7 (debug) as OCSF severities.
SEVERITIES = (Severity.CRITICAL, Severity.CRITICAL, Severity.CRITICAL, Severity.HIGH,
              Severity.MEDIUM, Severity.LOW, Severity.INFORMATIONAL, Severity.INFORMATIONAL)
DISPOSITIONS = {Action.ALLOWED: Disposition.ALLOWED, Action.BLOCKED: Disposition.BLOCKED,
                Action.DETECTED: Disposition.DETECTED}


def http_request(exchange: Exchange) -> HttpRequest:
    """The request part of the events."""
    parts = urlsplit(exchange.url)
    url = Url(url_string=f"{exchange.scheme}://{exchange.host}{exchange.url}",
              scheme=exchange.scheme, hostname=exchange.host or None, path=parts.path,
              query_string=parts.query or None)
    return HttpRequest(http_method=exchange.method or None, url=url,
                       length=exchange.request_bytes)


def endpoints(exchange: Exchange) -> tuple[Endpoint, Endpoint]:
    """Client and server endpoints."""
    return (Endpoint(ip=exchange.client[0] or None, port=exchange.client[1] or None),
            Endpoint(ip=exchange.server[0] or None, port=exchange.server[1] or None))


def http_activity(exchange: Exchange) -> HttpActivity:
    """The HTTP Activity event of an exchange."""
    src, dst = endpoints(exchange)
    return HttpActivity(
        message=f"{exchange.method} {exchange.url} -> {exchange.status} ({exchange.action})",
        time=exchange.time_ms, http_request=http_request(exchange),
        http_response=HttpResponse(code=exchange.status or None,
                                   length=exchange.response_bytes),
        src_endpoint=src, dst_endpoint=dst, status_detail=exchange.error,
        unmapped={"yoroi.action": str(exchange.action),
                  "yoroi.rule_ids": list(exchange.rule_ids)} if exchange.matches else {})


def detection_finding(exchange: Exchange, match: RuleMatch) -> DetectionFinding:
    """A Detection Finding for one rule that matched in an exchange."""
    src, dst = endpoints(exchange)
    known = match.severity is not None and 0 <= match.severity < len(SEVERITIES)
    severity = SEVERITIES[match.severity] if known and match.severity is not None \
        else Severity.MEDIUM
    vulnerabilities = [Vulnerability(cve=Cve(uid=match.cve), title=match.message)] \
        if match.cve else []
    where = f"{match.variable}: {match.value_prefix}" if match.variable else ""
    return DetectionFinding(
        message=f"{match.message} [{exchange.action}]", time=exchange.time_ms,
        severity_id=severity,
        finding_info=FindingInfo(
            title=match.message, uid=str(uuid.uuid4()), types=list(match.tags),
            desc=where or None,
            analytic=Analytic(uid=str(match.rule_id), name=match.message)),
        resources=[Resource(name=exchange.host or None, type="web application",
                            uid=exchange.url)],
        src_endpoint=src, dst_endpoint=dst, http_request=http_request(exchange),
        vulnerabilities=vulnerabilities,
        action_id=OcsfAction.DENIED if exchange.action == Action.BLOCKED else OcsfAction.ALLOWED,
        disposition_id=DISPOSITIONS[exchange.action],
        unmapped={"matched.variable": match.variable, "matched.value_prefix": match.value_prefix,
                  "rule.phase": match.phase})


def exchange_events(exchange: Exchange, every: bool = True) -> list[Event]:
    """HTTP Activity plus one Detection Finding per matched rule; with ``every`` False, nothing
    for a clean exchange (no match, no error)."""
    if not every and not exchange.matches and exchange.error is None:
        return []
    return [http_activity(exchange), *(detection_finding(exchange, m) for m in exchange.matches)]


def events_file_hook(path: Path, every: bool = False) -> ExchangeHook:
    """An ``on_exchange`` hook appending the exchange's events to ``path`` as JSON lines
    (by default only for exchanges where a rule matched or something failed).

    One ``write`` per exchange on an O_APPEND descriptor, so that the lines of several worker
    processes never interleave.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    lock = threading.Lock()

    def hook(exchange: Exchange) -> None:
        events = exchange_events(exchange, every)
        if not events:
            return
        data = b"".join(encode_json(event) + b"\n" for event in events)
        with lock:
            os.write(fd, data)

    return hook
