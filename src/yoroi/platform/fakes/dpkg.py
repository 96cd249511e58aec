"""An in-memory dpkg database for unit tests of integrity monitoring and application control.

:class:`FakeDpkgDatabase` implements :class:`~yoroi.platform.linux.dpkg.PackageDatabase` from
plain dicts, with a dict standing in for the disk::

    db = FakeDpkgDatabase.from_contents({"coreutils": {"/usr/bin/ls": b"\\x7fELF..."}})
    db.owner("/usr/bin/ls")          # ["coreutils"]
    db.verify("/usr/bin/ls")         # True
    db.disk["/usr/bin/ls"] = b"evil" # tamper
    db.verify("/usr/bin/ls")         # False
    del db.disk["/usr/bin/ls"]       # delete: still False

It knows nothing of diversions or the merged-/usr double spelling of paths: a path is owned by
exactly the packages whose file list holds it, spelled the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, MutableMapping, Sequence

from yoroi.platform.linux.dpkg import Package


def md5(content: bytes) -> str:
    """Hex MD5 of ``content``, as dpkg records it."""
    return hashlib.md5(content, usedforsecurity=False).hexdigest()


class FakeDpkgDatabase:
    """Packages, their file lists and checksums, and a fake disk, all in memory."""

    malformed = 0

    def __init__(
        self,
        packages: Iterable[Package] = (),
        *,
        files: Mapping[str, Sequence[str]] | None = None,
        md5sums: Mapping[str, Mapping[str, str]] | None = None,
        disk: MutableMapping[str, bytes] | None = None,
    ) -> None:
        self._packages = {package.key: package for package in packages}
        self._files = {key: list(paths) for key, paths in (files or {}).items()}
        self._md5sums = {key: dict(sums) for key, sums in (md5sums or {}).items()}
        self.disk: MutableMapping[str, bytes] = disk if disk is not None else {}

    @classmethod
    def from_contents(
        cls,
        contents: Mapping[str, Mapping[str, bytes]],
        *,
        versions: Mapping[str, str] | None = None,
        architecture: str = "amd64",
    ) -> FakeDpkgDatabase:
        """A database whose packages installed exactly these files, intact on the fake disk."""
        packages = [
            Package(
                name=name,
                architecture=architecture,
                version=(versions or {}).get(name, "1.0-1"),
                status="install ok installed",
                source=name,
            )
            for name in contents
        ]
        return cls(
            packages,
            files={name: list(files) for name, files in contents.items()},
            md5sums={name: {p: md5(c) for p, c in f.items()} for name, f in contents.items()},
            disk={path: content for files in contents.values() for path, content in files.items()},
        )

    def packages(self) -> dict[str, Package]:
        """Every package given, keyed by :attr:`Package.key`."""
        return dict(self._packages)

    def package(self, name: str) -> Package | None:
        """The package called ``name`` (key or bare name), or None."""
        if name in self._packages:
            return self._packages[name]
        return next((p for p in self._packages.values() if p.name == name), None)

    def files(self, package: str) -> list[str]:
        """The package's file list (empty when unknown)."""
        found = self.package(package)
        return list(self._files.get(found.key, [])) if found else []

    def md5sums(self, package: str) -> dict[str, str]:
        """Path → MD5 recorded for the package (conffiles included)."""
        found = self.package(package)
        if found is None:
            return {}
        sums = dict(self._md5sums.get(found.key, {}))
        sums.update({c.path: c.md5 for c in found.conffiles if not c.obsolete})
        return sums

    def owner(self, path: str) -> list[str]:
        """Keys of the packages whose file list holds ``path``."""
        return [key for key, paths in self._files.items() if path in paths]

    def verify(self, path: str) -> bool | None:
        """Whether ``disk[path]`` matches a recorded MD5; None when none is recorded."""
        expected = self.recorded_md5s(path)
        if not expected:
            return None
        content = self.disk.get(path)
        return content is not None and md5(content) in expected

    def recorded_md5s(self, path: str) -> frozenset[str]:
        """The MD5s recorded for ``path`` by the packages owning it."""
        found = {self.md5sums(key).get(path) for key in self.owner(path)}
        return frozenset(m for m in found if m is not None)
