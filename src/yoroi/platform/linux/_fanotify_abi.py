"""The fanotify kernel ABI: constants, event decoding, and the raw system calls.

Layouts follow ``include/uapi/linux/fanotify.h`` (Linux 6.18); the constants newer than the
distribution's header (pre-content events, range records, FAN_DENY_ERRNO) are spelled out here.
The public names (:class:`FanMask`, :class:`FanClass`, :class:`FanInit`, :class:`FanotifyEvent`)
are re-exported by :mod:`yoroi.platform.linux.fanotify`; import them from there.
"""

from __future__ import annotations

import ctypes
import enum
import errno as errno_codes
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from yoroi.errors import PermissionDenied, PlatformError, Unsupported


class FanMask(enum.IntFlag, boundary=enum.KEEP):
    """The bits of an event mask (``FAN_*``), for marks and for decoded events."""

    ACCESS = 0x00000001
    MODIFY = 0x00000002
    ATTRIB = 0x00000004
    CLOSE_WRITE = 0x00000008
    CLOSE_NOWRITE = 0x00000010
    OPEN = 0x00000020
    MOVED_FROM = 0x00000040
    MOVED_TO = 0x00000080
    CREATE = 0x00000100
    DELETE = 0x00000200
    DELETE_SELF = 0x00000400
    MOVE_SELF = 0x00000800
    OPEN_EXEC = 0x00001000
    Q_OVERFLOW = 0x00004000
    FS_ERROR = 0x00008000
    OPEN_PERM = 0x00010000
    ACCESS_PERM = 0x00020000
    OPEN_EXEC_PERM = 0x00040000
    PRE_ACCESS = 0x00100000
    MNT_ATTACH = 0x01000000
    MNT_DETACH = 0x02000000
    EVENT_ON_CHILD = 0x08000000
    RENAME = 0x10000000
    ONDIR = 0x40000000

    CLOSE = CLOSE_WRITE | CLOSE_NOWRITE
    MOVE = MOVED_FROM | MOVED_TO


PERMISSION_EVENTS = (
    FanMask.OPEN_PERM | FanMask.ACCESS_PERM | FanMask.OPEN_EXEC_PERM | FanMask.PRE_ACCESS
)


class FanClass(enum.IntEnum):
    """The class of a fanotify group: who is notified first, and whether it may decide."""

    NOTIF = 0x00000000
    CONTENT = 0x00000004
    PRE_CONTENT = 0x00000008


class FanInit(enum.IntFlag, boundary=enum.KEEP):
    """Flags of ``fanotify_init`` besides the class."""

    CLOEXEC = 0x00000001
    NONBLOCK = 0x00000002
    UNLIMITED_QUEUE = 0x00000010
    UNLIMITED_MARKS = 0x00000020
    ENABLE_AUDIT = 0x00000040
    REPORT_PIDFD = 0x00000080
    REPORT_TID = 0x00000100
    REPORT_FID = 0x00000200
    REPORT_DIR_FID = 0x00000400
    REPORT_NAME = 0x00000800
    REPORT_TARGET_FID = 0x00001000

    REPORT_DFID_NAME = REPORT_DIR_FID | REPORT_NAME


FID_MODES = FanInit.REPORT_FID | FanInit.REPORT_DIR_FID

# fanotify_mark flags.
MARK_ADD = 0x00000001
MARK_REMOVE = 0x00000002
MARK_DONT_FOLLOW = 0x00000004
MARK_ONLYDIR = 0x00000008
MARK_IGNORED_MASK = 0x00000020
MARK_IGNORED_SURV_MODIFY = 0x00000040
MARK_IGNORE = 0x00000400
MARK_KINDS = {"inode": 0x00000000, "mount": 0x00000010, "filesystem": 0x00000100}

# Responses to permission events.
FAN_ALLOW = 0x01
FAN_DENY = 0x02
FAN_AUDIT = 0x10
_ERRNO_SHIFT = 24
_ERRNO_MASK = 0xFF

