"""System entity snapshots and their diffs: on a fake root tree and fakes, then the real host."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from yoroi.errors import ConfigError
from yoroi.modules.integrity.entities import (
    COLLECTORS,
    SnapshotOptions,
    diff,
    dumps,
    loads,
    snapshot,
)
from yoroi.modules.integrity.entities_accounts import parse_authorized_key
from yoroi.modules.integrity.types import ChangeKind
from yoroi.platform.fakes.dpkg import FakeDpkgDatabase
from yoroi.platform.fakes.process import FakeProcesses
from yoroi.platform.fakes.system import FakeSystem
from yoroi.platform.linux.dpkg import Package

ALICE_HASH = "$y$j9T$abcdefghijklmnop$QRSTUVWXYZ0123456789abcdefghijklmnopqrstu"
FILES_KINDS = ["user", "group", "sudoers", "authorized_key", "unit", "timer", "crontab"]


def write(root: Path, path: str, text: str) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def public_key(comment: str) -> str:
    key = Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{raw.decode()} {comment}"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small system tree: two users, sudo rules, cron, two units and a timer."""
    write(tmp_path, "/etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"
          "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n")  # fmt: skip
    write(tmp_path, "/etc/shadow", f"root:*:20000:0:99999:7:::\nalice:{ALICE_HASH}:20100::::::\n")
    write(tmp_path, "/etc/group", "root:x:0:\nsudo:x:27:alice\nalice:x:1000:\n")
    write(tmp_path, "/etc/sudoers", "# comment\nDefaults   env_reset\n"
          "root ALL=(ALL:ALL) ALL  # inline\n%sudo ALL=(ALL) \\\n  ALL\n"
          "@includedir /etc/sudoers.d\n")  # fmt: skip
    write(tmp_path, "/etc/sudoers.d/ops", "alice ALL=(root) NOPASSWD: /usr/bin/systemctl\n")
    write(tmp_path, "/etc/sudoers.d/README.txt", "ignored ALL=(ALL) ALL\n")
    write(tmp_path, "/etc/crontab", "SHELL=/bin/sh\n17 *  * * *  root  cd / && run-parts\n")
    write(tmp_path, "/etc/cron.d/job", "@reboot root /usr/local/bin/boot.sh\n# off\n")
    write(tmp_path, "/var/spool/cron/crontabs/alice", "*/5 * * * * /home/alice/sync\n")
    write(tmp_path, "/home/alice/.ssh/authorized_keys", public_key("alice@laptop") + "\n")
    units = "/usr/lib/systemd/system"
    write(tmp_path, f"{units}/web.service", "[Service]\nExecStart=/bin/web\n[Install]\n"
          "WantedBy=multi-user.target\n")  # fmt: skip
    write(tmp_path, f"{units}/helper.service", "[Service]\nExecStart=/bin/helper\n")
    write(tmp_path, f"{units}/backup.timer", "[Timer]\nOnCalendar=daily\n[Install]\n")
    write(tmp_path, f"{units}/getty@.service", "[Service]\nExecStart=/sbin/agetty\n[Install]\n")
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "web.service").symlink_to(f"{units}/web.service")
    (wants / "getty@tty1.service").symlink_to(f"{units}/getty@.service")
    return tmp_path


def files_snapshot(root: Path, notices: list[str] | None = None) -> dict[str, dict[str, dict]]:
    return snapshot(FILES_KINDS, SnapshotOptions(root=root), notices)


def changes_of(before: dict, after: dict) -> list[tuple[str, str, str, tuple[str, ...]]]:
    return [(c.entity, c.key, c.kind.value, c.fields) for c in diff(before, after)]


def test_users_with_password_state_never_the_hash(root: Path) -> None:
    taken = files_snapshot(root)
    assert taken["user"]["alice"] == {
        "uid": 1000, "gid": 1000, "gecos": "Alice", "home": "/home/alice", "shell": "/bin/bash",
        "password": "set", "password_changed": 20100, "expires": None,
    }  # fmt: skip
    assert taken["user"]["root"]["password"] == "disabled"
    assert ALICE_HASH not in dumps(taken).decode()
    assert ALICE_HASH.split("$")[-1] not in dumps(taken).decode()


