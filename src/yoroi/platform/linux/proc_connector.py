"""The Linux proc connector: a live feed of process fork, exec, exit and id changes.

The kernel's process events connector (``CONFIG_PROC_EVENTS``) multicasts one small message per
process event over a netlink socket of family ``NETLINK_CONNECTOR``, group ``CN_IDX_PROC``.
A listener subscribes by sending ``PROC_CN_MCAST_LISTEN`` and unsubscribes with
``PROC_CN_MCAST_IGNORE``. Only the socket and struct modules are used here.

Wire format (native byte order), one netlink datagram per event::

    nlmsghdr  u32 len, u16 type (NLMSG_DONE), u16 flags, u32 seq, u32 port id      16 bytes
    cn_msg    u32 idx (CN_IDX_PROC=1), u32 val (CN_VAL_PROC=1), u32 seq, u32 ack,
              u16 len, u16 flags                                                  20 bytes
    proc_event u32 what, u32 cpu, u64 timestamp_ns, then a union by ``what``:
              fork      parent pid, parent tgid, child pid, child tgid
              exec      pid, tgid
              uid/gid   pid, tgid, real id, effective id
              sid       pid, tgid
              ptrace    pid, tgid, tracer pid, tracer tgid (0 when detaching)
              comm      pid, tgid, char comm[16]
              coredump  pid, tgid, parent pid, parent tgid
              exit      pid, tgid, u32 exit_code (wait status), u32 exit_signal,
                        parent pid, parent tgid

Events are typed, immutable dataclasses (:class:`ForkEvent`, :class:`ExecEvent`,
:class:`ExitEvent`, ...), all :class:`ProcEvent` with a ``kind`` (:class:`ProcEventKind`) and a
``timestamp_ns`` on ``CLOCK_MONOTONIC`` (:meth:`ProcEvent.wall_time` turns it into epoch seconds).
Threads produce events too: ``pid`` is the thread id, ``tgid`` the process id; a process is
``pid == tgid``. ``ExitEvent.exit_code`` is the raw wait status; use ``status`` (exit status,
e.g. 3 for ``exit 3``) and ``term_signal`` (the signal that killed it).

When the listener falls behind, the kernel drops messages and the next ``recv`` fails with
``ENOBUFS``; :meth:`ProcConnector.read` then returns a :class:`LostEvent` in the stream at that
point so that the caller knows its view of the process table is stale (and can rescan /proc).

Typical use, with asyncio::

    with ProcConnector() as conn:
        loop.add_reader(conn.fileno(), lambda: handle(conn.read()))

:meth:`ProcConnector.open` waits (at most half a second) for the kernel's answer to LISTEN
(a ``PROC_EVENT_NONE`` message whose ``ack`` is our nonce + 1, with an errno). Errors:
``PermissionDenied`` when the kernel refuses (EPERM: no ``CAP_NET_ADMIN`` on kernels before
6.6) or does not answer at all (it silently ignores listeners inside a non-initial pid or user
namespace, such as an unprivileged container), ``Unsupported`` when the kernel has no proc
connector, ``PlatformError`` otherwise. Events are reported with pids of the initial pid
namespace.
"""

from __future__ import annotations

import errno
import os
import secrets
import select
import socket
import struct
import time
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import ClassVar, Protocol

from yoroi.errors import PermissionDenied, PlatformError, Unsupported

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
NLMSG_ERROR = 2
NLMSG_DONE = 3
SO_RCVBUFFORCE = 33  # not exported by the socket module

_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_PROC_EVENT_HEAD = struct.Struct("=IIQ")
_RECV_SIZE = 65536
_RCVBUF = 4 * 1024 * 1024
_MAX_BATCH = 4096
_ACK_WAIT_S = 0.5


class ProcEventKind(Enum):
    """What happened to the process; values are the kernel's ``PROC_EVENT_*`` bits."""

    FORK = 0x00000001
    EXEC = 0x00000002
    UID = 0x00000004
    GID = 0x00000040
    SID = 0x00000080
    PTRACE = 0x00000100
    COMM = 0x00000200
    COREDUMP = 0x40000000
    EXIT = 0x80000000
    LOST = -1  # not a kernel event: the kernel dropped messages (ENOBUFS)


