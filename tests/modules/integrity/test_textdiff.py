"""Unified diffs of configuration files with secrets masked; bounded text copies."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from yoroi.modules.integrity.textdiff import MASK, TextCopies, diff_text, is_text, mask_lines


def test_a_changed_password_shows_as_a_changed_line_without_either_value() -> None:
    old = "host=db\npassword=hunter2\nport=5432\n"
    new = "host=db\npassword=correct-horse\nport=5432\n"
    diff = diff_text(old, new, "/etc/app.conf")
    assert "hunter2" not in diff and "correct-horse" not in diff
    assert f"-password={MASK}" in diff and f"+password={MASK}" in diff
    assert diff.startswith("--- /etc/app.conf\n+++ /etc/app.conf\n@@ -1,3 +1,3 @@\n")


def test_settings_whose_names_merely_contain_a_secret_word_stay_readable() -> None:
    old = "PasswordAuthentication no\nHostKey /etc/ssh/ssh_host_ed25519_key\n"
    new = "PasswordAuthentication yes\nHostKey /etc/ssh/ssh_host_ed25519_key\n"
    diff = diff_text(old, new, "/etc/ssh/sshd_config")
    assert "-PasswordAuthentication no\n+PasswordAuthentication yes\n" in diff
    assert " HostKey /etc/ssh/ssh_host_ed25519_key" in diff


def test_secret_forms_are_masked() -> None:
    lines = [
        "define('DB_PASSWORD', 'wp-db-pw');",
        "define( 'AUTH_KEY', 'put your unique phrase here' );",
        "define('DB_NAME', 'wordpress');",
        '  "api_key": "abc123",',
        "client_secret: s3cr3t",
        "export GITHUB_TOKEN=ghp_abcdef",
        "SECURE_AUTH_SALT = 'xyz'",
        "key=0123abcd",
        "root:$6$saltsalt$hashhashhash:19000:0:99999:7:::",
        "alice:!$y$j9T$abc$def:19000:0:99999:7:::",
        "daemon:*:19000:0:99999:7:::",
        "url = postgres://app:pw0rd@db.local/app",
    ]
    masked = mask_lines(lines)
    for secret in ("wp-db-pw", "unique phrase", "abc123", "s3cr3t", "ghp_", "xyz",
                   "0123abcd", "hashhash", "$y$j9T", "pw0rd"):
        assert not any(secret in line for line in masked), secret
    assert masked[2] == "define('DB_NAME', 'wordpress');"
    assert masked[9] == f"alice:!{MASK}:19000:0:99999:7:::"
    assert masked[10] == "daemon:*:19000:0:99999:7:::"
    assert masked[11] == f"url = postgres://app:{MASK}@db.local/app"


def test_private_key_blocks_are_masked_but_their_frame_shows() -> None:
    text = "a\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\nAAAA\n" \
           "-----END OPENSSH PRIVATE KEY-----\nz\n"
    diff = diff_text("", text, "/root/.ssh/id_ed25519")
    assert "b3BlbnNzaC1rZXk" not in diff and "AAAA" not in diff
    assert "+-----BEGIN OPENSSH PRIVATE KEY-----" in diff
    assert "+-----END OPENSSH PRIVATE KEY-----" in diff and "+z" in diff


def test_equal_texts_give_no_diff() -> None:
    assert diff_text("a\nb\n", "a\nb\n", "/x") == ""


@given(st.text(), st.text(max_size=30).filter(lambda s: s.strip() and "\n" not in s
                                              and "\r" not in s))
def test_diff_never_raises_and_never_shows_a_password_value(other: str, secret: str) -> None:
    value = "pw-" + secret.strip()
    diff = diff_text(other, f"{other}\npassword = {value}\n", "/etc/x")
    added = [line for line in diff.splitlines() if line.startswith("+password")]
    assert added and all(value not in line for line in added)


def test_text_detection() -> None:
    assert is_text(b"PermitRootLogin no\n")
    assert not is_text(b"\x7fELF\x00\x01") and not is_text(b"\xff\xfe")


def test_copies_keep_small_text_files_owner_only(tmp_path: Path) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("password=x\n")
    copies = TextCopies(tmp_path / "copies")
    assert copies.keep(str(conf))
    assert copies.get(str(conf)) == "password=x\n"
    assert stat.S_IMODE(os.stat(tmp_path / "copies").st_mode) == 0o700
    kept = next((tmp_path / "copies").iterdir())
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    copies.forget(str(conf))
    assert copies.get(str(conf)) is None and copies.total_bytes == 0


def test_copies_refuse_large_binary_and_over_budget_files(tmp_path: Path) -> None:
    copies = TextCopies(tmp_path / "copies", max_file_bytes=100, max_total_bytes=150)
    big, binary, a, b = (tmp_path / n for n in ("big", "bin", "a", "b"))
    big.write_text("x" * 101)
    binary.write_bytes(b"\0" * 10)
    a.write_text("a" * 100)
    b.write_text("b" * 100)
    assert not copies.keep(str(big)) and not copies.keep(str(binary))
    assert not copies.keep(str(tmp_path / "missing")) and not copies.keep(str(tmp_path))
    assert copies.keep(str(a))
    assert not copies.keep(str(b))  # over the total budget: refused, nothing evicted
    assert copies.get(str(a)) == "a" * 100 and copies.total_bytes == 100
    assert TextCopies(tmp_path / "copies").total_bytes == 100  # counted again on reopen
