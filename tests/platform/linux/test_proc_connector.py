"""The proc connector against the real kernel: it sees our own children fork, exec and exit."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from yoroi.errors import PlatformError
from yoroi.platform.fakes.proc_connector import FakeProcConnector
from yoroi.platform.linux.proc_connector import (
    CommEvent,
    ExecEvent,
    ExitEvent,
    ForkEvent,
    LostEvent,
    ProcConnector,
    ProcEvent,
    ProcEventKind,
    ProcEventSource,
    SidEvent,
    UidEvent,
    decode_datagram,
)


def _connector_missing() -> str | None:
    if os.geteuid() != 0:
        return "the proc connector tests run as root"
    try:
        with ProcConnector():
            return None
    except PlatformError as exc:
        return f"no proc connector here: {exc}"


real_kernel = [
    pytest.mark.root,
    pytest.mark.skipif(_connector_missing() is not None, reason=str(_connector_missing())),
]


@pytest.fixture
def conn() -> Iterator[ProcConnector]:
    with ProcConnector() as connector:
        yield connector


@pytest.fixture
def run() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start children that are killed (by pid) and reaped at the end, whatever happens."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def collect(
    source: ProcEventSource, done: Callable[[list[ProcEvent]], bool], timeout: float = 5.0
) -> list[ProcEvent]:
    """Read events until ``done(events)`` holds; fail after ``timeout`` seconds."""
    events: list[ProcEvent] = []
    deadline = time.monotonic() + timeout
    while not done(events):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"events did not arrive within {timeout} s; saw {events[-20:]}")
        events.extend(source.read(timeout=min(left, 0.2)))
    return events


def of(events: list[ProcEvent], cls: type[ProcEvent], tgid: int) -> list[ProcEvent]:
    return [e for e in events if isinstance(e, cls) and getattr(e, "tgid", None) == tgid]


def exited(tgid: int) -> Callable[[list[ProcEvent]], bool]:
    """True once the main thread of process ``tgid`` has exited."""
    return lambda events: any(isinstance(e, ExitEvent) and e.pid == tgid for e in events)


class TestRealKernel:
    pytestmark = real_kernel

    def test_sees_fork_exec_and_exit_status_of_a_child(
        self, conn: ProcConnector, run: Callable[..., subprocess.Popen[bytes]]
    ) -> None:
        shell = run("/bin/sh", "-c", "/bin/true; exit 3")
        events = collect(conn, exited(shell.pid))

        forks = of(events, ForkEvent, shell.pid)
        assert [(e.pid, e.parent_tgid) for e in forks if isinstance(e, ForkEvent)] == [
            (shell.pid, os.getpid())
        ]
        assert of(events, ExecEvent, shell.pid), "the exec of /bin/sh was not seen"
        (end,) = of(events, ExitEvent, shell.pid)
        assert isinstance(end, ExitEvent)
        assert (end.status, end.term_signal, end.parent_tgid) == (3, None, os.getpid())
        assert end.kind is ProcEventKind.EXIT
        assert abs(end.wall_time() - time.time()) < 5

        true = [e for e in events if isinstance(e, ForkEvent) and e.parent_tgid == shell.pid]
        assert true, "the shell's fork of /bin/true was not seen"
        true_exit = of(events, ExitEvent, true[0].tgid)
        assert [e.status for e in true_exit if isinstance(e, ExitEvent)] == [0]

    def test_exit_by_signal_names_the_signal(
        self, conn: ProcConnector, run: Callable[..., subprocess.Popen[bytes]]
    ) -> None:
        sleeper = run("/bin/sleep", "30")
        collect(conn, lambda events: bool(of(events, ExecEvent, sleeper.pid)))
        os.kill(sleeper.pid, signal.SIGKILL)
        (end,) = of(collect(conn, exited(sleeper.pid)), ExitEvent, sleeper.pid)
        assert isinstance(end, ExitEvent)
        assert (end.term_signal, end.status) == (signal.SIGKILL, None)

    def test_sees_session_uid_and_comm_changes(
        self, conn: ProcConnector, run: Callable[..., subprocess.Popen[bytes]]
    ) -> None:
        if shutil.which("setsid") is None or shutil.which("setpriv") is None:
            pytest.skip("setsid and setpriv (util-linux) are needed")
        script = "printf yoroi-renamed > /proc/$$/comm; exec setpriv --reuid=65534 /bin/true"
        child = run("setsid", "/bin/sh", "-c", script)
        events = collect(conn, exited(child.pid))
        assert of(events, SidEvent, child.pid), "setsid() was not seen"
        names = [e.comm for e in of(events, CommEvent, child.pid) if isinstance(e, CommEvent)]
        assert "yoroi-renamed" in names
        uids = [e.euid for e in of(events, UidEvent, child.pid) if isinstance(e, UidEvent)]
        assert 65534 in uids

    def test_dropped_messages_show_as_a_lost_event_and_reading_goes_on(
        self, run: Callable[..., subprocess.Popen[bytes]]
    ) -> None:
        with ProcConnector(rcvbuf=1) as tiny:  # the kernel rounds it up to its minimum
            for _ in range(50):  # far more messages than the smallest buffer holds
                run("/bin/true").wait(timeout=10)
            events = tiny.read()
            assert any(isinstance(e, LostEvent) for e in events)
            assert tiny.lost >= 1
            # the tiny buffer may overflow again from other processes on the machine: a later
            # child's exit must still come through on one of a few tries
            for _ in range(20):
                tiny.read()  # drain what is queued before the next try
                later = run("/bin/true")
                seen: list[ProcEvent] = []
                deadline = time.monotonic() + 1.0
                while not exited(later.pid)(seen) and time.monotonic() < deadline:
                    seen.extend(tiny.read(timeout=0.05))
                later.wait(timeout=10)
                if exited(later.pid)(seen):
                    break
            else:
                pytest.fail("no later exit arrived after the overflow")

    async def test_fileno_works_with_asyncio(
        self, conn: ProcConnector, run: Callable[..., subprocess.Popen[bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        seen: list[ProcEvent] = []
        ready = asyncio.Event()
        child_pid: list[int] = []

        def on_readable() -> None:
            seen.extend(conn.read())
            if child_pid and exited(child_pid[0])(seen):
                ready.set()

        loop.add_reader(conn.fileno(), on_readable)
        try:
            child_pid.append(run("/bin/true").pid)
            await asyncio.wait_for(ready.wait(), timeout=5)
        finally:
            loop.remove_reader(conn.fileno())

    def test_read_needs_open_and_close_twice_is_harmless(self) -> None:
        connector = ProcConnector()
        with pytest.raises(PlatformError, match="open"):
            connector.read()
        connector.open()
        connector.close()
        connector.close()
        with pytest.raises(PlatformError, match="open"):
            connector.fileno()

    def test_a_listener_in_a_user_namespace_is_refused(self) -> None:
        if shutil.which("unshare") is None:
            pytest.skip("unshare (util-linux) is needed")
        code = (
            "from yoroi.platform.linux.proc_connector import ProcConnector\n"
            "from yoroi.errors import PermissionDenied\n"
            "try:\n    ProcConnector().open()\n"
            "except PermissionDenied as e:\n    print('refused:', e)\n"
        )
        out = subprocess.run(
            ["unshare", "--user", "--map-root-user", sys.executable, "-c", code],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if "unshare failed" in out.stderr:
            pytest.skip(f"user namespaces are not available: {out.stderr.strip()}")
        assert out.stdout.startswith("refused:"), out.stdout + out.stderr
        assert "namespace" in out.stdout


def _datagram(what: int, payload: bytes, idx: int = 1, dlen: int | None = None) -> bytes:
    event = struct.pack("=IIQ", what, 1, 123456789) + payload
    size = len(event) if dlen is None else dlen
    cn = struct.pack("=IIIIHH", idx, 1, 0, 0, size, 0) + event
    return struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn


def test_decodes_an_exit_datagram() -> None:
    payload = struct.pack("=iiIIii", 40, 41, 3 << 8, 17, 7, 7)
    (event,) = decode_datagram(_datagram(0x80000000, payload))
    assert event == ExitEvent(123456789, 1, 40, 41, 3 << 8, 17, parent_pid=7, parent_tgid=7)
    assert isinstance(event, ExitEvent) and event.status == 3 and not event.is_process


def test_decodes_fork_with_the_child_as_the_subject() -> None:
    (event,) = decode_datagram(_datagram(0x1, struct.pack("=iiii", 10, 10, 11, 11)))
    assert event == ForkEvent(123456789, 1, 11, 11, parent_pid=10, parent_tgid=10)


def test_skips_other_connectors_and_unknown_kinds() -> None:
    assert decode_datagram(_datagram(0x2, struct.pack("=ii", 5, 5), idx=7)) == []
    assert decode_datagram(_datagram(0x400, struct.pack("=ii", 5, 5))) == []
    assert decode_datagram(_datagram(0x2, b"\x01")) == []


@given(st.binary(max_size=200))
def test_decoding_any_bytes_never_crashes(buf: bytes) -> None:
    try:
        decode_datagram(buf)
    except PlatformError:
        pass  # a netlink error message: reported, not a crash


KINDS = [k.value for k in ProcEventKind if k is not ProcEventKind.LOST]


@given(st.sampled_from([0, *KINDS]), st.binary(max_size=40), st.none() | st.integers(0, 0xFFFF))
def test_any_payload_of_a_known_kind_decodes_or_is_skipped(
    what: int, payload: bytes, dlen: int | None
) -> None:
    for item in decode_datagram(_datagram(what, payload, dlen=dlen)):
        if isinstance(item, ProcEvent):
            assert item.kind.value == what and item.timestamp_ns == 123456789


def test_fake_connector_has_the_same_interface() -> None:
    fake = FakeProcConnector()
    with pytest.raises(PlatformError, match="open"):
        fake.read()
    with fake:
        source: ProcEventSource = fake
        exec_event = ExecEvent(time.monotonic_ns(), 0, 42, 42)
        fake.inject(exec_event)
        fake.inject_lost()
        assert select.select([source.fileno()], [], [], 1)[0]
        events = source.read(timeout=1)
        assert [e.kind for e in events] == [ProcEventKind.EXEC, ProcEventKind.LOST]
        assert source.read() == []
        assert not select.select([source.fileno()], [], [], 0)[0]
    assert not fake.is_open