@dataclass(frozen=True, slots=True)
class ProcEvent:
    """Base of every proc connector event; ``timestamp_ns`` is on ``CLOCK_MONOTONIC``."""

    kind: ClassVar[ProcEventKind]
    timestamp_ns: int

    def wall_time(self) -> float:
        """The event's time as epoch seconds (for OCSF ``time``)."""
        return time.time() - (time.monotonic_ns() - self.timestamp_ns) / 1e9


@dataclass(frozen=True, slots=True)
class LostEvent(ProcEvent):
    """The kernel dropped events because the listener fell behind: rescan /proc."""

    kind: ClassVar[ProcEventKind] = ProcEventKind.LOST


@dataclass(frozen=True, slots=True)
class ProcessEvent(ProcEvent):
    """An event about one task: ``pid`` is the thread id, ``tgid`` the process id."""

    cpu: int
    pid: int
    tgid: int

    @property
    def is_process(self) -> bool:
        """True for the main thread (the process itself), False for another thread."""
        return self.pid == self.tgid


@dataclass(frozen=True, slots=True)
class ForkEvent(ProcessEvent):
    """A new task: ``pid``/``tgid`` are the child's, ``parent_*`` the forking task's."""

    kind: ClassVar[ProcEventKind] = ProcEventKind.FORK
    parent_pid: int
    parent_tgid: int


@dataclass(frozen=True, slots=True)
class ExecEvent(ProcessEvent):
    """The task called execve(); read /proc/PID/exe and cmdline to see what it runs now."""

    kind: ClassVar[ProcEventKind] = ProcEventKind.EXEC


@dataclass(frozen=True, slots=True)
class ExitEvent(ProcessEvent):
    """The task exited; ``exit_code`` is the raw wait status, ``exit_signal`` the parent's."""

    kind: ClassVar[ProcEventKind] = ProcEventKind.EXIT
    exit_code: int
    exit_signal: int
    parent_pid: int
    parent_tgid: int

    @property
    def status(self) -> int | None:
        """The exit status (``exit 3`` gives 3), or None when a signal killed it."""
        return (self.exit_code >> 8) & 0xFF if self.term_signal is None else None

    @property
    def term_signal(self) -> int | None:
        """The signal that killed the task, or None when it exited normally."""
        sig = self.exit_code & 0x7F
        return sig if sig else None

    @property
    def core_dumped(self) -> bool:
        """True when the kernel wrote a core dump as the task died."""
        return bool(self.exit_code & 0x80)


@dataclass(frozen=True, slots=True)
class UidEvent(ProcessEvent):
    """The task changed its real or effective user id."""

    kind: ClassVar[ProcEventKind] = ProcEventKind.UID
    ruid: int
    euid: int


@dataclass(frozen=True, slots=True)
class GidEvent(ProcessEvent):
    """The task changed its real or effective group id."""

    kind: ClassVar[ProcEventKind] = ProcEventKind.GID
    rgid: int
    egid: int


@dataclass(frozen=True, slots=True)
class SidEvent(ProcessEvent):
    """The task started a new session (setsid(), as daemons and reverse shells do)."""

    kind: ClassVar[ProcEventKind] = ProcEventKind.SID


@dataclass(frozen=True, slots=True)
class PtraceEvent(ProcessEvent):
    """A tracer attached to the task (``tracer_pid`` 0: it detached)."""

    kind: ClassVar[ProcEventKind] = ProcEventKind.PTRACE
    tracer_pid: int
    tracer_tgid: int


@dataclass(frozen=True, slots=True)
class CommEvent(ProcessEvent):
    """The task renamed itself (prctl PR_SET_NAME or a write to /proc/PID/comm)."""

    kind: ClassVar[ProcEventKind] = ProcEventKind.COMM
    comm: str


@dataclass(frozen=True, slots=True)
class CoredumpEvent(ProcessEvent):
    """The task is dumping core."""

    kind: ClassVar[ProcEventKind] = ProcEventKind.COREDUMP
    parent_pid: int
    parent_tgid: int


class ProcEventSource(Protocol):
    """What the code above needs from a proc connector: met by the real one and the fake."""

    def open(self) -> None: ...
    def close(self) -> None: ...
    def fileno(self) -> int: ...
    def read(self, timeout: float | None = 0.0) -> list[ProcEvent]: ...


