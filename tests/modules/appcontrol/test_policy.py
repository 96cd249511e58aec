"""The appcontrol policy section: defaults, rules, and errors that name file, line and key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from yoroi.errors import ConfigError
from yoroi.modules.appcontrol.policy import AppcontrolPolicy
from yoroi.modules.appcontrol.types import Mode
from yoroi.yamldoc import parse_yaml, validate


def load(text: str) -> AppcontrolPolicy:
    doc = parse_yaml(text, "agent.yaml")
    section = doc.data.get("appcontrol") if isinstance(doc.data, dict) else None
    return validate(doc, AppcontrolPolicy, section, prefix=("appcontrol",))


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text)
    return caught.value.problems


def test_defaults_are_safe() -> None:
    policy = load("appcontrol: {}\n")
    assert policy.mode is Mode.AUDIT and not policy.enabled
    assert policy.scope.paths == () and policy.scope.users == ()
    assert policy.decision_timeout == 0.25
    assert "apt" in policy.maintenance.package_managers and policy.maintenance.window is None
    assert "python3*" in policy.interpreters and policy.loader == ("ld-linux*.so*",)
    assert not policy.refuse_memfd_exec


def test_a_full_section() -> None:
    sha = "AB" * 32
    policy = load(f"""
appcontrol:
  enabled: true
  mode: enforce
  scope: {{paths: [/srv], users: [www-data, 1001]}}
  inventory_dirs: [/usr, /opt]
  rules:
    - hash: {sha}
    - path: /opt/app/bin/*
    - package: nginx
  maintenance: {{window: 30m, package_managers: [apt]}}
  decision_timeout: 100ms
""")
    assert policy.refuse_memfd_exec  # default in enforce
    rules = policy.rule_set()
    assert rules.hashes == frozenset({sha.lower()})
    assert rules.paths == ("/opt/app/bin/*",) and rules.packages == ("nginx",)
    assert policy.maintenance.window == 1800 and policy.decision_timeout == 0.1
    assert policy.scope.users == ("www-data", 1001)


def test_memfd_noexec_can_be_set_either_way() -> None:
    assert load("appcontrol: {memfd_noexec: true}\n").refuse_memfd_exec
    assert not load("appcontrol: {mode: enforce, memfd_noexec: false}\n").refuse_memfd_exec


@pytest.mark.parametrize(("text", "expected"), [
    ("appcontrol:\n  mode: block\n", "agent.yaml:2: appcontrol.mode: Input should be 'audit' or"),
    ("appcontrol:\n  rules:\n    - hash: xyz\n", "agent.yaml:3: appcontrol.rules[0].hash: 'xyz'"),
    ("appcontrol:\n  rules:\n    - {hash: '" + "a" * 64 + "', path: /x}\n",
     "appcontrol.rules[0]: a rule is exactly one of"),
    ("appcontrol:\n  rules:\n    - {glob: /x}\n", "appcontrol.rules[0].glob: unknown key"),
    ("appcontrol:\n  rules:\n    - {path: opt/x}\n", "'opt/x' is not an absolute path"),
    ("appcontrol:\n  rules:\n    - {package: Not_A_Name}\n", "is not a Debian package name"),
    ("appcontrol:\n  decision_timeout: 1h\n", "would stall every exec"),
    ("appcontrol:\n  decision_timeout: 0\n", "appcontrol.decision_timeout"),
    ("appcontrol:\n  maintenance: {window: soon}\n", "'soon' is not a duration"),
    ("appcontrol:\n  scope: {users: [-1]}\n", "-1 is not a user name or uid"),
    ("appcontrol:\n  interpreters: [/usr/bin/python3]\n", "is not a file-name glob"),
    ("appcontrol:\n  scop: {}\n", "appcontrol.scop: unknown key"),
])
def test_errors_name_line_key_and_fix(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in line for line in found), found


@given(st.dictionaries(st.sampled_from(["hash", "path", "package", "x"]),
                       st.one_of(st.text(max_size=70), st.integers(), st.none()), max_size=3))
def test_any_rule_is_accepted_or_a_config_error(rule: dict[str, object]) -> None:
    doc = parse_yaml("{}", "agent.yaml")
    try:
        policy = validate(doc, AppcontrolPolicy, {"rules": [rule]}, prefix=("appcontrol",))
    except ConfigError:
        return
    assert len(policy.rules) == 1
