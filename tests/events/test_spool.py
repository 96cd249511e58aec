from __future__ import annotations

from pathlib import Path

from yoroi.events.spool import Spool


def drain(spool: Spool, batch: int = 3) -> list[bytes]:
    taken: list[bytes] = []
    while spool.count:
        lines, nbytes = spool.peek(batch)
        spool.commit(len(lines), nbytes)
        taken += lines
    return taken


def line(n: int) -> bytes:
    return b'{"n":%d,"pad":"%s"}\n' % (n, b"x" * 1000)


def test_fifo_across_segments_and_bounded(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=600_000)  # segments of 75 000 bytes
    spool.open()
    stored = 0
    while spool.append(line(stored)):
        stored += 1
    assert spool.size <= 600_000 and stored == spool.count > 500
    assert len(list(tmp_path.glob("*.jsonl"))) > 5
    assert drain(spool) == [line(n) for n in range(stored)]
    assert spool.size == 0 and len(list(tmp_path.glob("*.jsonl"))) == 1


def test_position_survives_close_and_crash_repair(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.open()
    for n in range(10):
        spool.append(line(n))
    lines, nbytes = spool.peek(4)
    spool.commit(len(lines), nbytes)
    spool.close()
    segment = next(tmp_path.glob("*.jsonl"))
    with open(segment, "ab") as handle:
        handle.write(b'{"n":10,"pa')  # a crash in the middle of an append
    again = Spool(tmp_path, max_bytes=1 << 20)
    again.open()
    assert again.count == 6
    assert drain(again) == [line(n) for n in range(4, 10)]
    again.close()
    assert list(tmp_path.glob("*.jsonl")) == [] and not (tmp_path / "position").exists()


def test_prepend_goes_before_everything(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=20_000)
    spool.open()
    for n in range(5, 10):
        spool.append(line(n))
    lines, nbytes = spool.peek(1)
    spool.commit(len(lines), nbytes)  # 5 was sent
    assert spool.prepend([line(n) for n in range(5)]) == 5
    assert spool.prepend([line(n) for n in range(100, 200)]) < 100  # bounded
    spool.close()
    again = Spool(tmp_path, max_bytes=20_000)
    again.open()
    taken = drain(again)
    assert taken[-4:] == [line(n) for n in range(6, 10)]
    assert taken[-9:-4] == [line(n) for n in range(5)]