def test_a_new_user_and_a_group_member_are_reported(root: Path) -> None:
    before = files_snapshot(root)
    with open(root / "etc/passwd", "a") as f:
        f.write("mallory:x:0:0::/root:/bin/sh\n")
    with open(root / "etc/shadow", "a") as f:
        f.write("mallory::20200::::::\n")
    write(root, "/etc/group", "root:x:0:\nsudo:x:27:alice,mallory\nalice:x:1000:\n")
    changes = diff(before, files_snapshot(root))
    assert [(c.entity, c.key, c.kind) for c in changes] == [
        ("group", "sudo", ChangeKind.MODIFIED),
        ("user", "mallory", ChangeKind.ADDED),
    ]
    assert changes[0].fields == ("members",)
    assert changes[1].after is not None and changes[1].after["password"] == "empty"
    assert changes[1].after["uid"] == 0


def test_locking_a_password_is_a_modification(root: Path) -> None:
    before = files_snapshot(root)
    write(root, "/etc/shadow", f"root:*:20000:0:99999:7:::\nalice:!{ALICE_HASH}:20101::::::\n")
    assert changes_of(before, files_snapshot(root)) == [
        ("user", "alice", "modified", ("password", "password_changed"))
    ]


def test_sudoers_effective_lines_follow_includedir(root: Path) -> None:
    rules = files_snapshot(root)["sudoers"]
    assert set(rules) == {
        "Defaults env_reset", "root ALL=(ALL:ALL) ALL", "%sudo ALL=(ALL) ALL",
        "@includedir /etc/sudoers.d", "alice ALL=(root) NOPASSWD: /usr/bin/systemctl",
    }  # fmt: skip
    assert rules["alice ALL=(root) NOPASSWD: /usr/bin/systemctl"] == {
        "files": ["/etc/sudoers.d/ops"]
    }


def test_a_dropped_sudoers_file_is_reported(root: Path) -> None:
    before = files_snapshot(root)
    write(root, "/etc/sudoers.d/zz", "mallory ALL=(ALL) NOPASSWD: ALL\n")
    assert changes_of(before, files_snapshot(root)) == [
        ("sudoers", "mallory ALL=(ALL) NOPASSWD: ALL", "added", ())
    ]


def test_crontab_entries_with_their_users(root: Path) -> None:
    entries = files_snapshot(root)["crontab"]
    assert entries["/etc/crontab: 17 * * * * root cd / && run-parts"] == {
        "file": "/etc/crontab", "schedule": "17 * * * *", "user": "root",
        "command": "cd / && run-parts", "count": 1,
    }  # fmt: skip
    assert entries["/etc/cron.d/job: @reboot root /usr/local/bin/boot.sh"]["schedule"] == "@reboot"
    assert entries["/var/spool/cron/crontabs/alice: */5 * * * * /home/alice/sync"]["user"] == (
        "alice"
    )
    assert entries["/etc/crontab: SHELL=/bin/sh"]["value"] == "/bin/sh"
    assert len(entries) == 4


def test_units_states_hashes_and_template_instances(root: Path) -> None:
    taken = files_snapshot(root)
    units, timers = taken["unit"], taken["timer"]
    assert units["web.service"]["state"] == "enabled"
    assert units["web.service"]["wanted_by"] == ["multi-user.target.wants"]
    assert units["helper.service"]["state"] == "static"
    assert units["getty@tty1.service"]["path"] == "/usr/lib/systemd/system/getty@.service"
    assert units["getty@tty1.service"]["state"] == "enabled"
    assert set(timers) == {"backup.timer"} and timers["backup.timer"]["state"] == "disabled"


def test_unit_override_mask_and_dropin_are_reported(root: Path) -> None:
    before = files_snapshot(root)
    write(root, "/etc/systemd/system/web.service.d/evil.conf", "[Service]\nExecStartPre=/tmp/x\n")
    (root / "etc/systemd/system/helper.service").symlink_to("/dev/null")
    write(root, "/etc/systemd/system/backup.timer", "[Timer]\nOnCalendar=minutely\n[Install]\n")
    assert changes_of(before, files_snapshot(root)) == [
        ("timer", "backup.timer", "modified", ("path", "sha256")),
        ("unit", "helper.service", "modified", ("path", "sha256", "state")),
        ("unit", "web.service", "modified", ("dropins",)),
    ]


