"""QueuedSink: a sink behind a bounded queue, so that a slow or dead sink never stalls the bus.

``put`` never blocks and never raises. Events wait in memory (``queue_size``); when that is
full they are spilled, encoded, to an on-disk :class:`~yoroi.events.spool.Spool`
(``spool_max_bytes``); when that is full too they are dropped and counted. A worker task sends
batches, retries a failing sink with exponential back-off, and sends the spool once the sink
takes events again. Every event put is, at any moment, exactly one of: sent, queued (in memory
or in flight), spooled, or dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections import deque
from pathlib import Path

from yoroi.errors import YoroiError
from yoroi.events.model import Event, decode_json, encode_json
from yoroi.events.sinks import Sink
from yoroi.events.spool import Spool

DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_SPOOL_MAX_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class SinkStats:
    """Counters of one queued sink.

    ``put + recovered == sent + queued + spooled + dropped`` always holds; ``recovered`` is
    what the spool held from the previous run when the sink started, ``spilled`` counts every
    event ever written to the spool.
    """

    name: str
    put: int
    recovered: int
    sent: int
    queued: int
    spooled: int
    spilled: int
    dropped: int
    errors: int
    last_error: str | None
    connected: bool


def spool_name(sink_name: str) -> str:
    """A directory name for a sink's spool ("syslog:tcp://h:514" -> "syslog_tcp___h_514")."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", sink_name)


class QueuedSink:
    """Queue, spill and retry in front of a :class:`~yoroi.events.sinks.Sink`.

    Call :meth:`start` in the event loop, :meth:`put` from that loop's thread (from other
    threads use ``loop.call_soon_threadsafe(queued.put, event)``), :meth:`close` at the end.
    """

    def __init__(
        self,
        sink: Sink,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        spool_dir: Path | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        *,
        batch_size: int = 500,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.retry_initial, self.retry_max = retry_initial, retry_max
        self.spool = (
            Spool(spool_dir / spool_name(sink.name), spool_max_bytes) if spool_dir else None
        )
        self._memory: deque[Event] = deque()
        self._inflight: list[Event] = []
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._recovered = 0
        self._put = self._sent = self._spilled = self._dropped = self._errors = 0
        self._last_error: str | None = None
        self._connected = False

    async def start(self) -> None:
        """Open the spool (picking up what the last run left) and start the worker."""
        if self.spool is not None:
            try:
                self.spool.open()
            except OSError as exc:
                self._fail(f"spool {self.spool.directory} unusable, not spilling: {exc}")
                self.spool = None
            else:
                self._recovered = self.spool.count
        self._worker = asyncio.create_task(self._run(), name=f"sink {self.name}")

    def put(self, event: Event) -> None:
        """Queue ``event``; never blocks, never raises (a lost event is counted as dropped)."""
        self._put += 1
        if self._closed:
            self._dropped += 1
            return
        spool = self.spool
        if spool is not None and spool.count and self._spill(event):
            return  # the spool holds older events: queue behind them to keep the order
        if len(self._memory) + len(self._inflight) < self.queue_size:
            self._memory.append(event)
            self._wake.set()
        elif not self._spill(event):
            self._dropped += 1

    def _spill(self, event: Event) -> bool:
        if self.spool is None:
            return False
        try:
            stored = self.spool.append(encode_json(event) + b"\n")
        except OSError as exc:
            self._fail(f"spool write failed: {exc}")
            return False
        if stored:
            self._spilled += 1
            self._wake.set()
        return stored

    def stats(self) -> SinkStats:
        """A snapshot of the counters."""
        return SinkStats(
            name=self.name,
            put=self._put,
            recovered=self._recovered,
            sent=self._sent,
            queued=len(self._memory) + len(self._inflight),
            spooled=self.spool.count if self.spool is not None else 0,
            spilled=self._spilled,
            dropped=self._dropped,
            errors=self._errors,
            last_error=self._last_error,
            connected=self._connected,
        )

    def _fail(self, message: str) -> None:
        self._errors += 1
        self._last_error = message

    async def _run(self) -> None:
        await self._open_sink()
        delay = self.retry_initial
        while True:
            self._wake.clear()
            if not await self._send_one():
                if self._closing.is_set() and not self._pending():
                    return
                await self._wake.wait()
            elif not self._connected:
                await self._sleep(delay)
                delay = min(delay * 2, self.retry_max)
            else:
                delay = self.retry_initial

    def _pending(self) -> bool:
        return bool(self._memory or self._inflight or (self.spool and self.spool.count))

    async def _open_sink(self) -> None:
        delay = self.retry_initial
        while not (self._closing.is_set() and not self._pending()):
            try:
                await self.sink.open()
                self._connected = True
                return
            except Exception as exc:  # noqa: BLE001 - a sink's failure must not end the worker
                self._fail(f"{self.name}: {exc}")
            await self._sleep(delay)
            delay = min(delay * 2, self.retry_max)

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)
        if self._closing.is_set():
            await asyncio.sleep(min(delay, 0.05))  # keep retrying while closing, not spinning

    async def _send_one(self) -> bool:
        """Send one batch (memory first, then the spool); False when there was nothing."""
        if self._memory and not self._inflight:
            count = min(self.batch_size, len(self._memory))
            self._inflight = [self._memory.popleft() for _ in range(count)]
        if self._inflight:
            if await self._deliver(self._inflight):
                self._inflight = []
            return True
        return await self._send_spooled()

    async def _send_spooled(self) -> bool:
        if self.spool is None or not self.spool.count:
            return False
        lines, nbytes = self.spool.peek(self.batch_size)
        events = self._decode(lines)
        if await self._deliver(events):
            self.spool.commit(len(lines), nbytes)
            unreadable = len(lines) - len(events)
            if unreadable:
                self._dropped += unreadable
                self._fail(f"{unreadable} unreadable spool line(s) dropped")
        return True

    @staticmethod
    def _decode(lines: list[bytes]) -> list[Event]:
        events: list[Event] = []
        for line in lines:
            with contextlib.suppress(YoroiError):
                events.append(decode_json(line))
        return events

    async def _deliver(self, batch: list[Event]) -> bool:
        try:
            if batch:
                await self.sink.write(batch)
        except Exception as exc:  # noqa: BLE001 - any sink failure means retry later
            self._connected = False
            self._fail(f"{self.name}: {exc}")
            return False
        self._connected = True
        self._sent += len(batch)
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Send what can be sent within ``timeout``; spool the rest for the next start."""
        self._closed = True
        self._closing.set()
        self._wake.set()
        if self._worker is not None:
            done, _ = await asyncio.wait({self._worker}, timeout=timeout)
            if not done:
                self._worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._worker
        self._keep_unsent()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sink.close(), max(0.1, timeout / 5))

    def _keep_unsent(self) -> None:
        unsent = self._inflight + list(self._memory)
        self._inflight, self._memory = [], deque()
        kept = 0
        if self.spool is not None:
            kept = self.spool.prepend([encode_json(event) + b"\n" for event in unsent])
            self._spilled += kept
            self.spool.close()
        self._dropped += len(unsent) - kept
