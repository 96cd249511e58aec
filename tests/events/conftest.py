"""One sample of every event class, filled the way modules fill them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from yoroi.events import (
    Action,
    Actor,
    Analytic,
    AnalyticType,
    ApplicationLifecycle,
    Container,
    Cve,
    DetectionFinding,
    Direction,
    Disposition,
    Endpoint,
    Event,
    Feature,
    File,
    FileActivity,
    FileRemediationActivity,
    FileSystemActivity,
    FileType,
    FindingInfo,
    Fingerprint,
    HashAlgorithm,
    HttpActivity,
    HttpHeader,
    HttpRequest,
    HttpResponse,
    Image,
    LifecycleActivity,
    NetworkActivity,
    NetworkActivityId,
    NetworkConnectionInfo,
    NetworkRemediationActivity,
    Process,
    ProcessActivity,
    ProcessActivityId,
    ProcessRemediationActivity,
    Product,
    RemediationActivity,
    Resource,
    Severity,
    Status,
    Url,
    User,
    Vulnerability,
)

from .receivers import StreamReceiver, stream_receiver

WEB = Process(
    pid=812,
    name="java",
    cmd_line="/usr/bin/java -jar struts.jar",
    user=User(name="tomcat", uid="997"),
    file=File(path="/usr/bin/java"),
    parent_process=Process(pid=1, name="systemd"),
    container=Container(uid="c0ffee", name="web", image=Image(name="tomcat", tag="9")),
)
SHELL = Process(pid=4242, name="sh", cmd_line="sh -c 'id'", parent_process=WEB, user=WEB.user)


def sample_events() -> list[Event]:
    """Every class once, with nested objects, enums and unmapped evidence."""
    eicar = File(
        path="/srv/www/upload/eicar.com",
        type_id=FileType.REGULAR_FILE,
        size=68,
        hashes=[Fingerprint(algorithm_id=HashAlgorithm.SHA_256, value="275a021b" * 8)],
        owner=User(name="www-data", uid="33"),
        security_descriptor="0644",
    )
    attacker = Endpoint(ip="203.0.113.7", port=51515, hostname="evil.example")
    server = Endpoint(ip="192.0.2.10", port=8080)
    request = HttpRequest(
        http_method="POST",
        url=Url(url_string="http://192.0.2.10:8080/upload.action", path="/upload.action"),
        user_agent="curl/8.0",
        http_headers=[HttpHeader(name="Content-Type", value="%{(#_='multipart/form-data')}")],
    )
    return [
        DetectionFinding(
            message="Struts2 OGNL injection blocked",
            severity_id=Severity.CRITICAL,
            finding_info=FindingInfo(
                title="CVE-2017-5638 Struts2 Content-Type OGNL",
                uid="f-0001",
                analytic=Analytic(
                    uid="yoroi.vp.cve-2017-5638", name="Struts2 OGNL", type_id=AnalyticType.RULE
                ),
                types=["Virtual Patch"],
            ),
            resources=[Resource(uid="web-01", name="web-01", type="host")],
            src_endpoint=attacker,
            dst_endpoint=server,
            http_request=request,
            actor=Actor(process=SHELL, user=SHELL.user),
            file=eicar,
            vulnerabilities=[Vulnerability(cve=Cve(uid="CVE-2017-5638"))],
            action_id=Action.DENIED,
            disposition_id=Disposition.BLOCKED,
            unmapped={"matched": ["ognl", "#_memberAccess"], "score": 9.5},
        ),  # fmt: skip
        FileSystemActivity(
            message="file changed",
            activity_id=FileActivity.UPDATE,
            file=File(path="/var/www/wp/index.php", modified_time=1_700_000_000_000),
            actor=Actor(process=WEB),
        ),
        ProcessActivity(
            message="web server started a shell",
            activity_id=ProcessActivityId.LAUNCH,
            process=SHELL,
            actor=Actor(process=WEB),
            severity_id=Severity.MEDIUM,
        ),
        NetworkActivity(
            message="connection refused",
            activity_id=NetworkActivityId.REFUSE,
            src_endpoint=attacker,
            dst_endpoint=Endpoint(ip="192.0.2.10", port=445),
            connection_info=NetworkConnectionInfo(
                protocol_name="tcp", protocol_num=6, direction_id=Direction.INBOUND
            ),
        ),
        HttpActivity(
            message="GET /",
            http_request=HttpRequest(http_method="GET"),
            http_response=HttpResponse(code=200),
            src_endpoint=attacker,
        ),  # fmt: skip
        FileRemediationActivity(
            message="quarantined",
            activity_id=RemediationActivity.ISOLATE,
            command_uid="cmd-1",
            file=eicar,
            status_id=Status.SUCCESS,
            actor=Actor(app_name="antimalware"),
        ),
        ProcessRemediationActivity(
            message="process tree killed",
            activity_id=RemediationActivity.EVICT,
            command_uid="cmd-2",
            process=SHELL,
            status_id=Status.FAILURE,
            status_detail="ProcessGone",
        ),
        NetworkRemediationActivity(
            message="address banned for 3600 s",
            activity_id=RemediationActivity.ISOLATE,
            command_uid="cmd-3",
            src_endpoint=Endpoint(ip="203.0.113.7"),
        ),
        ApplicationLifecycle(
            message="module ips started",
            activity_id=LifecycleActivity.START,
            app=Product(feature=Feature(name="ips")),
        ),
    ]


@pytest.fixture(params=sample_events(), ids=lambda e: type(e).__name__)
def any_event(request: pytest.FixtureRequest) -> Event:
    event: Event = request.param
    return event


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Awaitable[StreamReceiver]]]:
    """Start syslog stream receivers with ``await receivers(...)``; all closed at teardown."""
    started: list[StreamReceiver] = []

    async def start(**kwargs: Any) -> StreamReceiver:
        receiver = await stream_receiver(**kwargs)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.close()