FAN_NOFD = -1
METADATA_VERSION = 3
AT_FDCWD = -100

# Info record types.
INFO_FID = 1
INFO_DFID_NAME = 2
INFO_DFID = 3
INFO_PIDFD = 4
INFO_ERROR = 5
INFO_RANGE = 6
INFO_MNT = 7
INFO_OLD_DFID_NAME = 10
INFO_NEW_DFID_NAME = 12
FID_RECORDS = {INFO_FID, INFO_DFID_NAME, INFO_DFID, INFO_OLD_DFID_NAME, INFO_NEW_DFID_NAME}

_METADATA = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO_HEADER = struct.Struct("=BBH")
_FSID = struct.Struct("=II")
_HANDLE_HEADER = struct.Struct("=Ii")  # handle_bytes, handle_type
_RESPONSE = struct.Struct("=iI")
METADATA_LEN = _METADATA.size
_UNSUPPORTED = {
    errno_codes.EINVAL,
    errno_codes.ENOSYS,
    errno_codes.EOPNOTSUPP,
    errno_codes.ENODEV,
    errno_codes.EXDEV,
}
EVENT_OPEN_FLAGS = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC


def deny_response(errno: int | None) -> int:
    """FAN_DENY, carrying ``errno`` for the denied call when given (FAN_DENY_ERRNO, Linux 6.14)."""
    if errno is None:
        return FAN_DENY
    return FAN_DENY | ((errno & _ERRNO_MASK) << _ERRNO_SHIFT)


def pack_response(fd: int, response: int) -> bytes:
    """A ``struct fanotify_response`` as written to the group descriptor."""
    return _RESPONSE.pack(fd, response)


@dataclass(frozen=True, slots=True)
class FileId:
    """A file identifier record: the file system id and an opaque ``struct file_handle``."""

    fsid: int
    handle: bytes  # the whole struct file_handle, ready for open_by_handle_at
    name: str | None = None


@dataclass(slots=True)
class RawEvent:
    """One event as the kernel laid it out, before paths are resolved."""

    mask: int
    fd: int
    pid: int
    fids: dict[int, FileId]
    pidfd: int | None = None
    error: tuple[int, int] | None = None
    range: tuple[int, int] | None = None
    mnt_id: int | None = None


def iter_events(buf: bytes) -> list[RawEvent]:
    """Decode a buffer read from a fanotify descriptor into raw events, in order."""
    events: list[RawEvent] = []
    offset = 0
    while len(buf) - offset >= METADATA_LEN:
        event_len, vers, _, meta_len, mask, fd, pid = _METADATA.unpack_from(buf, offset)
        bad_len = not METADATA_LEN <= meta_len <= event_len or offset + event_len > len(buf)
        if vers != METADATA_VERSION or bad_len:
            raise ValueError(f"malformed fanotify event at byte {offset} (version {vers})")
        event = RawEvent(mask=mask, fd=fd, pid=pid, fids={})
        _decode_records(buf[offset + meta_len : offset + event_len], event)
        events.append(event)
        offset += event_len
    return events


def _decode_records(records: bytes, event: RawEvent) -> None:
    offset = 0
    while len(records) - offset >= _INFO_HEADER.size:
        info_type, _, length = _INFO_HEADER.unpack_from(records, offset)
        if length < _INFO_HEADER.size or offset + length > len(records):
            raise ValueError(f"malformed fanotify info record of type {info_type}")
        body = records[offset + _INFO_HEADER.size : offset + length]
        try:
            _decode_record(info_type, body, event)
        except struct.error as exc:
            raise ValueError(f"fanotify info record of type {info_type} is too short") from exc
        offset += length


def _decode_record(info_type: int, body: bytes, event: RawEvent) -> None:
    if info_type in FID_RECORDS:
        event.fids[info_type] = _decode_fid(info_type, body)
    elif info_type == INFO_PIDFD:
        (event.pidfd,) = struct.unpack_from("=i", body)
    elif info_type == INFO_ERROR:
        event.error = struct.unpack_from("=iI", body)
    elif info_type == INFO_RANGE:
        event.range = struct.unpack_from("=QQ", body, 4)
    elif info_type == INFO_MNT:
        (event.mnt_id,) = struct.unpack_from("=Q", body)


