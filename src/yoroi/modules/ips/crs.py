"""Which rule files an engine loads, in which order: the engine base, the CRS, our patches.

A :class:`RuleSet` only names files; :class:`~yoroi.modules.ips.engine.Engine` parses them
(once). The default is Debian's ``modsecurity-crs`` package (OWASP CRS 3.3.4) with Yoroi's
engine configuration and virtual-patch pack from the package data. ``install_crs`` puts a
newer CRS release under the state directory after proving that it loads.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from yoroi.errors import ConfigError

DEBIAN_CRS = Path("/usr/share/modsecurity-crs")

# The IP-reputation file needs GeoIP (@geoLookup), which the libmodsecurity wheel is built
# without; the features it carries (country blocking, Project Honey Pot lookups) are off by
# default in the CRS and need site-specific keys anyway.
SKIPPED_CRS_FILES = frozenset({"REQUEST-910-IP-REPUTATION.conf"})

CRS_INSTALL_DIR = "ips/crs"


def data_dir() -> Path:
    """Yoroi's IPS package data: engine config, CRS setup, virtual patches."""
    return Path(str(resources.files("yoroi") / "data" / "ips"))


@dataclass(frozen=True)
class RuleSet:
    """The rule files of an engine, in load order (engine, CRS setup, patches, CRS rules,
    body checks)."""

    engine_config: Path
    crs_setup: Path
    crs_rules: tuple[Path, ...]
    patches: tuple[Path, ...] = ()
    body_checks: Path | None = None

    @classmethod
    def default(cls, state_dir: Path | None = None) -> RuleSet:
        """An installed newer CRS (under ``state_dir``) if any, else Debian's CRS 3.3.4."""
        installed = state_dir / CRS_INSTALL_DIR / "current" if state_dir else None
        crs = installed if installed is not None and installed.is_dir() else DEBIAN_CRS
        return cls.from_crs(crs)

    @classmethod
    def from_crs(cls, crs_dir: Path, patches_dir: Path | None = None) -> RuleSet:
        """The CRS in ``crs_dir`` (a release directory, or its ``rules`` folder)."""
        rules_dir = crs_dir / "rules" if (crs_dir / "rules").is_dir() else crs_dir
        rules = tuple(
            p for p in sorted(rules_dir.glob("*.conf")) if p.name not in SKIPPED_CRS_FILES
        )
        if not any(p.name.startswith("REQUEST-901") for p in rules):
            raise ConfigError(
                f"{crs_dir}: no OWASP CRS rules found (expected rules/REQUEST-901-*.conf); "
                "install Debian's modsecurity-crs or name a CRS release directory"
            )
        base = data_dir()
        return cls(
            engine_config=base / "modsecurity.conf",
            crs_setup=base / "crs-setup.conf",
            crs_rules=rules,
            patches=patch_files(patches_dir or base / "patches"),
            body_checks=base / "body-checks.conf",
        )

    def files(self) -> tuple[Path, ...]:
        """Every file, in the order the engine loads them."""
        last = (self.body_checks,) if self.body_checks else ()
        return (self.engine_config, self.crs_setup, *self.patches, *self.crs_rules, *last)


def patch_files(directory: Path) -> tuple[Path, ...]:
    """Every ``*.conf`` of a virtual-patch directory (none if it does not exist)."""
    return tuple(sorted(directory.glob("*.conf"))) if directory.is_dir() else ()


def install_crs(source: Path, state_dir: Path, validate: Callable[[RuleSet], object]) -> Path:
    """Install a CRS release (directory or tarball) under ``state_dir`` once it loads.

    ``validate`` builds a fresh engine on the candidate rule set and raises if ModSecurity
    refuses it; only then does ``current`` switch to the new release (an atomic rename).
    """
    root = state_dir / CRS_INSTALL_DIR
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=root))
    try:
        release = _unpack(source, staging)
        validate(RuleSet.from_crs(release))
        target = root / f"release-{staging.name.removeprefix('staging-')}"
        release.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    link = root / "current.new"
    link.unlink(missing_ok=True)
    link.symlink_to(target.name)
    link.replace(root / "current")
    return target


def _unpack(source: Path, staging: Path) -> Path:
    if source.is_dir():
        return Path(shutil.copytree(source, staging / "release", symlinks=False))
    if not tarfile.is_tarfile(source):
        raise ConfigError(f"{source}: neither a CRS release directory nor a tarball")
    with tarfile.open(source) as archive:
        archive.extractall(staging / "unpacked", filter="data")
    found = sorted((staging / "unpacked").glob("**/rules/REQUEST-901-*.conf"))
    if not found:
        raise ConfigError(f"{source}: no rules/REQUEST-901-*.conf inside; not a CRS release")
    return found[0].parent.parent
