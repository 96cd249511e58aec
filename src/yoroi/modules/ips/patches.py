"""Yoroi's virtual-patch pack: one ModSecurity rule file per CVE and its metadata.

Each patch is a pair in ``data/ips/patches``: ``CVE-XXXX-YYYY.conf`` (the rules, opening with
a comment block) and ``CVE-XXXX-YYYY.yaml`` (what a recommendation scan reads)::

    cve: CVE-2017-5638
    title: Struts 2 Jakarta multipart parser evaluates OGNL ...
    product: Apache Struts 2
    severity: {cvss_version: "3.0", score: 10.0, vector: "CVSS:3.0/AV:N/..."}
    affected:
      - ecosystem: maven            # debian | maven | pypi | wordpress | packagist
        name: org.apache.struts:struts2-core
        ranges: [{introduced: "2.3.5", fixed: "2.3.32"}, {introduced: "2.5", fixed: "2.5.10.1"}]
    references: [https://nvd.nist.gov/vuln/detail/CVE-2017-5638]
    rules: [{id: 4800201, phase: 1, description: OGNL expression in Content-Type}]
    false_positives: None known ...

Unknown keys are errors, and every error names the file and line. :func:`recommend` tells
which patches a server needs from the packages it has installed, comparing versions the way
each ecosystem does (dpkg for Debian, PEP 440 for PyPI, Maven's ordering for the others).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from yoroi.errors import ConfigError
from yoroi.yamldoc import YamlDocument, read_yaml, validate

# Yoroi's rule-id range: 4,200,000-8,999,999 is unreserved in the ModSecurity registry (CRS
# holds 900,000-999,999 and 9,000,000-9,999,999, CRS plugins 9,500,000-9,999,999).
FIRST_RULE_ID = 4_800_000
LAST_RULE_ID = 4_849_999

CveId = Annotated[str, StringConstraints(pattern=r"^CVE-\d{4}-\d{4,}$")]
Text = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]
Url = Annotated[str, StringConstraints(pattern=r"^https?://\S+$")]
_RULE_ID = re.compile(r"\bid:(\d+)")
_DIGITS = frozenset("0123456789")


class Ecosystem(enum.StrEnum):
    """Where a package comes from, which decides how its versions compare."""

    DEBIAN = "debian"
    MAVEN = "maven"
    PYPI = "pypi"
    WORDPRESS = "wordpress"
    PACKAGIST = "packagist"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VersionRange(_Strict):
    """Affected from ``introduced`` (inclusive; none: from the first release) up to
    ``fixed`` (exclusive) or ``last_affected`` (inclusive); neither: every later version."""

    introduced: Text | None = None
    fixed: Text | None = None
    last_affected: Text | None = None

    @model_validator(mode="after")
    def _one_end(self) -> VersionRange:
        if self.fixed is not None and self.last_affected is not None:
            raise ValueError("give either fixed or last_affected, not both")
        if self.introduced is None and self.fixed is None and self.last_affected is None:
            raise ValueError("give at least one of introduced, fixed, last_affected")
        return self

    def contains(self, ecosystem: Ecosystem, version: str) -> bool:
        """Whether ``version`` falls in this range."""
        def cmp(other: str) -> int:
            return compare_versions(ecosystem, version, other)
        if self.introduced is not None and cmp(self.introduced) < 0:
            return False
        if self.fixed is not None:
            return cmp(self.fixed) < 0
        return self.last_affected is None or cmp(self.last_affected) <= 0


class AffectedPackage(_Strict):
    """One package, in one ecosystem, with the version ranges the CVE affects."""

    ecosystem: Ecosystem
    name: Text
    ranges: list[VersionRange] = Field(min_length=1)
    note: Text | None = None

    def affects(self, version: str) -> bool:
        """Whether the installed ``version`` is in one of the ranges."""
        return any(r.contains(self.ecosystem, version) for r in self.ranges)


class Severity(_Strict):
    """The CVSS base score (of the worst CVE the patch covers) and its vector."""

    cvss_version: Literal["2.0", "3.0", "3.1", "4.0"]
    score: float = Field(ge=0.0, le=10.0)
    vector: Text | None = None

    @property
    def rating(self) -> str:
        """The qualitative rating of CVSS v3: none, low, medium, high, critical."""
        for floor, name in ((9.0, "critical"), (7.0, "high"), (4.0, "medium"), (0.1, "low")):
            if self.score >= floor:
                return name
        return "none"


class RuleInfo(_Strict):
    """One rule of the patch: its id, ModSecurity phase and what it looks for."""

    id: int = Field(ge=FIRST_RULE_ID, le=LAST_RULE_ID)
    phase: Literal[1, 2]
    description: Text


class PatchMetadata(_Strict):
    """The machine-readable sidecar of one virtual patch."""

    cve: CveId
    related_cves: list[CveId] = []
    aliases: list[Text] = []
    title: Text
    product: Text
    severity: Severity
    affected: list[AffectedPackage] = Field(min_length=1)
    references: list[Url] = Field(min_length=1)
    rules: list[RuleInfo] = Field(min_length=1)
    body_processors: list[Literal["urlencoded", "multipart", "json", "xml"]] = []
    false_positives: Text


@dataclass(frozen=True)
class Patch:
    """A virtual patch: its metadata and the rule file the engine loads."""

    meta: PatchMetadata
    rules_file: Path
    metadata_file: Path

    @property
    def cve(self) -> str:
        """The CVE the patch is named after."""
        return self.meta.cve

    @property
    def cves(self) -> tuple[str, ...]:
        """Every CVE the patch covers."""
        return (self.meta.cve, *self.meta.related_cves)

    @property
    def rule_ids(self) -> tuple[int, ...]:
        """The ids of the patch's rules."""
        return tuple(r.id for r in self.meta.rules)

    def needed_by(self, installed: Mapping[str, Mapping[str, str]]) -> list[str]:
        """Why a server with ``installed`` packages needs the patch ("debian bash 4.2-1"),
        or nothing if it does not."""
        reasons = []
        for package in self.meta.affected:
            version = _installed_version(installed, package.ecosystem, package.name)
            if version is not None and package.affects(version):
                reasons.append(f"{package.ecosystem} {package.name} {version}")
        return reasons