def test_authorized_keys_fingerprints_match_ssh_keygen(root: Path) -> None:
    keys = files_snapshot(root)["authorized_key"]
    [(key, record)] = keys.items()
    assert record["user"] == "alice" and record["comment"] == "alice@laptop"
    assert record["type"] == "ssh-ed25519" and record["options"] == ""
    assert key == f"alice:{record['fingerprint']}"
    if shutil.which("ssh-keygen"):
        path = root / "home/alice/.ssh/authorized_keys"
        listed = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True)
        assert listed.stdout.split()[1] == record["fingerprint"]


def test_a_new_authorized_key_with_options_is_reported(root: Path) -> None:
    before = files_snapshot(root)
    line = 'from="10.0.0.1",command="echo hi there" ' + public_key("mallory")
    with open(root / "home/alice/.ssh/authorized_keys", "a") as f:
        f.write(line + "\nnot a key at all\n")
    notices: list[str] = []
    changes = diff(before, files_snapshot(root, notices))
    assert [(c.entity, c.kind) for c in changes] == [("authorized_key", ChangeKind.ADDED)]
    assert changes[0].after is not None
    assert changes[0].after["options"] == 'from="10.0.0.1",command="echo hi there"'
    assert any("line 3: not a public key" in n for n in notices)


@given(st.text(min_size=1).filter(lambda s: s.strip() != ""))
def test_authorized_key_parser_never_raises(line: str) -> None:
    parse_authorized_key(line.strip())


def test_unreadable_and_missing_files_are_skipped_with_notices(tmp_path: Path) -> None:
    write(tmp_path, "/etc/passwd", "bob:x:1001:1001::/home/bob:/bin/sh\nbroken line\n")
    (tmp_path / "etc/shadow").mkdir()  # unreadable as a file
    notices: list[str] = []
    taken = files_snapshot(tmp_path, notices)
    assert taken["user"]["bob"]["password"] == "unknown"
    assert taken["group"] == {} and taken["unit"] == {}
    assert any(n.startswith("/etc/shadow: unreadable") for n in notices)
    assert any("/etc/passwd line 2" in n for n in notices)
    assert "/etc/sudoers: absent, skipped" in notices


def host_options(system: FakeSystem, procs: FakeProcesses) -> SnapshotOptions:
    packages = FakeDpkgDatabase([Package("openssh-server", "amd64", "1:9.2p1-2", "install ok "
                                         "installed")])  # fmt: skip
    return SnapshotOptions(system=system, processes=procs, packages=packages)


def test_ports_modules_sysctls_and_packages_from_fakes() -> None:
    system = FakeSystem(sysctl={"kernel.randomize_va_space": "2", "fs.protected_regular": "2"})
    procs = FakeProcesses()
    procs.add(812, comm="sshd", exe="/usr/sbin/sshd")
    system.listen("tcp", "0.0.0.0", 22, pids=(812,))
    system.load_module("nf_tables", size=364544)
    kinds = ["port", "kmod", "sysctl", "package"]
    before = snapshot(kinds, host_options(system, procs))
    assert before["port"]["tcp/0.0.0.0:22"] == {
        "pid": 812, "exe": "/usr/sbin/sshd", "comm": "sshd", "user": "root",
    }  # fmt: skip
    assert before["package"] == {
        "openssh-server": {"version": "1:9.2p1-2", "arch": "amd64", "state": "installed"}
    }
    procs.add(4444, comm="nc", exe="/usr/bin/nc", user="www-data")
    system.listen("tcp", "0.0.0.0", 4444, pids=(4444,))
    system.load_module("rootkit", taint="(OE)")
    system.sysctl["kernel.randomize_va_space"] = "0"
    assert changes_of(before, snapshot(kinds, host_options(system, procs))) == [
        ("kmod", "rootkit", "added", ()),
        ("port", "tcp/0.0.0.0:4444", "added", ()),
        ("sysctl", "kernel.randomize_va_space", "modified", ("value",)),
    ]


