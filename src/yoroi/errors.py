"""The one exception tree of Yoroi.

Every error raised on purpose by Yoroi code derives from :class:`YoroiError`; the command line
turns any of them into one clear line on stderr and exit status 2, never a traceback::

    YoroiError
    ├── ConfigError            a policy or configuration document is wrong (file, line, key)
    │   └── PolicyError        ... in a module's policy section
    ├── UsageError             a command-line argument is wrong
    ├── NotBuiltError          the module asked for does not exist yet
    ├── PlatformError          the kernel or a system tool refused or failed
    │   ├── PermissionDenied   ... because the caller lacks a privilege (CAP_SYS_ADMIN, root)
    │   ├── Unsupported        ... because this kernel or file system lacks the facility
    │   └── ProcessGone        ... because the process exited meanwhile
    ├── ScanError              a file could not be scanned (the scan goes on: verdict "error")
    ├── BaselineTampered       a stored integrity baseline fails its signature check (an alert)
    ├── SinkError              an event sink cannot write (the bus counts and retries)
    ├── ActionError            the responder could not carry out an action
    │   └── ActionRefused      ... because policy or a safety rule forbids it
    └── ModuleError            a protection module failed (the agent restarts it)

Messages name the bad value and say how to fix it.
"""

from __future__ import annotations


class YoroiError(Exception):
    """Base of every error Yoroi raises on purpose."""


class ConfigError(YoroiError):
    """A configuration or policy document is invalid.

    ``problems`` holds one line per problem, each naming file, line and key.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]

    def __str__(self) -> str:
        return "\n".join(self.problems)


class PolicyError(ConfigError):
    """A module's policy section is invalid."""


class UsageError(YoroiError):
    """A command-line argument is invalid."""


class NotBuiltError(YoroiError):
    """The requested module or command is not part of this build yet."""


class PlatformError(YoroiError):
    """A kernel facility or system tool refused or failed."""


class PermissionDenied(PlatformError):
    """The caller lacks the privilege the kernel facility needs."""


class Unsupported(PlatformError):
    """This kernel or file system does not offer the facility."""


class ProcessGone(PlatformError):
    """The process exited (or its pid was reused) before we could read or signal it."""


class ScanError(YoroiError):
    """A file could not be scanned (YARA refused it, it timed out); the scan goes on."""


class BaselineTampered(YoroiError):
    """A stored baseline (or its key) fails verification: someone changed it. An alert."""


class SinkError(YoroiError):
    """An event sink could not write; the bus retries, spills or counts a drop."""


class ActionError(YoroiError):
    """The responder could not carry out an action."""


class ActionRefused(ActionError):
    """A safety rule or the policy forbids the action (e.g. killing pid 1)."""


class ModuleError(YoroiError):
    """A protection module failed; the agent reports it and restarts the module."""
