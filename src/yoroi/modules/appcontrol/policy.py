"""The ``appcontrol`` section of the agent policy.

Example (every key optional)::

    appcontrol:
      enabled: true
      mode: audit                 # audit: allow and report; enforce: deny and report
      scope:
        paths: [/srv, /opt/app]   # only executions of files under these are judged (default: all)
        users: [www-data, 1001]   # only these users' processes (default: all)
      inventory_dirs: [/usr, /opt]  # default: PATH dirs, /usr/lib*, /lib*, /opt, /usr/local
      rules:
        - {hash: 3f2a...}         # this content, anywhere
        - {path: /opt/app/bin/*}  # whatever is there, by location (unread)
        - {package: nginx}        # the package's files that match dpkg's MD5
      maintenance:
        package_managers: [apt, apt-get, dpkg, pip, pip3, unattended-upgrade]
        window: 30m               # or null: only the package managers' process trees
      interpreters: [sh, bash, dash, python3*, perl, php*, ruby, node]
      loader: [ld-linux*.so*]
      decision_timeout: 250ms     # the deadman: a later decision is "allow" plus an alert
      memfd_noexec: true          # default: true in enforce, false in audit

Interpreter and loader names are globs on the executable's file name: reading a script through
one of them is judged like executing it.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from yoroi.config import AbsolutePath, Duration, ModulePolicy, StrictModel
from yoroi.modules.appcontrol.trust import SHA256, RuleSet
from yoroi.modules.appcontrol.types import Mode

_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]*(?::[a-z0-9-]+)?$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]*\$?$", re.IGNORECASE)
DEFAULT_PACKAGE_MANAGERS = ("apt", "apt-get", "dpkg", "pip", "pip3", "unattended-upgrade")
DEFAULT_INTERPRETERS = ("sh", "bash", "dash", "python3*", "perl", "php*", "ruby", "node")
DEFAULT_LOADER = ("ld-linux*.so*",)
MAX_DECISION_TIMEOUT = 10.0


class RuleSpec(StrictModel):
    """One explicit trust rule, exactly one of: ``{hash: SHA256}`` (this content anywhere),
    ``{path: GLOB}`` (whatever is there, by location, unread) or ``{package: NAME}`` (the
    package's files that match dpkg's checksums)."""

    hash: str | None = Field(None, description="SHA-256 of the file, 64 hex digits.")
    path: AbsolutePath | None = Field(None, description="Absolute path or glob; '*' crosses '/'.")
    package: str | None = Field(None, description="Debian package name, e.g. nginx.")

    @field_validator("hash")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is not None and not SHA256.match(value.lower()):
            raise ValueError(f"{value!r} is not a SHA-256; write the 64 hex digits of "
                             "'sha256sum FILE'")
        return value.lower() if value is not None else None

    @field_validator("package")
    @classmethod
    def _debian_name(cls, value: str | None) -> str | None:
        if value is not None and not _PACKAGE.match(value):
            raise ValueError(f"{value!r} is not a Debian package name (e.g. nginx, libc6:amd64)")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> RuleSpec:
        given = [k for k in ("hash", "path", "package") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a rule is exactly one of {hash: SHA256}, {path: GLOB} or "
                             f"{{package: NAME}} (got {', '.join(given) or 'none'})")
        return self


class ScopeSpec(StrictModel):
    """What is judged: executions of files under ``paths``, by ``users`` (empty: all)."""

    paths: tuple[AbsolutePath, ...] = Field((), description="Only files under these.")
    users: tuple[int | str, ...] = Field((), description="Only these users (names or uids).")

    @field_validator("users")
    @classmethod
    def _users(cls, users: tuple[int | str, ...]) -> tuple[int | str, ...]:
        for user in users:
            if isinstance(user, int) and user < 0 or isinstance(user, str) \
                    and not _USER.match(user):
                raise ValueError(f"{user!r} is not a user name or uid")
        return users


class MaintenanceSpec(StrictModel):
    """How software is installed while the module runs."""

    package_managers: tuple[str, ...] = Field(
        DEFAULT_PACKAGE_MANAGERS,
        description="Executables (names) whose process trees may install trusted files.")
    window: Duration | None = Field(
        None, description="Time-limited maintenance: everything written meanwhile is trusted.")

    @field_validator("package_managers")
    @classmethod
    def _names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not name or "/" in name:
                raise ValueError(f"{name!r} is not an executable name (no '/', not empty)")
        return names


class AppcontrolPolicy(ModulePolicy):
    """Application control: which software may run, and what happens to the rest."""

    mode: Mode = Field(Mode.AUDIT, description="audit (allow and report) or enforce.")
    scope: ScopeSpec = ScopeSpec()
    inventory_dirs: tuple[AbsolutePath, ...] | None = Field(
        None, description="Directories of the inventory; default PATH dirs, /usr/lib*, /lib*, "
        "/opt, /usr/local.")
    rules: tuple[RuleSpec, ...] = Field((), description="Explicit trust by hash, path or package.")
    maintenance: MaintenanceSpec = MaintenanceSpec()
    interpreters: tuple[str, ...] = Field(
        DEFAULT_INTERPRETERS, description="Globs on the names of script interpreters.")
    loader: tuple[str, ...] = Field(
        DEFAULT_LOADER, description="Globs on the names of the dynamic loader.")
    decision_timeout: Duration = Field(
        0.25, description="Deadman: a decision later than this allows and alerts.")
    memfd_noexec: bool | None = Field(
        None, description="Refuse executing memfds (vm.memfd_noexec); default: in enforce.")

    @field_validator("decision_timeout")
    @classmethod
    def _bounded(cls, seconds: float) -> float:
        if seconds > MAX_DECISION_TIMEOUT:
            raise ValueError(f"{seconds:g}s would stall every exec that long; use at most "
                             f"{MAX_DECISION_TIMEOUT:g}s")
        return seconds

    @field_validator("interpreters", "loader")
    @classmethod
    def _globs(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not name or "/" in name:
                raise ValueError(f"{name!r} is not a file-name glob (no '/', not empty)")
        return names

    @property
    def refuse_memfd_exec(self) -> bool:
        """Whether executing a memfd is refused: ``memfd_noexec``, else only in enforce."""
        return self.memfd_noexec if self.memfd_noexec is not None else self.mode is Mode.ENFORCE

    def rule_set(self) -> RuleSet:
        """The rules as the trust database takes them."""
        return RuleSet(
            hashes=frozenset(r.hash for r in self.rules if r.hash is not None),
            paths=tuple(r.path for r in self.rules if r.path is not None),
            packages=tuple(r.package for r in self.rules if r.package is not None),
        )
