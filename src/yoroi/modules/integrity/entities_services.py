"""Entity collectors for what runs on its own: systemd units and timers, crontab entries.

A unit is found as systemd finds its fragment: the first directory in precedence order that
holds the name wins (``/etc`` over ``/run`` over ``/usr/local/lib`` over ``/usr/lib``). Its
state is read from the file system, not asked of systemd: ``masked`` (a link to /dev/null),
``enabled`` (a link in a ``.wants``/``.requires``/``.upholds`` directory under /etc or /run),
``static`` (no ``[Install]`` section), ``alias`` (a link to a unit of another name), else
``disabled``. Instances named only in a ``.wants`` directory (``getty@tty1.service``) get the
template's fragment.
"""

from __future__ import annotations

import os
import posixpath
import re

from yoroi.modules.integrity.entities_context import Context, Record, Records

UNIT_DIRS = (
    "/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system", "/lib/systemd/system",
)  # fmt: skip
_ADMIN_DIRS = frozenset(UNIT_DIRS[:2])
_UNIT_SUFFIXES = frozenset({
    ".service", ".socket", ".device", ".mount", ".automount", ".swap", ".target", ".path",
    ".timer", ".slice", ".scope",
})  # fmt: skip
_DEPENDENCY_DIRS = (".wants", ".requires", ".upholds")
_INSTALL = re.compile(rb"^\s*\[Install\]", re.MULTILINE)
_CRON_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_ENV = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


class _UnitScan:
    """One pass over the unit directories: fragments, enablement links and drop-ins."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.fragments: dict[str, str] = {}  # unit name -> path of its fragment
        self.wanted_by: dict[str, set[str]] = {}
        self.enabled: set[str] = set()
        self.dropins: dict[str, dict[str, str | None]] = {}
        seen: set[str] = set()
        for directory in UNIT_DIRS:
            real = os.path.realpath(ctx.path(directory))
            if real not in seen:
                seen.add(real)
                self._scan(directory)

    def _scan(self, directory: str) -> None:
        for name in self.ctx.listdir(directory):
            path = f"{directory}/{name}"
            base, suffix = os.path.splitext(name)
            if suffix in _DEPENDENCY_DIRS:
                self._links(directory, path, name)
            elif suffix == ".d" and os.path.splitext(base)[1] in _UNIT_SUFFIXES:
                self._dropins(base, path)
            elif suffix in _UNIT_SUFFIXES:
                self.fragments.setdefault(name, path)

    def _links(self, directory: str, path: str, owner: str) -> None:
        for unit in self.ctx.listdir(path):
            self.wanted_by.setdefault(unit, set()).add(owner)
            if directory in _ADMIN_DIRS:
                self.enabled.add(unit)

    def _dropins(self, unit: str, path: str) -> None:
        for name in self.ctx.listdir(path):
            if name.endswith(".conf"):
                self.dropins.setdefault(unit, {})[f"{path}/{name}"] = self.ctx.sha256(
                    f"{path}/{name}"
                )

    def record(self, unit: str, fragment: str) -> Record:
        """The record of ``unit`` whose fragment (or template's) is ``fragment``."""
        target = self._link_target(fragment)
        record: Record = {
            "path": fragment, "sha256": None, "state": "disabled",
            "wanted_by": sorted(self.wanted_by.get(unit, ())),
            "dropins": dict(sorted(self.dropins.get(unit, {}).items())),
        }  # fmt: skip
        if target == "/dev/null":
            record["state"] = "masked"
            return record
        content = self._content(fragment)
        record["sha256"] = self.ctx.sha256(fragment) if content is not None else None
        if target is not None and posixpath.basename(target) not in {unit, _template(unit)}:
            record["state"] = "alias"
        elif unit in self.enabled:
            record["state"] = "enabled"
        elif content is not None and not _INSTALL.search(content):
            record["state"] = "static"
        return record

    def _link_target(self, path: str) -> str | None:
        try:
            target = os.readlink(self.ctx.path(path))
        except OSError:
            return None
        return posixpath.normpath(posixpath.join(posixpath.dirname(path), target))

    def _content(self, path: str) -> bytes | None:
        try:
            return self.ctx.path(path).read_bytes()
        except OSError as exc:
            self.ctx.notice(f"{path}: unreadable ({exc.strerror or exc}), not hashed")
            return None


def _template(unit: str) -> str:
    """``getty@tty1.service`` → ``getty@.service``; other names unchanged."""
    if "@" not in unit:
        return unit
    prefix, _, rest = unit.partition("@")
    return f"{prefix}@{os.path.splitext(rest)[1]}"


def _units(ctx: Context, timers: bool) -> Records:
    scan = _UnitScan(ctx)
    names = set(scan.fragments) | {
        unit for unit in scan.wanted_by if _template(unit) in scan.fragments
    }
    records: Records = {}
    for unit in sorted(names):
        if unit.endswith(".timer") != timers:
            continue
        fragment = scan.fragments.get(unit) or scan.fragments[_template(unit)]
        records[unit] = scan.record(unit, fragment)
    return records


def collect_units(ctx: Context) -> Records:
    """systemd units other than timers: fragment, content hash, state, drop-ins."""
    return _units(ctx, timers=False)


def collect_timers(ctx: Context) -> Records:
    """systemd timers, recorded like the other units."""
    return _units(ctx, timers=True)


def _cron_entry(line: str, user: str | None) -> Record:
    env = _ENV.match(line)
    if env and not line.startswith("@"):
        return {"variable": env.group(1), "value": env.group(2)}
    fields = line.split(None, 1 if line.startswith("@") else 5)
    schedule = " ".join(fields[:1] if line.startswith("@") else fields[:5])
    command = fields[-1] if len(fields) > (1 if line.startswith("@") else 5) else ""
    if user is None:  # system crontabs name the user before the command
        user, _, command = command.partition(" ")
    return {"schedule": schedule, "user": user, "command": command.strip()}


def _crontab(ctx: Context, path: str, user: str | None, records: Records) -> None:
    text = ctx.read_text(path)
    if text is None:
        return
    for raw in text.splitlines():
        line = " ".join(raw.split())  # cron has no continuation lines
        if not line or line.startswith("#"):
            continue
        key = f"{path}: {line}"
        if key in records:
            count = records[key]["count"]
            records[key]["count"] = count + 1 if isinstance(count, int) else 2
            continue
        records[key] = {"file": path, **_cron_entry(line, user), "count": 1}


def collect_crontabs(ctx: Context) -> Records:
    """Entries and variables of the system crontab, /etc/cron.d and users' crontabs."""
    records: Records = {}
    _crontab(ctx, "/etc/crontab", None, records)
    for name in ctx.listdir("/etc/cron.d"):
        if _CRON_NAME.match(name):  # cron ignores names with dots or a trailing ~
            _crontab(ctx, f"/etc/cron.d/{name}", None, records)
    for name in ctx.listdir("/var/spool/cron/crontabs"):
        _crontab(ctx, f"/var/spool/cron/crontabs/{name}", name, records)
    return records


COLLECTORS = {"unit": collect_units, "timer": collect_timers, "crontab": collect_crontabs}