# the payload layout of each kind, in the order of the event class's own fields
_LAYOUTS: dict[int, tuple[type[ProcessEvent], struct.Struct]] = {
    kind.value: (cls, struct.Struct(fmt))
    for kind, cls, fmt in [
        (ProcEventKind.FORK, ForkEvent, "=iiii"),
        (ProcEventKind.EXEC, ExecEvent, "=ii"),
        (ProcEventKind.UID, UidEvent, "=iiII"),
        (ProcEventKind.GID, GidEvent, "=iiII"),
        (ProcEventKind.SID, SidEvent, "=ii"),
        (ProcEventKind.PTRACE, PtraceEvent, "=iiii"),
        (ProcEventKind.COMM, CommEvent, "=ii16s"),
        (ProcEventKind.COREDUMP, CoredumpEvent, "=iiii"),
        (ProcEventKind.EXIT, ExitEvent, "=iiIIii"),
    ]
}


def _decode_event(what: int, ts: int, cpu: int, payload: bytes) -> ProcEvent | None:
    layout = _LAYOUTS.get(what)
    if layout is None or len(payload) < layout[1].size:
        return None
    cls, shape = layout
    fields = list(shape.unpack_from(payload))
    if cls is ForkEvent:  # the kernel puts the parent first
        fields = fields[2:] + fields[:2]
    elif cls is CommEvent:
        fields[2] = fields[2].split(b"\0", 1)[0].decode("utf-8", "replace")
    return cls(ts, cpu, *fields)


@dataclass(frozen=True, slots=True)
class _Ack:
    """The kernel's answer to a (un)subscribe: ``PROC_EVENT_NONE`` with an errno."""

    ack: int
    err: int


def decode_datagram(buf: bytes) -> list[ProcEvent | _Ack]:
    """Decode one netlink datagram into events; malformed or foreign parts are skipped."""
    out: list[ProcEvent | _Ack] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(buf):
        length, mtype, _flags, _seq, _port = _NLMSGHDR.unpack_from(buf, offset)
        if length < _NLMSGHDR.size or offset + length > len(buf):
            break
        body = buf[offset + _NLMSGHDR.size : offset + length]
        if mtype == NLMSG_ERROR:
            _raise_nlmsg_error(body)
        elif mtype == NLMSG_DONE:
            item = _decode_cn_msg(body)
            if item is not None:
                out.append(item)
        offset += (length + 3) & ~3
    return out


def _raise_nlmsg_error(body: bytes) -> None:
    (code,) = struct.unpack_from("=i", body) if len(body) >= 4 else (0,)
    if code:
        raise PlatformError(f"proc connector: netlink error {os.strerror(-code)}")


def _decode_cn_msg(body: bytes) -> ProcEvent | _Ack | None:
    if len(body) < _CN_MSG.size + _PROC_EVENT_HEAD.size:
        return None
    idx, val, _seq, ack, dlen, _flags = _CN_MSG.unpack_from(body)
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
        return None
    data = body[_CN_MSG.size : _CN_MSG.size + dlen]
    if len(data) < _PROC_EVENT_HEAD.size:
        return None
    what, cpu, ts = _PROC_EVENT_HEAD.unpack_from(data)
    payload = data[_PROC_EVENT_HEAD.size :]
    if what == 0:
        (err,) = struct.unpack_from("=I", payload) if len(payload) >= 4 else (0,)
        return _Ack(ack, err)
    return _decode_event(what, ts, cpu, payload)


