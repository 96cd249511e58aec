"""The dpkg database, read directly: which packages are installed, their files and checksums.

Integrity monitoring and application control ask two questions of it on every file: *which
package owns this file* and *is it still the file that package installed*. Answering by running
``dpkg-query``/``dpkg -S`` costs a process per question; this module reads the database files
instead (``dpkg-query(1)``, ``dpkg(1)`` "FILES")::

    /var/lib/dpkg/status                    installed packages, one RFC 822 stanza each:
                                            Package, Status, Architecture, Version,
                                            Multi-Arch, Source, Conffiles (path + md5)
    /var/lib/dpkg/info/PKG[:ARCH].list      the paths the package installed, one a line
    /var/lib/dpkg/info/PKG[:ARCH].md5sums   "MD5  relative/path" of its regular files
    /var/lib/dpkg/diversions                triples: path, diverted-to path, package (":" local)

Usage::

    db = DpkgDatabase()                     # or DpkgDatabase(Path("/mnt/image")) for a root
    db.packages()["coreutils"].version      # "9.1-1"
    db.owner("/usr/bin/ls")                 # ["coreutils"]
    db.verify("/usr/bin/ls")                # True, False (changed or gone) or None (unknown)

Packages are keyed as dpkg names them: ``name``, or ``name:arch`` for ``Multi-Arch: same``
packages (``libc6:amd64``), which is also how their info files are named; methods taking a
package accept either spelling. :meth:`DpkgDatabase.packages` lists the packages whose files are
on disk (every state but ``not-installed`` and ``config-files``).

Everything is parsed lazily and once: the status file on first use (a few tens of milliseconds
for a thousand packages), the path → owner index on the first :meth:`~DpkgDatabase.owner` or
:meth:`~DpkgDatabase.verify` call (every ``.list`` file, a fraction of a second), each package's
``.md5sums`` when first needed. A :class:`DpkgDatabase` is a snapshot: make a new one after
packages change. Parsing is forgiving: a stanza that is not well formed (no ``Package``, a bad
``Status``, a line that is neither ``Field: value`` nor a continuation, a package name that is
not a Debian name) is skipped and counted in :attr:`DpkgDatabase.malformed`, never raised.

Two details matter on a modern Debian system. The *merged /usr* layout makes ``/bin`` a symlink
to ``/usr/bin`` while packages still record ``/bin/ls``; lookups therefore also try the other
spelling of a path when the root's ``/bin``, ``/sbin`` or ``/lib*`` is such a symlink. And a
*diversion* moves a package's file aside (``/usr/share/man/man1/sh.1.gz`` of bash is installed
as ``sh.distrib.1.gz`` because dash diverts it): the diverted-to path is owned, and verified
against, the packages that record the original path, the original path only by the diverting
package.

:meth:`~DpkgDatabase.verify` compares the MD5 dpkg recorded (``.md5sums``, or the status
file's ``Conffiles`` for configuration files) with the file on disk; the last path component is
not followed if it is a symlink (a package's regular file replaced by a link is a change).
Directories above it are resolved by the kernel, so with a ``root`` other than ``/`` an
absolute symlink inside that tree points at the host's file, not the tree's.
:class:`yoroi.platform.fakes.dpkg.FakeDpkgDatabase` is the in-memory twin for unit tests.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol, runtime_checkable

from yoroi.errors import PermissionDenied, PlatformError

_INSTALLED = ("installed", "triggers-awaited", "triggers-pending")
ON_DISK_STATES = frozenset({*_INSTALLED, "unpacked", "half-configured", "half-installed"})
_WANTED = frozenset(
    {"package", "status", "architecture", "version", "multi-arch", "source", "conffiles"}
)
_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]*$")
_ARCH = re.compile(r"^[a-z0-9-]+$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_PARAGRAPHS = re.compile(r"\n(?:[ \t]*\n)+")
_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "libo32")
_CONFFILE_FLAGS = frozenset({"obsolete", "remove-on-upgrade"})


@dataclass(frozen=True, slots=True)
class Conffile:
    """A configuration file of a package, with the MD5 dpkg recorded when installing it."""

    path: str
    md5: str
    obsolete: bool = False
    remove_on_upgrade: bool = False


@dataclass(frozen=True, slots=True)
class Package:
    """One package stanza of the status file."""

    name: str
    architecture: str
    version: str
    status: str
    multi_arch: str = "no"
    source: str = ""
    source_version: str = ""
    conffiles: tuple[Conffile, ...] = ()

    @property
    def key(self) -> str:
        """dpkg's name for it: ``name:arch`` for ``Multi-Arch: same`` packages, else ``name``."""
        return f"{self.name}:{self.architecture}" if self.multi_arch == "same" else self.name

    @property
    def state(self) -> str:
        """The third word of ``Status`` (``installed``, ``unpacked``, ``config-files``...)."""
        return self.status.split()[-1]

    @property
    def installed(self) -> bool:
        """Fully installed (configured, possibly with triggers pending)."""
        return self.state in _INSTALLED