def _decode_fid(info_type: int, body: bytes) -> FileId:
    low, high = _FSID.unpack_from(body)
    handle_bytes, _ = _HANDLE_HEADER.unpack_from(body, _FSID.size)
    handle_end = _FSID.size + _HANDLE_HEADER.size + handle_bytes
    if handle_end > len(body):
        raise ValueError("fanotify file handle runs past its record")
    name = None
    if info_type in (INFO_DFID_NAME, INFO_OLD_DFID_NAME, INFO_NEW_DFID_NAME):
        name = os.fsdecode(body[handle_end:].split(b"\0", 1)[0])
    # glibc's statvfs() builds f_fsid as val[0] | val[1] << 32: use the same number.
    return FileId(fsid=low | high << 32, handle=body[_FSID.size : handle_end], name=name)


def mask_names(mask: int) -> tuple[str, ...]:
    """The ``FAN_*`` names of the single bits set in ``mask``; unknown bits as hex."""
    names = [f"FAN_{bit.name}" for bit in FanMask if bit.value & mask == bit.value and _single(bit)]
    unknown = mask & ~sum(bit.value for bit in FanMask if _single(bit))
    return (*names, hex(unknown)) if unknown else tuple(names)


def _single(bit: FanMask) -> bool:
    return bit.value & (bit.value - 1) == 0


@dataclass(frozen=True, slots=True)
class FanotifyEvent:
    """One fanotify event, decoded; immutable and safe to hand to other threads.

    ``seq`` numbers the events of one group, so that an answer can never reach the wrong event
    even after the kernel reuses a descriptor number. ``old_path`` is set for ``FAN_RENAME``
    (``path`` is then the new name); ``range`` is ``(offset, count)`` of a pre-content event;
    ``error`` is ``(errno, count)`` of ``FAN_FS_ERROR``; ``handle``/``fsid`` identify the
    object in the FID reporting modes.
    """

    seq: int
    mask: FanMask
    pid: int
    fd: int | None = None
    path: str | None = None
    name: str | None = None
    old_path: str | None = None
    pidfd: int | None = None
    fsid: int | None = None
    handle: bytes | None = None
    range: tuple[int, int] | None = None
    error: tuple[int, int] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The ``FAN_*`` flag names of the mask."""
        return mask_names(self.mask)

    @property
    def is_permission(self) -> bool:
        """True when the kernel waits for an answer (``respond``) to this event."""
        return bool(self.mask & PERMISSION_EVENTS)

    @property
    def overflow(self) -> bool:
        """True when the kernel queue overflowed and events were lost (``FAN_Q_OVERFLOW``)."""
        return bool(self.mask & FanMask.Q_OVERFLOW)


def event_from_raw(
    seq: int, raw: RawEvent, open_handle: Callable[[FileId], str | None]
) -> FanotifyEvent:
    fd = raw.fd if raw.fd >= 0 else None
    fid = raw.fids.get(INFO_FID)
    named = raw.fids.get(INFO_NEW_DFID_NAME) or raw.fids.get(INFO_DFID_NAME)
    dir_fid = named or raw.fids.get(INFO_DFID)
    any_fid = fid or dir_fid
    return FanotifyEvent(
        seq=seq,
        mask=FanMask(raw.mask),
        pid=raw.pid,
        fd=fd,
        path=_path(fd, fid, named, dir_fid, open_handle),
        name=named.name if named else None,
        old_path=_join(raw.fids.get(INFO_OLD_DFID_NAME), open_handle),
        pidfd=raw.pidfd if raw.pidfd is not None and raw.pidfd >= 0 else None,
        fsid=any_fid.fsid if any_fid else None,
        handle=any_fid.handle if any_fid else None,
        range=raw.range,
        error=raw.error,
    )


def _path(
    fd: int | None,
    fid: FileId | None,
    named: FileId | None,
    dir_fid: FileId | None,
    open_handle: Callable[[FileId], str | None],
) -> str | None:
    if fd is not None:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
    if named is not None:
        return _join(named, open_handle)
    target = fid or dir_fid
    return open_handle(target) if target else None


def _join(named: FileId | None, open_handle: Callable[[FileId], str | None]) -> str | None:
    if named is None:
        return None
    directory = open_handle(named)
    if directory is None or named.name in (None, "", "."):
        return directory
    return os.path.join(directory, named.name)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_libc.fanotify_init.restype = ctypes.c_int
_libc.fanotify_mark.argtypes = [
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_char_p,
]
_libc.fanotify_mark.restype = ctypes.c_int
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libc.open_by_handle_at.restype = ctypes.c_int


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
    return result


def fanotify_init(flags: int, event_f_flags: int) -> int:
    """fanotify_init(2); raises OSError with the kernel's errno."""
    return _check(_libc.fanotify_init(flags, event_f_flags), "fanotify_init")


