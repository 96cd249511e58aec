from __future__ import annotations

import asyncio
import inspect
import socket
import time
from pathlib import Path

from yoroi.events import (
    Event,
    File,
    FileActivity,
    FileSystemActivity,
    decode_json,
)
from yoroi.events.queue import QueuedSink, SinkStats
from yoroi.events.sinks import SyslogSink

from .parsers import parse_cef
from .receivers import RFC5424, Receivers


def numbered(n: int) -> Event:
    return FileSystemActivity(
        message=f"e{n}", activity_id=FileActivity.UPDATE, file=File(path=f"/srv/www/f{n}.php")
    )


def received_numbers(messages: list[bytes]) -> list[int]:
    numbers = []
    for raw in messages:
        match = RFC5424.fullmatch(raw)
        assert match
        numbers.append(int(parse_cef(match["msg"].decode())[1]["msg"][1:]))
    return numbers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def balanced(stats: SinkStats) -> bool:
    return stats.put + stats.recovered == (
        stats.sent + stats.queued + stats.spooled + stats.dropped
    )


def quick(sink: SyslogSink, spool: Path, queue_size: int, spool_bytes: int) -> QueuedSink:
    return QueuedSink(sink, queue_size=queue_size, spool_dir=spool, spool_max_bytes=spool_bytes,
                      retry_initial=0.02, retry_max=0.1)  # fmt: skip


async def wait_until_idle(queued: QueuedSink, timeout: float = 15.0) -> SinkStats:
    async with asyncio.timeout(timeout):
        while (stats := queued.stats()).queued or stats.spooled:
            await asyncio.sleep(0.01)
    return stats


async def test_put_is_plain_and_order_is_kept_when_all_goes_well(
    tmp_path: Path, receivers: Receivers
) -> None:
    receiver = await receivers()
    queued = quick(SyslogSink("127.0.0.1", receiver.port, "tcp"), tmp_path, 100, 1 << 20)
    assert not inspect.iscoroutinefunction(queued.put)
    await queued.start()
    for n in range(2000):
        assert queued.put(numbered(n)) is None  # type: ignore[func-returns-value]
    assert received_numbers(await receiver.wait_for(2000)) == list(range(2000))
    stats = await wait_until_idle(queued)
    assert (stats.sent, stats.dropped, stats.connected) == (2000, 0, True) and balanced(stats)
    await queued.close(timeout=1)


async def test_refused_receiver_spills_then_drops_exactly_then_recovers(
    tmp_path: Path, receivers: Receivers
) -> None:
    port = free_port()
    queued = quick(SyslogSink("127.0.0.1", port, "tcp", timeout=0.5), tmp_path, 1000, 1 << 20)
    await queued.start()
    for n in range(20_000):
        queued.put(numbered(n))
    await asyncio.sleep(0.2)  # the worker fails to connect a few times meanwhile
    stats = queued.stats()
    assert stats.sent == 0 and not stats.connected and stats.errors >= 1
    assert "cannot connect" in (stats.last_error or "")
    assert stats.queued == 1000 and 0 < stats.spooled == stats.spilled
    assert stats.dropped == 20_000 - stats.queued - stats.spooled > 0
    kept = stats.queued + stats.spooled

    receiver = await receivers(port=port)
    assert received_numbers(await receiver.wait_for(kept)) == list(range(kept))
    final = await wait_until_idle(queued)
    assert (final.sent, final.dropped) == (kept, stats.dropped) and balanced(final)
    await queued.close(timeout=1)


async def test_a_receiver_that_never_reads_does_not_stall_the_bus(
    tmp_path: Path, receivers: Receivers
) -> None:
    receiver = await receivers(reading=False, accept_once=True)
    sink = SyslogSink("127.0.0.1", receiver.port, "tcp", timeout=0.2)
    queued = quick(sink, tmp_path, 2000, 2 << 20)
    await queued.start()
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.001)

    ticking = asyncio.create_task(ticker())
    durations = []
    for n in range(60_000):
        event = numbered(n)
        started = time.perf_counter()
        queued.put(event)
        durations.append(time.perf_counter() - started)
        if n % 500 == 0:
            await asyncio.sleep(0)  # a bus hands over between bursts
    burst = queued.stats()
    durations.sort()
    # put is a plain function; these bounds only allow for GC pauses on a loaded machine
    assert sum(durations) / len(durations) < 100e-6, "put never waits for the sink"
    assert durations[int(len(durations) * 0.999)] < 0.01
    assert burst.spilled > 0 and burst.dropped > 0 and balanced(burst)
    assert burst.dropped == burst.put - burst.sent - burst.spooled - burst.queued

    await asyncio.sleep(0.5)
    stalled = queued.stats()
    # the stuck connection timed out; reconnecting is refused since the receiver stopped listening
    assert stalled.errors >= 2 and not stalled.connected
    assert balanced(stalled) and stalled.dropped == burst.dropped
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert len(ticks) > 100 and max(gaps) < 0.25, "the event loop stays responsive"
    ticking.cancel()

    spooled = {int(decode_json(line).message[1:]) for line in _spool_lines(tmp_path)}
    assert len(spooled) == stalled.spooled > 0
    await receiver.close()
    recovered = await receivers(port=receiver.port)  # the receiver is back
    final = await wait_until_idle(queued)
    arrived = [n for n in received_numbers(recovered.messages()) if n in spooled]
    assert set(arrived) == spooled, "every spooled event arrives"
    assert arrived == sorted(set(arrived)), "in order, each once"
    assert balanced(final) and final.dropped == burst.dropped and final.connected
    await queued.close(timeout=1)


def _spool_lines(root: Path) -> list[bytes]:
    lines: list[bytes] = []
    for segment in sorted(root.glob("*/*.jsonl")):
        lines += segment.read_bytes().splitlines()
    return lines


async def test_spool_survives_close_and_is_sent_at_the_next_start(
    tmp_path: Path, receivers: Receivers
) -> None:
    port = free_port()
    first = quick(SyslogSink("127.0.0.1", port, "tcp", timeout=0.2), tmp_path, 1000, 4 << 20)
    await first.start()
    for n in range(3000):
        first.put(numbered(n))
    await first.close(timeout=0.2)
    stats = first.stats()
    assert (stats.sent, stats.queued, stats.spooled, stats.dropped) == (0, 0, 3000, 0)
    first.put(numbered(-1))
    assert first.stats().dropped == 1, "a put after close is counted, not lost silently"

    receiver = await receivers(port=port)
    second = quick(SyslogSink("127.0.0.1", port, "tcp"), tmp_path, 1000, 4 << 20)
    await second.start()
    assert second.stats().recovered == 3000
    second.put(numbered(3000))
    assert received_numbers(await receiver.wait_for(3001)) == list(range(3001))
    final = await wait_until_idle(second)
    assert balanced(final) and final.sent == 3001
    await second.close(timeout=1)
    assert list(tmp_path.glob("*/*.jsonl")) == [], "an emptied spool leaves no files"


async def test_without_a_spool_overflow_is_dropped_and_counted() -> None:
    queued = QueuedSink(SyslogSink("127.0.0.1", free_port(), "tcp"), queue_size=10,
                        retry_initial=0.01)  # fmt: skip
    await queued.start()
    for n in range(25):
        queued.put(numbered(n))
    stats = queued.stats()
    assert (stats.queued, stats.dropped, stats.spilled) == (10, 15, 0)
    await queued.close(timeout=0.1)
    assert queued.stats().dropped == 25 and balanced(queued.stats())