def test_a_restarted_service_is_not_a_port_change() -> None:
    system, procs = FakeSystem(), FakeProcesses()
    procs.add(812, comm="sshd", exe="/usr/sbin/sshd")
    system.listen("tcp", "0.0.0.0", 22, pids=(812,))
    before = snapshot(["port"], host_options(system, procs))
    procs.add(913, comm="sshd", exe="/usr/sbin/sshd")
    system.close("tcp", "0.0.0.0", 22)
    system.listen("tcp", "0.0.0.0", 22, pids=(913,))
    assert diff(before, snapshot(["port"], host_options(system, procs))) == []
    procs.add(914, comm="python3", exe="/usr/bin/python3")
    system.close("tcp", "0.0.0.0", 22)
    system.listen("tcp", "0.0.0.0", 22, pids=(914,))
    assert changes_of(before, snapshot(["port"], host_options(system, procs))) == [
        ("port", "tcp/0.0.0.0:22", "modified", ("comm", "exe", "pid"))
    ]


def test_a_kernel_without_modules_gives_none_and_a_notice() -> None:
    notices: list[str] = []
    options = SnapshotOptions(system=FakeSystem(modules_supported=False))
    assert snapshot(["kmod"], options, notices) == {"kmod": {}}
    assert notices and "without loadable modules" in notices[0]


def test_snapshots_survive_json_and_diff_only_shared_kinds(root: Path) -> None:
    taken = files_snapshot(root)
    again = loads(dumps(taken))
    assert again == taken and diff(taken, again) == []
    assert diff({"user": {}}, {"group": {"x": {"gid": 1}}}) == []
    with pytest.raises(ConfigError, match="not an entity snapshot"):
        loads(b'{"format": "yoroi-entities/1"}')
    with pytest.raises(ConfigError, match="expected"):
        loads(b'{"format": "other/9", "entities": {}}')


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown entity kind"):
        snapshot(["users"])
    assert "suid" in COLLECTORS


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="owners of sockets need root to see")


@pytest.mark.root
@needs_root
def test_real_new_listening_port_appears_with_our_pid_then_disappears() -> None:
    before = snapshot(["port"])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        key = f"tcp/127.0.0.1:{sock.getsockname()[1]}"
        during = snapshot(["port"])
    after = snapshot(["port"])
    added = [c for c in diff(before, during) if c.key == key]
    assert [c.kind for c in added] == [ChangeKind.ADDED]
    assert added[0].after is not None and added[0].after["pid"] == os.getpid()
    assert added[0].after["exe"] == os.path.realpath(f"/proc/{os.getpid()}/exe")
    assert [c.kind for c in diff(during, after) if c.key == key] == [ChangeKind.REMOVED]


def test_real_new_suid_file_under_a_tmp_root_appears(tmp_path: Path) -> None:
    write(tmp_path, "/usr/bin/tool", "#!/bin/sh\n")
    options = SnapshotOptions(root=tmp_path, suid_roots=("/usr/bin", "/bin"))
    before = snapshot(["suid"], options)
    assert before == {"suid": {}}
    (tmp_path / "bin").symlink_to("usr/bin")  # merged /usr: walked once
    os.chmod(tmp_path / "usr/bin/tool", 0o4755)
    [change] = diff(before, snapshot(["suid"], options))
    assert (change.key, change.kind) == ("/usr/bin/tool", ChangeKind.ADDED)
    assert change.after is not None and change.after["mode"] == "4755"


def test_real_host_snapshot_is_fast_and_reads_sysctl_and_modules() -> None:
    notices: list[str] = []
    start = time.monotonic()
    taken = snapshot(notices=notices)
    assert time.monotonic() - start < 2.0
    expected = Path("/proc/sys/kernel/randomize_va_space").read_text().strip()
    assert taken["sysctl"]["kernel.randomize_va_space"] == {"value": expected}
    if Path("/proc/modules").exists():
        listed = {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}
        assert set(taken["kmod"]) == listed
    else:
        assert taken["kmod"] == {} and any("kernel modules" in n for n in notices)
    assert "root" in taken["user"] and taken["package"]