@dataclass(frozen=True, slots=True)
class Diversion:
    """A diversion: files at ``path`` from packages other than ``package`` go to ``to``."""

    path: str
    to: str
    package: str | None  # None for a local diversion (dpkg-divert --local)


@runtime_checkable
class PackageDatabase(Protocol):
    """What integrity and application control need from the package manager's records."""

    def packages(self) -> dict[str, Package]:
        """Packages whose files are on disk, keyed as dpkg names them."""
        ...

    def files(self, package: str) -> list[str]:
        """Paths the package installed (empty when unknown)."""
        ...

    def md5sums(self, package: str) -> dict[str, str]:
        """Absolute path → recorded MD5 of the package's regular files and conffiles."""
        ...

    def owner(self, path: str) -> list[str]:
        """Keys of the packages that own ``path`` (empty when none)."""
        ...

    def verify(self, path: str) -> bool | None:
        """Whether the file on disk matches the recorded MD5; None when nothing is recorded."""
        ...

    def recorded_md5s(self, path: str) -> frozenset[str]:
        """The MD5s the owning packages recorded for ``path`` (empty: not a package file)."""
        ...


class DpkgDatabase:
    """The dpkg database of the system at ``root`` (``admindir`` defaults to var/lib/dpkg)."""

    def __init__(self, root: Path = Path("/"), *, admindir: Path | None = None) -> None:
        self.root = Path(root)
        self.admindir = admindir if admindir is not None else self.root / "var/lib/dpkg"
        self._md5_cache: dict[str, dict[str, str]] = {}
        self._malformed = 0

    @property
    def malformed(self) -> int:
        """How many status stanzas (and diversion entries) were skipped as malformed."""
        _ = self._status  # the count exists once the status file is parsed
        return self._malformed

    def packages(self) -> dict[str, Package]:
        """Packages whose files are on disk, keyed by :attr:`Package.key`."""
        return dict(self._status)

    def package(self, name: str) -> Package | None:
        """The package called ``name`` or ``name:arch``; the native one when several match."""
        if name in self._status:
            return self._status[name]
        candidates = self._by_name.get(name, [])
        native = [p for p in candidates if p.architecture in (self._native, "all")]
        chosen = native or candidates
        return chosen[0] if chosen else None

    def files(self, package: str) -> list[str]:
        """Paths the package installed, as dpkg recorded them (``/.`` and directories too)."""
        found = self.package(package)
        if found is None:
            return []
        return _read_lines(self.admindir / "info" / f"{found.key}.list") or []

    def md5sums(self, package: str) -> dict[str, str]:
        """Absolute path → MD5 from ``.md5sums``, plus the package's current conffiles."""
        found = self.package(package)
        if found is None:
            return {}
        if found.key not in self._md5_cache:
            self._md5_cache[found.key] = self._read_md5sums(found)
        return self._md5_cache[found.key]

    def owner(self, path: str) -> list[str]:
        """Keys of the packages owning ``path``, honouring diversions and merged /usr."""
        return list(dict.fromkeys(key for key, _ in self._records(path)))

    def verify(self, path: str) -> bool | None:
        """True if the file matches a recorded MD5, False if it differs or is gone.

        None when no package records a checksum for ``path`` (unowned files, directories,
        symlinks). Raises :class:`~yoroi.errors.PermissionDenied` when the file is unreadable.
        """
        expected = self.recorded_md5s(path)
        if not expected:
            return None
        return self._disk_md5(path) in expected

    def recorded_md5s(self, path: str) -> frozenset[str]:
        """The MD5s the owning packages recorded for ``path`` (empty: not a package file).

        A scanner that has hashed the file already compares with these instead of
        :meth:`verify`, which reads the file again.
        """
        found = {self.md5sums(key).get(recorded) for key, recorded in self._records(path)}
        return frozenset(m for m in found if m is not None)

    def diversions(self) -> dict[str, Diversion]:
        """Active diversions, keyed by the diverted path."""
        return dict(self._diversions)

    @cached_property
    def _status(self) -> dict[str, Package]:
        raw = _read_bytes(self.admindir / "status")
        if raw is None:
            raise PlatformError(f"no dpkg database at {self.admindir} (no status file)")
        packages: dict[str, Package] = {}
        for paragraph in _PARAGRAPHS.split(raw.decode("utf-8", "surrogateescape")):
            if not paragraph.strip():
                continue
            parsed = parse_stanza(paragraph)
            if parsed is None:
                self._malformed += 1
            elif parsed.state in ON_DISK_STATES:
                packages[parsed.key] = parsed
        return packages

    @cached_property
    def _by_name(self) -> dict[str, list[Package]]:
        by_name: dict[str, list[Package]] = {}
        for package in self._status.values():
            by_name.setdefault(package.name, []).append(package)
        return by_name

    @cached_property
    def _native(self) -> str:
        # dpkg itself is always of the native architecture.
        dpkg = self._status.get("dpkg")
        return dpkg.architecture if dpkg else ""

    @cached_property
    def _index(self) -> dict[str, list[str]]:
        index: dict[str, list[str]] = {}
        for key in self._status:
            for path in _read_lines(self.admindir / "info" / f"{key}.list") or []:
                index.setdefault(path, []).append(key)
        return index

    @cached_property
    def _diversions(self) -> dict[str, Diversion]:
        lines = _read_lines(self.admindir / "diversions") or []
        if len(lines) % 3:
            self._malformed += 1
        found = {}
        for path, to, package in zip(lines[0::3], lines[1::3], lines[2::3], strict=False):
            found[path] = Diversion(path, to, None if package == ":" else package)
        return found

    @cached_property
    def _diverted_to(self) -> dict[str, Diversion]:
        return {d.to: d for d in self._diversions.values()}

    @cached_property
    def _merged(self) -> frozenset[str]:
        """Top-level directories that are symlinks into /usr (the merged-/usr layout)."""
        merged = set()
        for name in _MERGED:
            try:
                target = os.readlink(self.root / name)
            except OSError:
                continue
            if target.rstrip("/") in (f"usr/{name}", f"/usr/{name}"):
                merged.add(name)
        return frozenset(merged)

    def _spellings(self, path: str) -> list[str]:
        """``path`` (made absolute) and its other spelling under merged /usr, if any."""
        if path in ("/", "/."):
            return [path]
        path = posixpath.normpath("/" + path.lstrip("/"))
        top, _, rest = path[1:].partition("/")
        if top in self._merged:
            return [path, f"/usr/{top}/{rest}" if rest else f"/usr/{top}"]
        if top == "usr":
            second, _, tail = rest.partition("/")
            if second in self._merged:
                return [path, f"/{second}/{tail}" if tail else f"/{second}"]
        return [path]

    def _records(self, path: str) -> Iterator[tuple[str, str]]:
        """(package key, path as that package records it) for every owner of ``path``."""
        for spelling in self._spellings(path):
            yield from self._records_at(spelling)

    def _records_at(self, path: str) -> Iterator[tuple[str, str]]:
        diverted = self._diversions.get(path)
        for key in self._index.get(path, []):
            # Files of other packages at a diverted path were installed elsewhere.
            if diverted is None or self._package_name(key) == diverted.package:
                yield key, path
        into = self._diverted_to.get(path)
        if into is not None:
            for key in self._index.get(into.path, []):
                if self._package_name(key) != into.package:
                    yield key, into.path

    def _package_name(self, key: str) -> str:
        return key.partition(":")[0]

    def _read_md5sums(self, package: Package) -> dict[str, str]:
        sums = {}
        for line in _read_lines(self.admindir / "info" / f"{package.key}.md5sums") or []:
            digest, _, rest = line.partition(" ")
            relative = rest[1:] if rest[:1] in (" ", "*") else rest
            if _MD5.match(digest) and relative:
                sums["/" + relative.lstrip("/")] = digest
        for conffile in package.conffiles:
            if not conffile.obsolete and _MD5.match(conffile.md5):
                sums[conffile.path] = conffile.md5
        return sums

    def _disk_md5(self, path: str) -> str | None:
        """MD5 of the regular file at ``path`` under the root; None if absent or not regular."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.root / path.lstrip("/"), flags)
        except PermissionError as exc:
            raise PermissionDenied(f"cannot read {path} to verify it: {exc}") from exc
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                return None
            raise PlatformError(f"cannot open {path} to verify it: {exc}") from exc
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return hashlib.file_digest(file, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PlatformError(f"cannot read the dpkg database file {path}: {exc}") from exc


def _read_lines(path: Path) -> list[str] | None:
    """Non-empty lines of a database file (paths kept byte-exact), or None when it is absent."""
    raw = _read_bytes(path)
    if raw is None:
        return None
    return [line for line in raw.decode("utf-8", "surrogateescape").split("\n") if line]


def parse_stanza(paragraph: str) -> Package | None:
    """One status-file stanza as a :class:`Package`, or None when it is malformed."""
    fields = _fields(paragraph)
    if fields is None:
        return None
    name, status = fields.get("package", ""), fields.get("status", "").split()
    architecture = fields.get("architecture", "")
    if not _NAME.match(name) or len(status) != 3:
        return None
    if architecture and not _ARCH.match(architecture):
        return None
    source, _, source_version = fields.get("source", name).partition(" ")
    return Package(
        name=name,
        architecture=architecture,
        version=fields.get("version", ""),
        status=" ".join(status),
        multi_arch=fields.get("multi-arch", "no"),
        source=source,
        source_version=source_version.strip("()") or fields.get("version", ""),
        conffiles=tuple(_conffiles(fields.get("conffiles", ""))),
    )


def _fields(paragraph: str) -> dict[str, str] | None:
    """The fields Yoroi uses (lower-cased names); continuation lines kept only for Conffiles."""
    fields: dict[str, str] = {}
    current = None
    for line in paragraph.split("\n"):
        if not line:
            continue
        if line[0] in " \t":
            if current is None:
                return None
            if current in fields:
                fields[current] += "\n" + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or " " in name:
            return None
        current = name.lower()
        if current in _WANTED:
            fields[current] = value.strip()
    return fields


def _conffiles(text: str) -> Iterator[Conffile]:
    for line in text.split("\n"):
        words = line.split(" ")
        flags = set()
        while len(words) > 2 and words[-1] in _CONFFILE_FLAGS:
            flags.add(words.pop())
        if len(words) >= 2 and words[0].startswith("/"):
            yield Conffile(
                path=" ".join(words[:-1]),
                md5=words[-1],
                obsolete="obsolete" in flags,
                remove_on_upgrade="remove-on-upgrade" in flags,
            )
