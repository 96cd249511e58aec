"""The enforcer against the real kernel, on a tmpfs each test mounts (and only that)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from yoroi.modules.appcontrol.enforcer import Enforcer, Scope
from yoroi.modules.appcontrol.inventory import file_entry
from yoroi.modules.appcontrol.loaders import Execution, LoadKind
from yoroi.modules.appcontrol.trust import TrustDatabase
from yoroi.modules.appcontrol.types import Decision, FileIdentity, Mode, Reason, Source
from yoroi.platform.fakes.sysctl import FakeSysctl

LD_SO = "/lib64/ld-linux-x86-64.so.2"
TIMEOUT = 10


class ShaJudge:
    """Trusts files whose SHA-256 is in a set; hashes through the event's descriptor."""

    def __init__(self, trusted: set[str], delay: float = 0.0) -> None:
        self.trusted = trusted
        self.delay = delay
        self.entered = threading.Event()

    def judge(self, path: str, fd: int, identity: FileIdentity, mode_bits: int) -> Decision:
        self.entered.set()
        time.sleep(self.delay)
        digest = hashlib.sha256(os.pread(fd, identity.size + 1, 0)).hexdigest()
        if digest in self.trusted:
            return Decision(True, Reason.TRUSTED, path, digest, rule="hash")
        return Decision(False, Reason.UNKNOWN, path, digest)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def install(src: str, dst: Path, mode: int = 0o755) -> Path:
    shutil.copyfile(src, dst)
    dst.chmod(mode)
    return dst


def write(dst: Path, text: str, mode: int = 0o755) -> Path:
    dst.write_text(text)
    dst.chmod(mode)
    return dst


@pytest.fixture
def box(tmpfs_mount: Path) -> Path:
    """Known tools and scripts, and new ones, on the test tmpfs."""
    if not os.path.exists(LD_SO):
        pytest.skip(f"no {LD_SO} on this machine")
    install("/bin/true", tmpfs_mount / "known")
    install("/bin/true", tmpfs_mount / "changed")
    with open(tmpfs_mount / "changed", "ab") as handle:
        handle.write(b"\0")
    install("/bin/false", tmpfs_mount / "new")
    write(tmpfs_mount / "known.sh", "#!/bin/sh\nexit 0\n")
    write(tmpfs_mount / "new.sh", "#!/bin/sh\nexit 0\n# new\n")
    write(tmpfs_mount / "new.py", "raise SystemExit(0)\n", 0o644)
    lib = shutil.which("python3")
    assert lib
    libz = "/usr/lib/x86_64-linux-gnu/libz.so.1"
    if os.path.exists(libz):
        install(libz, tmpfs_mount / "libnew.so", 0o644)
    return tmpfs_mount