def pack_directory() -> Path:
    """The virtual-patch pack shipped with Yoroi."""
    return Path(str(resources.files("yoroi") / "data" / "ips" / "patches"))


def load_patches(directory: Path | None = None) -> list[Patch]:
    """Every patch of ``directory`` (default: Yoroi's pack), validated, in file-name order."""
    folder = directory or pack_directory()
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such virtual-patch directory")
    patches = [load_patch(path) for path in sorted(folder.glob("*.yaml"))]
    _check_pack(folder, patches)
    return patches


def load_patch(path: Path) -> Patch:
    """One patch from its sidecar ``path``; the rule file is the ``.conf`` beside it."""
    doc = read_yaml(path)
    meta = validate(doc, PatchMetadata, doc.data)
    _check_versions(doc, meta)
    if path.stem != meta.cve:
        raise ConfigError(f"{doc.where(('cve',))}: cve: {meta.cve} does not match the file "
                          f"name {path.name}; name the file {meta.cve}.yaml")
    rules_file = path.with_suffix(".conf")
    _check_rules_file(doc, meta, rules_file)
    return Patch(meta=meta, rules_file=rules_file, metadata_file=path)


def recommend(installed: Mapping[str, Mapping[str, str]],
              patches: Iterable[Patch] | None = None) -> list[Patch]:
    """The patches a server needs, given its installed packages.

    ``installed`` maps an ecosystem (``"debian"``, ``"maven"``, ``"pypi"``, ``"wordpress"``,
    ``"packagist"``) to package names and their installed versions, e.g.
    ``{"debian": {"bash": "4.2+dfsg-0.1+deb7u1"}, "maven": {"org.apache.struts:struts2-core":
    "2.3.31"}}``. Unknown ecosystems are ignored.
    """
    pack = load_patches() if patches is None else patches
    return [patch for patch in pack if patch.needed_by(installed)]


