"""OCSF 1.3 enumerations used by Yoroi events (ids and their OCSF captions)."""

from __future__ import annotations

import enum


class OcsfEnum(enum.IntEnum):
    """An OCSF ``*_id`` value; ``caption`` is its OCSF name ("High" for ``Severity.HIGH``)."""

    @property
    def caption(self) -> str:
        return _CAPTIONS.get(self.name, self.name.replace("_", " ").title())


# Captions that `str.title()` would spell differently from the OCSF schema.
_CAPTIONS = {
    "SHA_1": "SHA-1",
    "SHA_256": "SHA-256",
    "SHA_512": "SHA-512",
    "MD5": "MD5",
    "CTPH": "CTPH",
    "TLSH": "TLSH",
    "SET_USER_ID": "Set User ID",
    "IN_PROGRESS": "In Progress",
    "LEARNING": "Learning (ML/DL)",
}


def caption(enum_type: type[OcsfEnum], value: int) -> str:
    """The OCSF caption of ``value`` in ``enum_type``, or "Other" for an id it does not know."""
    try:
        return enum_type(value).caption
    except ValueError:
        return "Other"


class Severity(OcsfEnum):
    """OCSF ``severity_id``."""

    UNKNOWN = 0
    INFORMATIONAL = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5
    FATAL = 6
    OTHER = 99


class Status(OcsfEnum):
    """OCSF ``status_id`` of activity events (did the activity succeed?)."""

    UNKNOWN = 0
    SUCCESS = 1
    FAILURE = 2
    OTHER = 99


class FindingStatus(OcsfEnum):
    """OCSF ``status_id`` of findings (the analyst's workflow state)."""

    UNKNOWN = 0
    NEW = 1
    IN_PROGRESS = 2
    SUPPRESSED = 3
    RESOLVED = 4
    OTHER = 99


class FindingActivity(OcsfEnum):
    """``activity_id`` of Detection Finding (2004)."""

    UNKNOWN = 0
    CREATE = 1
    UPDATE = 2
    CLOSE = 3
    OTHER = 99


class FileActivity(OcsfEnum):
    """``activity_id`` of File System Activity (1001)."""

    UNKNOWN = 0
    CREATE = 1
    READ = 2
    UPDATE = 3
    DELETE = 4
    RENAME = 5
    SET_ATTRIBUTES = 6
    SET_SECURITY = 7
    GET_ATTRIBUTES = 8
    GET_SECURITY = 9
    ENCRYPT = 10
    DECRYPT = 11
    MOUNT = 12
    UNMOUNT = 13
    OPEN = 14
    OTHER = 99


class ProcessActivityId(OcsfEnum):
    """``activity_id`` of Process Activity (1007)."""

    UNKNOWN = 0
    LAUNCH = 1
    TERMINATE = 2
    OPEN = 3
    INJECT = 4
    SET_USER_ID = 5
    OTHER = 99


class HttpActivityId(OcsfEnum):
    """``activity_id`` of HTTP Activity (4002): the request method."""

    UNKNOWN = 0
    CONNECT = 1
    DELETE = 2
    GET = 3
    HEAD = 4
    OPTIONS = 5
    POST = 6
    PUT = 7
    TRACE = 8
    PATCH = 9
    OTHER = 99


class NetworkActivityId(OcsfEnum):
    """``activity_id`` of Network Activity (4001)."""

    UNKNOWN = 0
    OPEN = 1
    CLOSE = 2
    RESET = 3
    FAIL = 4
    REFUSE = 5
    TRAFFIC = 6
    LISTEN = 7
    OTHER = 99


class RemediationActivity(OcsfEnum):
    """``activity_id`` of the Remediation classes (7002-7004), after MITRE D3FEND tactics.

    Yoroi uses ISOLATE for quarantine, stop (SIGSTOP) and ban; EVICT for kill and delete;
    RESTORE for restoring a file or lifting a ban.
    """

    UNKNOWN = 0
    ISOLATE = 1
    EVICT = 2
    RESTORE = 3
    HARDEN = 4
    OTHER = 99


class LifecycleActivity(OcsfEnum):
    """``activity_id`` of Application Lifecycle (6002).

    A crash is STOP with ``status_id=Status.FAILURE``; a configuration reload is UPDATE.
    """

    UNKNOWN = 0
    INSTALL = 1
    REMOVE = 2
    START = 3
    STOP = 4
    RESTART = 5
    ENABLE = 6
    DISABLE = 7
    UPDATE = 8
    OTHER = 99


class HashAlgorithm(OcsfEnum):
    """``algorithm_id`` of a Fingerprint."""

    UNKNOWN = 0
    MD5 = 1
    SHA_1 = 2
    SHA_256 = 3
    SHA_512 = 4
    CTPH = 5
    TLSH = 6
    OTHER = 99


class FileType(OcsfEnum):
    """``type_id`` of a File."""

    UNKNOWN = 0
    REGULAR_FILE = 1
    FOLDER = 2
    CHARACTER_DEVICE = 3
    BLOCK_DEVICE = 4
    LOCAL_SOCKET = 5
    NAMED_PIPE = 6
    SYMBOLIC_LINK = 7
    OTHER = 99


class AnalyticType(OcsfEnum):
    """``type_id`` of an Analytic (what kind of logic produced the finding)."""

    UNKNOWN = 0
    RULE = 1
    BEHAVIORAL = 2
    STATISTICAL = 3
    LEARNING = 4
    FINGERPRINTING = 5
    TAGGING = 6
    KEYWORD_MATCH = 7
    REGULAR_EXPRESSIONS = 8
    OTHER = 99


class Action(OcsfEnum):
    """``action_id`` of a finding: what the security control did to the activity."""

    UNKNOWN = 0
    ALLOWED = 1
    DENIED = 2
    OTHER = 99


class Disposition(OcsfEnum):
    """``disposition_id`` of a finding: the outcome in more detail than ``action_id``."""

    UNKNOWN = 0
    ALLOWED = 1
    BLOCKED = 2
    QUARANTINED = 3
    ISOLATED = 4
    DELETED = 5
    DROPPED = 6
    CUSTOM_ACTION = 7
    APPROVED = 8
    RESTORED = 9
    DETECTED = 15
    NO_ACTION = 16
    LOGGED = 17
    ALERT = 19
    OTHER = 99


class Direction(OcsfEnum):
    """``direction_id`` of a network connection."""

    UNKNOWN = 0
    INBOUND = 1
    OUTBOUND = 2
    LATERAL = 3
    OTHER = 99