class Recorder:
    """Collects on_decision reports (they come from the reporter thread)."""

    def __init__(self) -> None:
        self.items: list[tuple[Decision, Execution]] = []

    def __call__(self, decision: Decision, execution: Execution) -> None:
        self.items.append((decision, execution))

    def wait_for(self, count: int) -> list[tuple[Decision, Execution]]:
        deadline = time.monotonic() + TIMEOUT
        while len(self.items) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.items)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def enforcer_on(box: Path, mode: Mode, recorder: Recorder, **kw: object) -> Enforcer:
    judge = kw.pop("judge", None) or ShaJudge({sha(box / "known"), sha(box / "known.sh")})
    return Enforcer(
        judge,  # type: ignore[arg-type]
        mode,
        [str(box)],
        on_decision=recorder,
        sysctl=FakeSysctl({"vm.memfd_noexec": "0"}),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def running(box: Path, recorder: Recorder, request: pytest.FixtureRequest) -> Iterator[Enforcer]:
    with enforcer_on(box, request.param, recorder) as enforcer:
        yield enforcer


def run(box: Path, *argv: str) -> int:
    """Exit status of argv run in ``box``; -1 when the exec itself was refused."""
    try:
        return subprocess.run(argv, cwd=box, capture_output=True, timeout=TIMEOUT).returncode
    except PermissionError:
        return -1


ATTEMPTS = {
    "new binary": ("./new",),
    "modified binary": ("./changed",),
    "new script": ("./new.sh",),
    "new script via sh": ("sh", "new.sh"),
    "new python script": (sys.executable, "new.py"),
    "loader trick": (LD_SO, "./new"),
}


@pytest.mark.root
@pytest.mark.parametrize("running", [Mode.ENFORCE], indirect=True)
def test_enforce_runs_the_known_and_denies_the_rest(
    box: Path, running: Enforcer, recorder: Recorder
) -> None:
    assert run(box, "./known") == 0
    assert run(box, "sh", "known.sh") == 0
    assert run(box, "./known.sh") == 0
    refused = {name: run(box, *argv) for name, argv in ATTEMPTS.items()}
    assert all(status != 0 for status in refused.values()), refused
    assert run(box, "./new") == -1  # a cache hit now: denied the same way
    reports = recorder.wait_for(len(ATTEMPTS) + 1)
    assert all(not d.allow and d.reason is Reason.UNKNOWN for d, _ in reports)
    kinds = {e.kind for _, e in reports}
    assert {LoadKind.EXEC, LoadKind.SCRIPT, LoadKind.LOADER} <= kinds
    assert running.stats().denied >= len(ATTEMPTS) + 1


@pytest.mark.root
@pytest.mark.parametrize("running", [Mode.AUDIT], indirect=True)
def test_audit_runs_everything_and_reports_the_unknown(
    box: Path, running: Enforcer, recorder: Recorder
) -> None:
    assert run(box, "./known") == 0
    statuses = {name: run(box, *argv) for name, argv in ATTEMPTS.items()}
    assert statuses["new binary"] == 1  # /bin/false ran
    assert statuses["loader trick"] == 1
    assert all(status in (0, 1) for status in statuses.values()), statuses
    reports = recorder.wait_for(len(ATTEMPTS))
    paths = {e.path for d, e in reports if d.allow and d.reason is not Reason.TRUSTED}
    names = {"new", "changed", "new.sh", "new.py"}
    assert {os.path.join(box, n) for n in names} <= paths
    loader = [e for _, e in reports if e.kind is LoadKind.LOADER]
    assert loader and loader[0].exe and "ld-linux" in loader[0].exe
    assert loader[0].parents and loader[0].parents[0][0] == os.getpid()
    assert running.stats().denied == 0


@pytest.mark.root
@pytest.mark.parametrize("running", [Mode.ENFORCE], indirect=True)
def test_dlopen_of_a_new_library_is_denied(box: Path, running: Enforcer) -> None:
    if not (box / "libnew.so").exists():
        pytest.skip("no libz.so.1 to copy")
    code = "import ctypes; ctypes.CDLL('./libnew.so')"
    assert run(box, sys.executable, "-c", code) != 0


@pytest.mark.root
@pytest.mark.parametrize("running", [Mode.ENFORCE], indirect=True)
def test_own_process_is_never_denied(box: Path, running: Enforcer) -> None:
    # new.py is code to the rules (a python process opening .py), yet we opened it ourselves.
    assert (box / "new.py").read_text().startswith("raise")
    assert running.stats().protected >= 1


@pytest.mark.root
def test_a_verdict_changes_once_the_cache_is_cleared(box: Path, recorder: Recorder) -> None:
    judge = ShaJudge(set())
    with enforcer_on(box, Mode.ENFORCE, recorder, judge=judge) as enforcer:
        assert run(box, "./known") == -1
        judge.trusted.add(sha(box / "known"))
        assert run(box, "./known") == -1  # still the cached verdict
        enforcer.clear_cache()
        assert run(box, "./known") == 0


@pytest.mark.root
def test_with_the_trust_database(box: Path, recorder: Recorder, tmp_path: Path) -> None:
    db = TrustDatabase(tmp_path / "state" / "trust.msgpack")
    db.add([file_entry(box / name, Source.INVENTORY) for name in ("known", "known.sh")])
    with enforcer_on(box, Mode.ENFORCE, recorder, judge=db):
        assert run(box, "./known") == 0
        assert run(box, "./known.sh") == 0
        assert run(box, "./new") == -1
        assert run(box, "./changed") == -1
        (box / "known").chmod(0o775)
        assert run(box, "./known") == -1
    reasons = {d.reason for d, _ in recorder.wait_for(3)}
    assert reasons == {Reason.UNKNOWN, Reason.CHANGED}


@pytest.mark.root
def test_out_of_scope_paths_run_unjudged(box: Path, recorder: Recorder) -> None:
    (box / "scoped").mkdir()
    scope = Scope(paths=(str(box / "scoped"),))
    with enforcer_on(box, Mode.ENFORCE, recorder, scope=scope) as enforcer:
        assert run(box, "./new") == 1
    assert enforcer.stats().judged == 0 and not recorder.items


@pytest.mark.root
def test_a_late_decision_is_allowed_by_the_deadman(box: Path, recorder: Recorder) -> None:
    judge = ShaJudge(set(), delay=1.0)
    with enforcer_on(box, Mode.ENFORCE, recorder, judge=judge, decision_timeout=0.2) as enforcer:
        started = time.monotonic()
        assert run(box, "./new") == 1
        assert time.monotonic() - started < 0.9
    reports = recorder.wait_for(1)
    assert reports[0][0].reason is Reason.DEADMAN
    assert enforcer.stats().deadman >= 1


@pytest.mark.root
def test_stop_releases_a_pending_exec(box: Path, recorder: Recorder) -> None:
    judge = ShaJudge(set(), delay=3.0)
    enforcer = enforcer_on(box, Mode.ENFORCE, recorder, judge=judge, decision_timeout=30.0)
    enforcer.start()
    try:
        child = subprocess.Popen(SHELL_RUN_NEW, cwd=box)  # Popen returns before the exec
        assert judge.entered.wait(TIMEOUT)
        assert child.poll() is None
    finally:
        enforcer.stop()
    assert child.wait(timeout=2) == 1  # /bin/false ran: allowed at stop


@pytest.mark.root
def test_stop_releases_an_exec_by_a_child_of_the_enforcer_process(
    box: Path, recorder: Recorder
) -> None:
    """Between fork and exec the child holds a copy of the group descriptor: stop must still
    answer it (unmark, drain, close) rather than rely on closing the group."""
    judge = ShaJudge(set(), delay=3.0)
    enforcer = enforcer_on(box, Mode.ENFORCE, recorder, judge=judge, decision_timeout=30.0)
    statuses: list[int] = []
    enforcer.start()
    argv = ["./new"]  # close_fds=False: the child keeps its copy of the group until exec
    child = lambda: statuses.append(subprocess.run(argv, cwd=box, close_fds=False).returncode)  # noqa: E731
    runner = threading.Thread(target=child)
    try:
        runner.start()
        assert judge.entered.wait(TIMEOUT)
    finally:
        enforcer.stop()
        runner.join(timeout=3)
        stuck = [c for c in psutil.Process().children() if c.status() == psutil.STATUS_DISK_SLEEP]
        for child in stuck:  # only if the test fails: never leave a process waiting
            child.kill()
    assert statuses == [1]


SHELL_RUN_NEW = ["sh", "-c", "./new"]
HELPER = textwrap.dedent(
    """
    import sys, time
    from tests.modules.appcontrol.test_enforcer import ShaJudge
    from yoroi.modules.appcontrol.enforcer import Enforcer
    from yoroi.modules.appcontrol.types import Mode
    from yoroi.platform.fakes.sysctl import FakeSysctl
    judge = ShaJudge(set(), delay=60.0)
    sysctl = FakeSysctl({"vm.memfd_noexec": "0"})
    Enforcer(judge, Mode.ENFORCE, [sys.argv[1]], decision_timeout=60.0, sysctl=sysctl).start()
    print("ready", flush=True)
    judge.entered.wait(30)
    print("judging", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.root
def test_killing_the_enforcer_leaves_no_process_stuck(box: Path) -> None:
    root = Path(__file__).resolve().parents[3]
    enforcer = subprocess.Popen(
        [sys.executable, "-c", HELPER, str(box)], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        assert enforcer.stdout is not None
        assert enforcer.stdout.readline().strip() == "ready"
        child = subprocess.Popen(SHELL_RUN_NEW, cwd=box)
        assert enforcer.stdout.readline().strip() == "judging"
        time.sleep(0.2)
        assert child.poll() is None  # held by the pending decision
        os.kill(enforcer.pid, signal.SIGKILL)
        killed = time.monotonic()
        assert child.wait(timeout=5) == 1
        assert time.monotonic() - killed < 2
    finally:
        if enforcer.poll() is None:
            os.kill(enforcer.pid, signal.SIGKILL)
        enforcer.wait(timeout=TIMEOUT)
        if enforcer.stdout is not None:
            enforcer.stdout.close()