def _installed_version(installed: Mapping[str, Mapping[str, str]], ecosystem: Ecosystem,
                       name: str) -> str | None:
    packages = installed.get(ecosystem.value)
    if not packages:
        return None
    wanted = normalise_name(ecosystem, name)
    for candidate, version in packages.items():
        if normalise_name(ecosystem, candidate) == wanted:
            return version
    return None


def _check_versions(doc: YamlDocument, meta: PatchMetadata) -> None:
    problems = []
    for i, package in enumerate(meta.affected):
        for j, span in enumerate(package.ranges):
            loc = ("affected", i, "ranges", j)
            try:
                _check_range(package.ecosystem, span)
            except ValueError as exc:
                problems.append(f"{doc.where(loc)}: affected[{i}].ranges[{j}]: {exc}")
    if problems:
        raise ConfigError(f"{doc.source}: invalid", problems)


def _check_range(ecosystem: Ecosystem, span: VersionRange) -> None:
    end = span.fixed or span.last_affected
    for version in (span.introduced, end):
        if version is not None:
            compare_versions(ecosystem, version, version)  # raises ValueError if malformed
    if span.introduced is not None and end is not None:
        if compare_versions(ecosystem, span.introduced, end) > 0:
            raise ValueError(f"introduced {span.introduced} comes after {end}")


def _check_rules_file(doc: YamlDocument, meta: PatchMetadata, rules_file: Path) -> None:
    try:
        text = rules_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{rules_file}: cannot read the patch's rules: "
                          f"{exc.strerror}; put them beside {Path(doc.source).name}") from None
    if not text.startswith(f"# Yoroi virtual patch: {meta.cve}"):
        raise ConfigError(f"{rules_file}:1: must open with the comment block "
                          f"'# Yoroi virtual patch: {meta.cve} ...'")
    in_conf = [int(found) for found in _RULE_ID.findall(text)]
    if sorted(in_conf) != sorted({r.id for r in meta.rules}) or len(in_conf) != len(meta.rules):
        raise ConfigError(f"{doc.where(('rules',))}: rules: ids {sorted(r.id for r in meta.rules)}"
                          f" do not match the ids in {rules_file.name} ({sorted(in_conf)})")
    if f"tag:'{meta.cve}'" not in text:
        raise ConfigError(f"{rules_file}: the rules carry no tag:'{meta.cve}' "
                          "(events take the CVE from it)")


def _check_pack(folder: Path, patches: list[Patch]) -> None:
    seen: dict[int, str] = {}
    for patch in patches:
        for rule_id in patch.rule_ids:
            if rule_id in seen:
                raise ConfigError(f"{patch.metadata_file}: rule id {rule_id} is also used by "
                                  f"{seen[rule_id]}; give each rule its own id")
            seen[rule_id] = patch.cve
    described = {p.rules_file.name for p in patches}
    for conf in sorted(folder.glob("*.conf")):
        if conf.name not in described:
            raise ConfigError(f"{conf}: no metadata; add {conf.with_suffix('.yaml').name}")


# --- versions ----------------------------------------------------------------------------

def compare_versions(ecosystem: Ecosystem | str, a: str, b: str) -> int:
    """Negative, zero or positive as ``a`` sorts before, with or after ``b`` in
    ``ecosystem``; ValueError if either is not a version there."""
    eco = Ecosystem(ecosystem)
    if eco is Ecosystem.DEBIAN:
        return compare_debian(a, b)
    if eco is Ecosystem.PYPI:
        return _compare_pep440(a, b)
    return _sign(_generic_key(a), _generic_key(b))


