"""The ransomware detector on simulated event sequences whose content profiles are real.

Every profile is computed from real bytes: originals (Python sources, JSON, a PDF-like file, a
PNG, a docx, a real sqlite database), their real AES-CTR ciphertext, real gzip/tar output. Each
ransomware variant of the issue must be judged by its 4th file; honest bulk work never.
"""

from __future__ import annotations

import base64
import gzip
import io
import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.modules.behavior.test_content import TEXT, docx, pdf, png
from yoroi.errors import PolicyError
from yoroi.modules.behavior.content import profile_of
from yoroi.modules.behavior.detector import Detector, DetectorSettings
from yoroi.modules.behavior.types import Activity, ContentProfile, FileEvent, Signal

FAMILY = 41


def aes(data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def originals() -> Iterator[tuple[str, bytes]]:
    """An endless supply of varied real documents."""
    makers: list[tuple[str, Callable[[int], bytes]]] = [
        ("txt", lambda i: TEXT[i * 997 % 20000 :][:30000]),
        ("json", lambda i: json.dumps({"id": i, "rows": list(range(i, i + 900))}).encode()),
        ("pdf", lambda i: pdf()),
        ("png", lambda i: png(48 + i % 7, 48)),
        ("docx", lambda i: docx()),
        ("csv", lambda i: b"".join(b"%d,name%d,%d\n" % (n, n, n * i) for n in range(2000))),
    ]
    for i in itertools.count():
        extension, make = makers[i % len(makers)]
        yield f"report-{i}.{extension}", make(i)


@dataclass
class Run:
    """A family's events, with the clock and the count of files it has touched."""

    detector: Detector = field(default_factory=Detector)
    family: int = FAMILY
    now: float = 1000.0
    files: int = 0

    def do(
        self,
        activity: Activity,
        path: str,
        before: ContentProfile | None = None,
        after: ContentProfile | None = None,
        old_path: str | None = None,
        pid: int = 500,
    ) -> list[Signal]:
        self.now += 0.005
        event = FileEvent(activity, path, pid, self.now, old_path)
        return [e.signal for e in self.detector.observe(self.family, event, before, after)]

    def judged(self) -> bool:
        return self.detector.verdict(self.family, self.now) is not None


def files_until_verdict(
    run: Run, attack: Callable[[Run, str, bytes], None], limit: int = 10
) -> int:
    for name, data in itertools.islice(originals(), limit):
        run.files += 1
        attack(run, f"/srv/share/d{run.files % 3}/{name}", data)
        if run.judged():
            return run.files
    return 10**6


# -- the ransomware variants of the issue -------------------------------------------------------


def in_place(run: Run, path: str, data: bytes) -> None:
    before = profile_of(data)
    run.do(Activity.OPEN, path, before)
    run.do(Activity.WRITE, path, before, profile_of(aes(data)))


def new_file_then_delete(run: Run, path: str, data: bytes) -> None:
    run.do(Activity.OPEN, path, profile_of(data))
    run.do(Activity.CREATE, path + ".locked")
    run.do(Activity.WRITE, path + ".locked", None, profile_of(aes(data) + os.urandom(512)))
    run.do(Activity.DELETE, path, profile_of(data))


def delete_then_new_file(run: Run, path: str, data: bytes) -> None:
    run.do(Activity.DELETE, path, profile_of(data))
    run.do(Activity.CREATE, path + ".enc")
    run.do(Activity.WRITE, path + ".enc", None, profile_of(aes(data)))


def random_name_and_delete(run: Run, path: str, data: bytes) -> None:
    new = os.path.join(os.path.dirname(path), os.urandom(6).hex())
    run.do(Activity.CREATE, new)
    run.do(Activity.WRITE, new, None, profile_of(aes(data) + os.urandom(256)))
    run.do(Activity.DELETE, path, profile_of(data))


def rename_then_encrypt(run: Run, path: str, data: bytes) -> None:
    run.do(Activity.OPEN, path, profile_of(data))  # the first-open snapshot
    run.do(Activity.RENAME, path + ".crypt", old_path=path)
    run.do(Activity.WRITE, path + ".crypt", None, profile_of(aes(data)))  # before: remembered


def encrypt_then_rename(run: Run, path: str, data: bytes) -> None:
    encrypted = profile_of(aes(data))
    run.do(Activity.WRITE, path, profile_of(data), encrypted)
    run.do(Activity.RENAME, path + ".x7k2q", encrypted, old_path=path)


def wannacry(run: Run, path: str, data: bytes) -> None:
    """Write ``x.WNCRYT``, rename it to ``x.WNCRY``, delete ``x``."""
    run.do(Activity.OPEN, path, profile_of(data))
    run.do(Activity.CREATE, path + ".WNCRYT")
    run.do(Activity.WRITE, path + ".WNCRYT", None, profile_of(b"WANACRY!" + aes(data)))
    run.do(Activity.RENAME, path + ".WNCRY", old_path=path + ".WNCRYT")
    run.do(Activity.DELETE, path)


def replace_by_rename(run: Run, path: str, data: bytes) -> None:
    """Ciphertext written to a temporary file, renamed over the original."""
    run.do(Activity.OPEN, path, profile_of(data))
    run.do(Activity.CREATE, path + ".tmp")
    run.do(Activity.WRITE, path + ".tmp", None, profile_of(aes(data)))
    run.do(Activity.RENAME, path, old_path=path + ".tmp")


def intermittent(run: Run, path: str, data: bytes) -> None:
    """1 MiB files of which only the first 4 KiB are encrypted."""
    big = (data * (1 + 2**20 // len(data)))[: 2**20]
    run.do(Activity.WRITE, path, profile_of(big), profile_of(aes(big[:4096]) + big[4096:]))


def base64_armoured(run: Run, path: str, data: bytes) -> None:
    run.do(Activity.WRITE, path, profile_of(data), profile_of(base64.encodebytes(aes(data))))


@pytest.mark.parametrize(
    "attack",
    [
        in_place,
        new_file_then_delete,
        delete_then_new_file,
        random_name_and_delete,
        rename_then_encrypt,
        encrypt_then_rename,
        wannacry,
        replace_by_rename,
        intermittent,
        base64_armoured,
    ],
)
def test_ransomware_is_judged_by_the_third_file(attack: Callable[[Run, str, bytes], None]) -> None:
    run = Run()
    assert files_until_verdict(run, attack) == 3
    verdict = run.detector.verdict(FAMILY, run.now)
    assert verdict is not None and verdict.kind == "ransomware"
    assert verdict.score >= verdict.threshold == 10.0


def test_slow_run_one_file_every_30_seconds() -> None:
    run = Run()

    def slow(run: Run, path: str, data: bytes) -> None:
        run.now += 30
        in_place(run, path, data)

    assert files_until_verdict(run, slow) == 3


def test_very_slow_run_one_file_every_10_minutes_still_accumulates() -> None:
    run = Run()

    def slower(run: Run, path: str, data: bytes) -> None:
        run.now += 600
        in_place(run, path, data)

    assert files_until_verdict(run, slower) <= 4


def test_multi_process_family_is_one_actor() -> None:
    run = Run()
    pids = itertools.count(700)

    def forking(run: Run, path: str, data: bytes) -> None:
        pid = next(pids)
        run.do(Activity.WRITE, path, profile_of(data), profile_of(aes(data)), pid=pid)

    assert files_until_verdict(run, forking) == 3
    assert run.detector.summary(FAMILY)["pids"] == [700, 701, 702]


def test_ransom_notes_in_many_directories_bring_the_verdict_earlier() -> None:
    run = Run()
    note = b"Your files are encrypted. Send 1 BTC to bc1q... and mail us your ID.\n" * 5
    signals: list[Signal] = []
    for directory in ("/srv/a", "/srv/b", "/srv/c"):
        run.do(Activity.CREATE, f"{directory}/README-DECRYPT.txt")
        signals += run.do(Activity.WRITE, f"{directory}/README-DECRYPT.txt", None, profile_of(note))
    assert signals == [Signal.RANSOM_NOTE]
    data = TEXT[:20000]
    for n in (1, 2):
        run.do(Activity.WRITE, f"/srv/a/{n}.txt", profile_of(data), profile_of(aes(data)))
    assert run.judged()  # 3 + 2 * 4


def test_a_touched_decoy_is_judged_at_once() -> None:
    run = Run()
    evidence = run.detector.decoy_touched(FAMILY, "/srv/share/.~0001.docx", 812, time=run.now)
    assert [e.signal for e in evidence] == [Signal.DECOY]
    assert run.judged()


# -- honest bulk work ---------------------------------------------------------------------------


def texts(count: int) -> Iterator[tuple[str, bytes]]:
    return itertools.islice(originals(), count)


def assert_innocent(run: Run) -> None:
    assert not run.judged()
    assert run.detector.score(run.family, run.now) < 4


def test_tar_czf_of_a_directory() -> None:
    run, buffer = Run(), io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in texts(60):
            run.do(Activity.OPEN, f"/home/u/p/{name}", profile_of(data))
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    run.do(Activity.CREATE, "/home/u/p.tar.gz")
    run.do(Activity.WRITE, "/home/u/p.tar.gz", None, profile_of(buffer.getvalue()))
    assert_innocent(run)
    assert run.detector.score(FAMILY, run.now) == 0


def test_gzip_r_of_50_files() -> None:
    run = Run()
    for name, data in texts(50):
        path = f"/var/data/{name}"
        run.do(Activity.OPEN, path, profile_of(data))
        run.do(Activity.CREATE, path + ".gz")
        run.do(Activity.WRITE, path + ".gz", None, profile_of(gzip.compress(data)))
        run.do(Activity.DELETE, path, profile_of(data))
    assert_innocent(run)
    assert run.detector.score(FAMILY, run.now) == 0


def test_logrotate_compressing_logs() -> None:
    run = Run()
    for day in range(20):
        log = TEXT[day * 1000 :][:40000]
        run.do(Activity.RENAME, "/var/log/app.log.1", profile_of(log), old_path="/var/log/app.log")
        run.do(Activity.CREATE, "/var/log/app.log")
        run.do(Activity.CREATE, f"/var/log/app.log.{day}.gz")
        gz = profile_of(gzip.compress(log))
        run.do(Activity.WRITE, f"/var/log/app.log.{day}.gz", None, gz)
        run.do(Activity.DELETE, "/var/log/app.log.1")
    assert_innocent(run)


def test_a_script_rewriting_200_json_files() -> None:
    run = Run()
    for i in range(200):
        path = f"/srv/app/conf/{i}.json"
        old = json.dumps({"id": i, "enabled": False, "tags": ["a"] * (i % 9)}).encode()
        new = json.dumps({"id": i, "enabled": True, "tags": ["b"] * (i % 9)}, indent=2).encode()
        if i % 2:
            run.do(Activity.WRITE, path, profile_of(old), profile_of(new))
        else:  # atomic save: write a temporary file, rename it over the original
            run.do(Activity.OPEN, path, profile_of(old))
            run.do(Activity.CREATE, path + ".tmp")
            run.do(Activity.WRITE, path + ".tmp", None, profile_of(new))
            run.do(Activity.RENAME, path, old_path=path + ".tmp")
    assert_innocent(run)
    assert run.detector.score(FAMILY, run.now) == 0


def test_sqlite_page_writes_of_random_blobs(tmp_path: Path) -> None:
    run, path = Run(), tmp_path / "cache.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE blobs (k INTEGER PRIMARY KEY, v BLOB, note TEXT)")
    for batch in range(30):
        before = profile_of(str(path))
        with db:
            rows = [(os.urandom(3000), f"session {batch}-{n}") for n in range(20)]
            db.executemany("INSERT INTO blobs (v, note) VALUES (?, ?)", rows)
        run.do(Activity.WRITE, str(path) + "-wal", None, profile_of(str(path) + "-wal"))
        if batch % 5 == 4:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            run.do(Activity.WRITE, str(path), before, profile_of(str(path)))
    db.close()
    assert_innocent(run)


def test_rsync_copy_of_a_tree() -> None:
    run = Run()
    tree = [
        *texts(30),
        ("photo.png", png()),
        ("old.tar.gz", gzip.compress(TEXT)),
        ("vault.bin", aes(TEXT[:50000])),
        ("secret.gpg", aes(TEXT[:9000])),
    ]
    for name, data in tree:
        run.do(Activity.OPEN, f"/home/u/{name}", profile_of(data))
        temporary = f"/backup/u/.{name}.{os.urandom(3).hex()}"
        run.do(Activity.CREATE, temporary)
        run.do(Activity.WRITE, temporary, None, profile_of(data))
        run.do(Activity.RENAME, f"/backup/u/{name}", old_path=temporary)
    assert_innocent(run)


def openssl_enc(data: bytes) -> bytes:
    if shutil.which("openssl") is None:
        return b"Salted__" + os.urandom(8) + aes(data)
    argv = ["openssl", "enc", "-aes-256-cbc", "-pbkdf2", "-pass", "pass:correct horse"]
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


@pytest.mark.parametrize("remove_original", [False, True])
def test_a_user_encrypting_one_file(remove_original: bool) -> None:
    run, data = Run(), TEXT[:30000]
    run.do(Activity.OPEN, "/home/u/tax.pdf", profile_of(data))
    run.do(Activity.CREATE, "/home/u/tax.pdf.enc")
    run.do(Activity.WRITE, "/home/u/tax.pdf.enc", None, profile_of(openssl_enc(data)))
    if remove_original:
        run.do(Activity.DELETE, "/home/u/tax.pdf", profile_of(data))
    assert_innocent(run)


def test_a_user_encrypting_two_files_in_place_stays_below_the_threshold() -> None:
    run = Run()
    for name, data in texts(2):
        in_place(run, f"/home/u/{name}", data)
    assert not run.judged()


# -- scoring ------------------------------------------------------------------------------------


def test_one_file_rewritten_many_times_counts_once() -> None:
    run, data = Run(), TEXT[:20000]
    for _ in range(50):
        run.do(Activity.WRITE, "/srv/a.txt", profile_of(data), profile_of(aes(data)))
    assert run.detector.score(FAMILY, run.now) == pytest.approx(4.0, abs=0.01)
    assert not run.judged()


def test_evidence_decays_with_the_half_life() -> None:
    run = Run(detector=Detector(DetectorSettings(half_life=60.0)))
    in_place(run, "/srv/a.txt", TEXT[:20000])
    score = run.detector.score(FAMILY, run.now)
    assert run.detector.score(FAMILY, run.now + 60) == pytest.approx(score / 2, rel=1e-3)


def test_verdict_stays_and_forget_drops_it() -> None:
    run = Run()
    files_until_verdict(run, in_place)
    assert run.detector.verdict(FAMILY, run.now + 10**6) is not None
    run.detector.forget(FAMILY)
    assert run.detector.verdict(FAMILY, run.now) is None
    assert run.detector.score(FAMILY, run.now) == 0


def test_summary_for_the_detection_finding() -> None:
    run = Run()
    files_until_verdict(run, encrypt_then_rename)
    summary = run.detector.summary(FAMILY)
    assert summary["files"] == 3 and summary["score"] >= 10
    signals = summary["signals"]
    assert isinstance(signals, dict) and signals["rename_extension"] == 3
    assert signals["in_place_overwrite"] == 3
    assert summary["paths"] and summary["pids"] == [500]


def test_families_are_scored_apart() -> None:
    detector = Detector()
    first, second = Run(detector=detector, family=1), Run(detector=detector, family=2)
    for name, data in texts(2):
        in_place(first, f"/a/{name}", data)
        in_place(second, f"/b/{name}", data)
    assert not first.judged() and not second.judged()


def test_settings_are_checked() -> None:
    with pytest.raises(PolicyError, match="threshold"):
        DetectorSettings(threshold=0)
    with pytest.raises(PolicyError, match="weight"):
        DetectorSettings(weights={Signal.DECOY: -1.0})


def test_trusted_names() -> None:
    detector = Detector(DetectorSettings(trusted=frozenset({"restic", "unattended-upgr*"})))
    assert detector.trusts("restic") and detector.trusts("unattended-upgrade")
    assert not detector.trusts("python3")