def fanotify_mark(fd: int, flags: int, mask: int, path: str) -> None:
    """fanotify_mark(2) relative to the current directory; raises OSError."""
    _check(_libc.fanotify_mark(fd, flags, mask, AT_FDCWD, os.fsencode(path)), "fanotify_mark")


def open_by_handle_at(mount_fd: int, handle: bytes, flags: int) -> int:
    """open_by_handle_at(2) with a ``struct file_handle`` given as bytes; raises OSError."""
    return _check(_libc.open_by_handle_at(mount_fd, handle, flags), "open_by_handle_at")


def init_group(fan_class: FanClass, flags: FanInit) -> int:
    try:
        return fanotify_init(fan_class | flags, EVENT_OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno_codes.EPERM:
            raise PermissionDenied("fanotify_init needs CAP_SYS_ADMIN: run as root") from exc
        if exc.errno in _UNSUPPORTED:
            culprit = _init_culprit(fan_class, flags)
            raise Unsupported(
                f"this kernel refuses fanotify_init with {culprit} (class {fan_class.name}):"
                f" {exc.strerror}; drop that flag"
            ) from exc
        raise PlatformError(f"fanotify_init failed: {exc.strerror}") from exc


def _init_culprit(fan_class: FanClass, flags: FanInit) -> str:
    """Name the one flag whose removal makes fanotify_init succeed, else all of them."""
    optional = [bit for bit in FanInit if _single_init(bit) and bit & flags]
    optional = [bit for bit in optional if bit not in (FanInit.CLOEXEC, FanInit.NONBLOCK)]
    for bit in optional:
        try:
            os.close(fanotify_init(fan_class | (flags & ~bit), EVENT_OPEN_FLAGS))
        except OSError:
            continue
        return f"FAN_{bit.name}"
    return "|".join(f"FAN_{bit.name}" for bit in optional) or f"FAN_CLASS_{fan_class.name}"


def _single_init(bit: FanInit) -> bool:
    return bit.value & (bit.value - 1) == 0


def mark_error(exc: OSError, path: str, mask: int, kind: str) -> PlatformError:
    flags = "|".join(mask_names(mask))
    if exc.errno == errno_codes.EPERM:
        return PermissionDenied(f"fanotify_mark on {path} needs CAP_SYS_ADMIN: run as root")
    if exc.errno in _UNSUPPORTED:
        return Unsupported(
            f"the kernel or the file system at {path} refuses a {kind} mark for {flags}"
            f" ({exc.strerror}); use other events, another mark kind or a group class"
            " that allows them"
        )
    if exc.errno in (errno_codes.ENOENT, errno_codes.ENOTDIR):
        return PlatformError(f"cannot mark {path}: {exc.strerror}")
    return PlatformError(f"fanotify_mark on {path} for {flags} failed: {exc.strerror}")