def normalise_name(ecosystem: Ecosystem | str, name: str) -> str:
    """A package name as the ecosystem compares it (PEP 503 for PyPI)."""
    eco = Ecosystem(ecosystem)
    if eco is Ecosystem.PYPI:
        return re.sub(r"[-_.]+", "-", name).lower()
    return name if eco is Ecosystem.MAVEN else name.lower()


def compare_debian(a: str, b: str) -> int:
    """``dpkg --compare-versions`` ordering: epoch, then upstream, then revision."""
    (ea, ua, ra), (eb, ub, rb) = _debian_parts(a), _debian_parts(b)
    return (ea > eb) - (ea < eb) or _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


def _debian_parts(version: str) -> tuple[int, str, str]:
    text = version.strip()
    epoch, _, rest = text.partition(":") if ":" in text else ("0", "", text)
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    if not epoch.isdigit() or not upstream or not upstream[0].isdigit() \
            or not re.fullmatch(r"[A-Za-z0-9.+~:-]+", upstream) \
            or not re.fullmatch(r"[A-Za-z0-9.+~]*", revision):
        raise ValueError(f"{version!r} is not a Debian version (epoch:upstream-revision)")
    return int(epoch), upstream, revision


def _order(c: str) -> int:
    if c in _DIGITS:
        return 0
    if c.isalpha():
        return ord(c)
    return -1 if c == "~" else ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and a[i] not in _DIGITS) or (j < len(b) and b[j] not in _DIGITS):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        ni, nj = _digits_end(a, i), _digits_end(b, j)
        diff = int(a[i:ni] or "0") - int(b[j:nj] or "0")
        if diff:
            return diff
        i, j = ni, nj
    return 0


def _digits_end(text: str, start: int) -> int:
    end = start
    while end < len(text) and text[end] in _DIGITS:
        end += 1
    return end


def _compare_pep440(a: str, b: str) -> int:
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # packaging is optional: Maven's ordering agrees on plain releases
        return _sign(_generic_key(a), _generic_key(b))
    try:
        va, vb = Version(a), Version(b)
    except InvalidVersion as exc:
        raise ValueError(f"not a PEP 440 version: {exc}") from None
    return (va > vb) - (va < vb)


# Maven's ComparableVersion, simplified: numbers compare as numbers, pre-release qualifiers
# sort before the release, "sp" and unknown words after it; trailing zeros do not count.
_PRE = {"alpha": 0, "a": 0, "beta": 1, "b": 1, "milestone": 2, "m": 2, "rc": 3, "cr": 3,
        "preview": 3, "snapshot": 4, "dev": -1}
_RELEASE = frozenset({"", "ga", "final", "release"})
Key = tuple[int, int, int, str]
_RELEASE_KEY: Key = (2, 0, 0, "")


def _generic_key(version: str) -> list[Key]:
    tokens = re.findall(r"\d+|[a-z]+", version.strip().lower())
    if not version.strip() or not tokens or not re.fullmatch(r"[A-Za-z0-9.+_~-]+", version):
        raise ValueError(f"{version!r} is not a version")
    keys = [_token_key(t) for t in tokens]
    while keys and keys[-1] == _RELEASE_KEY:
        keys.pop()
    return keys


def _token_key(token: str) -> Key:
    if token.isdigit():
        return (2, int(token), 0, "")
    if token in _RELEASE:
        return _RELEASE_KEY
    if token in _PRE:
        return (1, _PRE[token], 0, "")
    return (2, 0, 1, "") if token == "sp" else (2, 0, 2, token)


def _sign(a: list[Key], b: list[Key]) -> int:
    for i in range(max(len(a), len(b))):
        ka = a[i] if i < len(a) else _RELEASE_KEY
        kb = b[i] if i < len(b) else _RELEASE_KEY
        if ka != kb:
            return -1 if ka < kb else 1
    return 0