class ProcConnector:
    """A subscription to the kernel's process events; read it when :meth:`fileno` is ready."""

    def __init__(self, rcvbuf: int = _RCVBUF) -> None:
        self._rcvbuf = rcvbuf
        self._sock: socket.socket | None = None
        self._seq = 0
        self._nonce = 0
        self._pending: list[ProcEvent] = []
        self.lost = 0  # how many times the kernel reported dropped messages

    def __enter__(self) -> ProcConnector:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Subscribe to the proc connector; events flow until :meth:`close`."""
        if self._sock is not None:
            return
        sock = _open_socket()
        try:
            self._set_rcvbuf(sock)
            self._sock = sock
            self._send_op(PROC_CN_MCAST_LISTEN)
            self._await_ack()
        except BaseException:
            self._sock = None
            sock.close()
            raise

    def close(self) -> None:
        """Unsubscribe and close the socket; safe to call twice."""
        if self._sock is None:
            return
        try:
            self._send_op(PROC_CN_MCAST_IGNORE)
        except (OSError, PlatformError):
            pass  # the socket goes anyway; the kernel drops our membership with it
        finally:
            self._sock.close()
            self._sock = None
            self._pending.clear()

    def fileno(self) -> int:
        """The socket's descriptor, for ``select`` or ``loop.add_reader``."""
        return self._socket().fileno()

    def read(self, timeout: float | None = 0.0) -> list[ProcEvent]:
        """Return the events queued now, waiting up to ``timeout`` s (None: forever) for one."""
        sock = self._socket()
        events, self._pending = self._pending, []
        if not events and timeout != 0.0:
            wait_readable(sock.fileno(), timeout)
        for _ in range(_MAX_BATCH):
            buf = self._recv(sock)
            if buf is None:
                break
            if not buf:
                events.append(LostEvent(time.monotonic_ns()))
                continue
            events.extend(e for e in decode_datagram(buf) if isinstance(e, ProcEvent))
        return events

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise PlatformError("proc connector is not open: call open() first")
        return self._sock

    def _recv(self, sock: socket.socket) -> bytes | None:
        """One datagram; None when none is queued, b"" when the kernel dropped some."""
        try:
            return sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                self.lost += 1
                return b""
            raise PlatformError(f"proc connector: recv failed: {exc}") from exc

    def _set_rcvbuf(self, sock: socket.socket) -> None:
        try:  # FORCE passes rmem_max but needs CAP_NET_ADMIN
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self._rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)

    def _send_op(self, op: int) -> None:
        sock = self._socket()
        self._seq += 1
        payload = struct.pack("=I", op)
        # the kernel answers with ack = ours + 1: a nonce tells our answer from other listeners'
        self._nonce = secrets.randbits(31)
        cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, self._seq, self._nonce, len(payload), 0)
        cn += payload
        port = sock.getsockname()[0]
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), NLMSG_DONE, 0, self._seq, port)
        try:
            sock.send(header + cn)
        except PermissionError as exc:
            raise PermissionDenied(_NEEDS_ADMIN) from exc

    def _await_ack(self) -> None:
        """Wait briefly for the kernel's answer to LISTEN, keeping events that come first."""
        sock = self._socket()
        deadline = time.monotonic() + _ACK_WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            if not wait_readable(sock.fileno(), left):
                break
            buf = self._recv(sock)
            if buf is None:
                continue
            if not buf:
                self._pending.append(LostEvent(time.monotonic_ns()))
                continue
            for item in decode_datagram(buf):
                if not isinstance(item, _Ack):
                    self._pending.append(item)
                elif item.ack == self._nonce + 1:
                    _check_ack(item.err)
                    return
        if not any(isinstance(e, LostEvent) for e in self._pending):
            # the kernel answers every LISTEN it accepts at once; silence means it ignored us
            raise PermissionDenied(_NO_ANSWER)


def wait_readable(fd: int, timeout: float | None) -> bool:
    """Wait until ``fd`` is readable, up to ``timeout`` s (None: forever); poll has no fd cap."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0.0, timeout) * 1000))


def _check_ack(err: int) -> None:
    if err == errno.EPERM:
        raise PermissionDenied(_NEEDS_ADMIN)
    if err:
        raise PlatformError(f"proc connector refused LISTEN: {os.strerror(err)}")


_NO_ANSWER = (
    "the proc connector did not answer: it ignores listeners in a non-initial pid or user"
    " namespace and, on kernels before 6.6, listeners without CAP_NET_ADMIN; run as root"
    " on the host"
)
_NEEDS_ADMIN = "the proc connector needs CAP_NET_ADMIN in the initial user namespace: run as root"


def _open_socket() -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    except OSError as exc:
        if exc.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
            raise Unsupported("this kernel has no proc connector (CONFIG_PROC_EVENTS)") from exc
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise PermissionDenied(_NEEDS_ADMIN) from exc
        raise PlatformError(f"cannot open the proc connector socket: {exc}") from exc
    try:
        sock.bind((0, CN_IDX_PROC))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise PermissionDenied(_NEEDS_ADMIN) from exc
        raise PlatformError(f"cannot join the proc connector group: {exc}") from exc
    sock.setblocking(False)
    return sock
