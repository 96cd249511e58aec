"""The virtual-patch metadata: strict loading with file/line errors, version ordering per
ecosystem, and which patches a server needs from its installed packages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from yoroi.errors import ConfigError
from yoroi.modules.ips.patches import (
    FIRST_RULE_ID,
    LAST_RULE_ID,
    Ecosystem,
    compare_debian,
    compare_versions,
    load_patch,
    load_patches,
    pack_directory,
    recommend,
)

REQUIRED_CVES = {"CVE-2017-5638", "CVE-2017-9805", "CVE-2017-1001000", "CVE-2018-7600",
                 "CVE-2014-6271", "CVE-2021-44228", "CVE-2022-22965", "CVE-2022-26134"}

GOOD = """\
cve: CVE-2099-0001
title: Example flaw
product: Example
severity: {cvss_version: "3.1", score: 5.3}
affected:
  - ecosystem: pypi
    name: Example_Package
    ranges: [{introduced: "1.0", fixed: "1.4.2"}, {introduced: "2.0rc1", last_affected: "2.1"}]
references: [https://example.org/advisory]
rules: [{id: 4849990, phase: 1, description: the example rule}]
false_positives: none known
"""
GOOD_CONF = """\
# Yoroi virtual patch: CVE-2099-0001
SecRule ARGS "@rx x" "id:4849990,phase:1,deny,tag:'CVE-2099-0001'"
"""


def write_patch(folder: Path, yaml_text: str = GOOD, conf: str = GOOD_CONF,
                name: str = "CVE-2099-0001") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.conf").write_text(conf)
    path = folder / f"{name}.yaml"
    path.write_text(yaml_text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_patch(path)
    return str(caught.value)


# --- the shipped pack --------------------------------------------------------------------

def test_the_shipped_pack_loads_and_covers_the_required_cves() -> None:
    patches = load_patches()
    assert {p.cve for p in patches} >= REQUIRED_CVES
    log4shell = next(p for p in patches if p.cve == "CVE-2021-44228")
    assert "CVE-2021-45046" in log4shell.cves
    for patch in patches:
        assert patch.rules_file.is_file() and patch.rules_file.parent == pack_directory()
        assert all(FIRST_RULE_ID <= i <= LAST_RULE_ID for i in patch.rule_ids)
        assert patch.meta.references and patch.meta.false_positives
        assert patch.meta.severity.rating in {"high", "critical"}


def test_rule_ids_are_unique_across_the_pack() -> None:
    ids = [i for p in load_patches() for i in p.rule_ids]
    assert len(ids) == len(set(ids))


def test_ids_stay_clear_of_the_crs() -> None:
    crs = Path("/usr/share/modsecurity-crs/rules")
    if not crs.is_dir():
        pytest.skip("Debian's modsecurity-crs is not installed")
    text = " ".join(p.read_text(errors="replace") for p in crs.glob("*.conf"))
    ours = {i for p in load_patches() for i in p.rule_ids}
    assert not any(f"id:{i}" in text for i in ours)


# --- validation --------------------------------------------------------------------------

def test_a_good_sidecar_loads(tmp_path: Path) -> None:
    patch = load_patch(write_patch(tmp_path))
    assert patch.cve == "CVE-2099-0001" and patch.rule_ids == (4849990,)
    assert patch.meta.affected[0].ecosystem is Ecosystem.PYPI
    assert patch.meta.severity.rating == "medium"


def test_unknown_key_is_refused_with_file_and_line(tmp_path: Path) -> None:
    path = write_patch(tmp_path, GOOD.replace("product: Example", "product: Example\nvendor: X"))
    message = error_of(path)
    assert f"{path}:4: vendor: unknown key" in message
    assert "expected one of" in message and "false_positives" in message


def test_unknown_key_in_a_range_is_refused(tmp_path: Path) -> None:
    path = write_patch(tmp_path, GOOD.replace('fixed: "1.4.2"', 'fixd: "1.4.2"'))
    assert f"{path}:8: affected[0].ranges[0].fixd: unknown key" in error_of(path)


@pytest.mark.parametrize(("change", "expected"), [
    (("score: 5.3", "score: 11"), "severity.score: Input should be less than or equal to 10"),
    (("cve: CVE-2099-0001", "cve: CVE-99-1"), "cve: String should match pattern"),
    (("ecosystem: pypi", "ecosystem: cargo"), "affected[0].ecosystem: Input should be"),
    (("id: 4849990", "id: 942100"), "rules[0].id: Input should be greater than or equal"),
    (("references: [https://example.org/advisory]", "references: [not a url]"),
     "references[0]: String should match pattern"),
    (("false_positives: none known\n", ""), "false_positives: required key is missing"),
])
def test_bad_values_are_named(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    path = write_patch(tmp_path, GOOD.replace(*change))
    assert expected in error_of(path)


def test_a_range_needs_an_end_and_cannot_have_two(tmp_path: Path) -> None:
    two = write_patch(tmp_path / "a", GOOD.replace('fixed: "1.4.2"',
                                                   'fixed: "1.4.2", last_affected: "1.4.1"'))
    assert "either fixed or last_affected" in error_of(two)
    empty = write_patch(tmp_path / "b", GOOD.replace('{introduced: "1.0", fixed: "1.4.2"}', "{}"))
    assert "at least one of introduced" in error_of(empty)


def test_an_inverted_or_malformed_range_is_refused_with_its_line(tmp_path: Path) -> None:
    inverted = write_patch(tmp_path / "a", GOOD.replace('introduced: "1.0"', 'introduced: "1.5"'))
    assert f"{inverted}:8: affected[0].ranges[0]: introduced 1.5 comes after 1.4.2" \
        in error_of(inverted)
    debian = GOOD.replace("ecosystem: pypi", "ecosystem: debian").replace('"1.0"', '"not-1"')
    assert "is not a Debian version" in error_of(write_patch(tmp_path / "b", debian))


def test_file_name_must_match_the_cve(tmp_path: Path) -> None:
    path = write_patch(tmp_path, name="CVE-2099-0002")
    assert "does not match the file name CVE-2099-0002.yaml" in error_of(path)


def test_rule_ids_must_match_the_rule_file(tmp_path: Path) -> None:
    path = write_patch(tmp_path, conf=GOOD_CONF.replace("id:4849990", "id:4849991"))
    assert "do not match the ids in CVE-2099-0001.conf" in error_of(path)


def test_rule_file_must_open_with_its_comment_block_and_tag_the_cve(tmp_path: Path) -> None:
    headless = write_patch(tmp_path / "a", conf=GOOD_CONF.split("\n", 1)[1])
    assert "must open with the comment block" in error_of(headless)
    untagged = write_patch(tmp_path / "b", conf=GOOD_CONF.replace("tag:'CVE-2099-0001'", ""))
    assert "carry no tag:'CVE-2099-0001'" in error_of(untagged)


def test_missing_rule_file_is_named(tmp_path: Path) -> None:
    path = write_patch(tmp_path)
    path.with_suffix(".conf").unlink()
    assert "cannot read the patch's rules" in error_of(path)


def test_the_pack_refuses_duplicate_ids_and_rule_files_without_metadata(tmp_path: Path) -> None:
    write_patch(tmp_path)
    other = GOOD.replace("CVE-2099-0001", "CVE-2099-0002")
    write_patch(tmp_path, other, GOOD_CONF.replace("CVE-2099-0001", "CVE-2099-0002"),
                name="CVE-2099-0002")
    with pytest.raises(ConfigError, match="rule id 4849990 is also used by CVE-2099-0001"):
        load_patches(tmp_path)
    shutil.rmtree(tmp_path)
    write_patch(tmp_path)
    (tmp_path / "CVE-2099-0003.conf").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no metadata; add CVE-2099-0003.yaml"):
        load_patches(tmp_path)


# --- versions ----------------------------------------------------------------------------

DEBIAN_PAIRS = [
    ("1.0", "1.0"), ("1.0", "1.0-1"), ("1.0~rc1", "1.0"), ("1.0~rc1-1", "1.0-1"),
    ("1:0.9", "2.0"), ("4.2+dfsg-0.1+deb7u1", "4.2+dfsg-0.1+deb7u3"), ("4.2", "4.2+dfsg-0.1"),
    ("2.15.0-1~deb11u1", "2.16.0-1~deb10u1"), ("2.16.0-1~deb11u1", "2.16.0-1~deb10u1"),
    ("2.16.0-1", "2.16.0-1~deb11u1"), ("1.2.3a", "1.2.3"), ("1.2.3", "1.2.3.0"),
    ("7.52-2+deb9u3", "7.52-2+deb9u10"), ("1.01", "1.1"), ("1.0-1", "1.0-1.1"),
    ("0:1.0", "1.0"), ("1.0+b1", "1.0"), ("1.0a", "1.0+"), ("5.2.15-2", "5.2.15-2+b2"),
]


@pytest.mark.parametrize(("a", "b"), DEBIAN_PAIRS)
def test_debian_order_agrees_with_dpkg(a: str, b: str) -> None:
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        pytest.skip("dpkg is not installed")
    for op, holds in (("lt", compare_debian(a, b) < 0), ("eq", compare_debian(a, b) == 0),
                      ("gt", compare_debian(a, b) > 0)):
        truth = subprocess.run([dpkg, "--compare-versions", a, op, b], check=False).returncode
        assert holds == (truth == 0), f"{a} {op} {b}"


@pytest.mark.parametrize(("ecosystem", "lower", "higher"), [
    ("maven", "2.0-beta9", "2.0"), ("maven", "2.0-beta9", "2.0-rc1"),
    ("maven", "2.0-beta9", "2.0-beta10"), ("maven", "2.3.31", "2.3.32"),
    ("maven", "2.5.10", "2.5.10.1"), ("maven", "2.12.1", "2.12.2"), ("maven", "2.9", "2.10"),
    ("maven", "5.3.17", "5.3.18.RELEASE"), ("maven", "1.0-SNAPSHOT", "1.0"),
    ("maven", "1.0", "1.0-sp1"), ("maven", "1.0-sp1", "1.0.1"),
    ("pypi", "1.0rc1", "1.0"), ("pypi", "1.0", "1.0.post1"), ("pypi", "1.9", "1.10"),
    ("pypi", "2.0", "1!0.1"),
    ("wordpress", "4.7.1", "4.7.2"), ("wordpress", "4.7", "4.7.1"),
    ("wordpress", "4.7-RC1", "4.7"), ("packagist", "8.5.0", "8.5.1"),
])
def test_ecosystem_version_order(ecosystem: str, lower: str, higher: str) -> None:
    assert compare_versions(ecosystem, lower, higher) < 0
    assert compare_versions(ecosystem, higher, lower) > 0
    assert compare_versions(ecosystem, lower, lower) == 0


@pytest.mark.parametrize(("ecosystem", "a", "b"), [
    ("maven", "1.0", "1.0.0"), ("maven", "5.3.18", "5.3.18.RELEASE"), ("maven", "2.0", "2.0-ga"),
    ("pypi", "1.0", "1.0.0"), ("wordpress", "4.7", "4.7.0"),
])
def test_equal_spellings(ecosystem: str, a: str, b: str) -> None:
    assert compare_versions(ecosystem, a, b) == 0


@given(st.text(max_size=30), st.text(max_size=30))
def test_comparing_untrusted_versions_raises_only_value_error(a: str, b: str) -> None:
    for ecosystem in Ecosystem:
        try:
            compare_versions(ecosystem, a, b)
        except ValueError:
            pass


# --- recommendation ----------------------------------------------------------------------

def recommended(installed: dict[str, dict[str, str]]) -> set[str]:
    return {p.cve for p in recommend(installed)}


def test_vulnerable_struts_needs_the_struts_patch() -> None:
    assert recommended({"maven": {"org.apache.struts:struts2-core": "2.3.31"}}) \
        == {"CVE-2017-5638"}
    assert recommended({"maven": {"org.apache.struts:struts2-core": "2.5.10"}}) \
        == {"CVE-2017-5638"}


def test_patched_versions_need_nothing() -> None:
    installed = {
        "maven": {"org.apache.struts:struts2-core": "2.5.10.1",
                  "org.apache.struts:struts2-rest-plugin": "2.5.13",
                  "org.apache.logging.log4j:log4j-core": "2.17.1",
                  "org.springframework:spring-beans": "5.3.18",
                  "com.atlassian.confluence:confluence": "7.18.1"},
        "debian": {"bash": "5.2.15-2+b2", "liblog4j2-java": "2.17.1-1~deb11u1"},
        "wordpress": {"wordpress": "6.5.2"},
        "packagist": {"drupal/core": "8.5.1"},
    }
    assert recommended(installed) == set()


def test_log4j_ranges_include_the_betas_and_exclude_the_java_7_fix() -> None:
    log4j = "org.apache.logging.log4j:log4j-core"
    assert recommended({"maven": {log4j: "2.0-beta9"}}) == {"CVE-2021-44228"}
    assert recommended({"maven": {log4j: "2.15.0"}}) == {"CVE-2021-44228"}  # CVE-2021-45046
    assert recommended({"maven": {log4j: "2.12.2"}}) == set()
    assert recommended({"maven": {log4j: "2.0-beta8"}}) == set()


def test_debian_server_with_old_bash_and_log4j() -> None:
    installed = {"debian": {"bash": "4.2+dfsg-0.1+deb7u1", "liblog4j2-java": "2.15.0-1~deb11u1",
                            "openssl": "3.0.11-1~deb12u2"}}
    assert recommended(installed) == {"CVE-2014-6271", "CVE-2021-44228"}
    patch = next(p for p in recommend(installed) if p.cve == "CVE-2014-6271")
    assert patch.needed_by(installed) == ["debian bash 4.2+dfsg-0.1+deb7u1"]


def test_wordpress_4_7_1_needs_the_rest_api_patch_and_4_6_does_not() -> None:
    assert recommended({"wordpress": {"WordPress": "4.7.1"}}) == {"CVE-2017-1001000"}
    assert recommended({"wordpress": {"wordpress": "4.6.1"}}) == set()


def test_drupal_and_spring_and_confluence() -> None:
    assert recommended({"packagist": {"drupal/drupal": "7.57"}}) == {"CVE-2018-7600"}
    assert recommended({"maven": {"org.springframework:spring-webmvc": "5.2.19.RELEASE"}}) \
        == {"CVE-2022-22965"}
    assert recommended({"maven": {"com.atlassian.confluence:confluence": "7.10.0"}}) \
        == {"CVE-2022-26134"}


def test_pypi_names_are_normalised_and_last_affected_is_inclusive(tmp_path: Path) -> None:
    pack = load_patches(write_patch(tmp_path).parent)
    def needs(version: str) -> bool:
        return bool(recommend({"pypi": {"example-package": version}}, pack))
    assert needs("1.4.1") and not needs("1.4.2") and not needs("0.9")
    assert needs("2.0rc1") and needs("2.1") and not needs("2.1.1")
    assert recommend({"pypi": {"EXAMPLE.package": "1.2"}}, pack) == pack
    assert recommend({"debian": {"example-package": "1.2"}}, pack) == []


def test_unknown_ecosystems_are_ignored() -> None:
    assert recommended({"npm": {"left-pad": "1.0.0"}}) == set()
