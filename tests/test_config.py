"""Policy loading: defaults, and one clear message per mistake with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from yoroi.config import ModulePolicy, NotBuiltPolicy, load_policy, parse_policy
from yoroi.errors import ConfigError

SECTIONS: dict[str, type[ModulePolicy]] = {"antimalware": NotBuiltPolicy, "ips": NotBuiltPolicy}


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_policy(text, SECTIONS, "agent.yaml")
    return info.value.problems


def test_empty_policy_gives_safe_defaults() -> None:
    policy = parse_policy("", SECTIONS, "agent.yaml")
    assert policy.enabled_modules() == []
    assert policy.agent.responder.kill_processes is True
    assert policy.agent.responder.run_scripts is False
    assert policy.agent.events.sinks is None
    assert set(policy.modules) == {"antimalware", "ips"}


def test_shipped_example_policy_is_valid() -> None:
    example = Path(__file__).parents[1] / "packaging" / "agent.yaml"
    sections = dict.fromkeys(
        ("antimalware", "behavior", "ips", "integrity", "appcontrol", "firewall", "loginspect",
         "webreputation"), NotBuiltPolicy,
    )
    policy = load_policy(example, sections)
    assert policy.agent.status_interval == 60
    assert policy.enabled_modules() == []


def test_unknown_key_names_file_line_key_and_choices() -> None:
    text = "agent:\n  responder:\n    kill_process: true\n"
    [message] = problems_of(text)
    assert message.startswith("agent.yaml:3: agent.responder.kill_process: unknown key")
    assert "kill_processes" in message


def test_wrong_type_names_line_key_and_value() -> None:
    text = "agent:\n  name: web-01\n  restart:\n    max_delay: soon\n"
    [message] = problems_of(text)
    assert message.startswith("agent.yaml:4: agent.restart.max_delay:")
    assert "'soon'" in message


def test_error_inside_a_list_names_the_item() -> None:
    text = "agent:\n  responder:\n    never_ban:\n      - 10.0.0.0/8\n      - not-a-net\n"
    [message] = problems_of(text)
    assert message.startswith("agent.yaml:5: agent.responder.never_ban[1]:")


def test_all_problems_are_reported_at_once() -> None:
    text = "agent:\n  nme: x\nips:\n  enabled: true\nfirewal: {}\n"
    messages = problems_of(text)
    assert len(messages) == 3
    assert any("agent.yaml:5: firewal: unknown section" in m for m in messages)
    assert any("agent.yaml:4: ips.enabled:" in m and "not part of this" in m for m in messages)


def test_yaml_syntax_error_gives_line() -> None:
    [message] = problems_of("agent:\n  name: [unclosed\n")
    assert message.startswith("agent.yaml:")
    assert "YAML syntax error" in message


def test_duplicate_key_is_an_error() -> None:
    [message] = problems_of("agent:\n  name: a\n  name: b\n")
    assert message == "agent.yaml:3: agent.name: duplicate key (first given at line 2); keep one"


def test_top_level_must_be_a_mapping() -> None:
    [message] = problems_of("- agent\n")
    assert "must be a mapping" in message


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_policy(tmp_path / "absent.yaml", SECTIONS)
    with pytest.raises(ConfigError, match="is a directory"):
        load_policy(tmp_path, SECTIONS)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_policy(binary, SECTIONS)


def test_fingerprint_follows_content_not_formatting() -> None:
    a = parse_policy("agent: {name: x}\n", SECTIONS, "a")
    b = parse_policy("agent:\n  name: x   # same\n", SECTIONS, "b")
    c = parse_policy("agent: {name: y}\n", SECTIONS, "c")
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_protected_addresses() -> None:
    policy = parse_policy("agent: {responder: {never_ban: [192.0.2.0/24]}}", SECTIONS, "p")
    responder = policy.agent.responder
    assert responder.is_protected_address("127.0.0.1")
    assert responder.is_protected_address("::1")
    assert responder.is_protected_address("192.0.2.77")
    assert not responder.is_protected_address("198.51.100.1")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_policy_or_a_config_error(text: str) -> None:
    try:
        parse_policy(text, SECTIONS, "fuzz.yaml")
    except ConfigError as exc:
        assert all(line.startswith("fuzz.yaml") for line in exc.problems)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["agent", "name", "events", "sinks", "responder",
                                       "enabled", "restart", "ips", "type", "path", "x"]),
                      inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["agent", "ips", "antimalware", "other"]), yaml_values))
def test_any_structure_is_a_policy_or_a_config_error(doc: dict[str, object]) -> None:
    text = yaml.safe_dump(doc)
    try:
        parse_policy(text, SECTIONS, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("fuzz.yaml") for p in exc.problems)


def test_module_sections_share_sizes_durations_and_paths() -> None:
    from yoroi.modules import module_classes, policy_sections

    sections = policy_sections(module_classes())
    text = ("behavior: {enabled: true, watch: [srv]}\n"
            "antimalware: {limits: {max_member_size: 12Q}, on_access: {decision_timeout: 2h}}\n")
    with pytest.raises(ConfigError) as info:
        parse_policy(text, sections, "p.yaml")
    assert sorted(info.value.problems) == [
        "p.yaml:1: behavior.watch[0]: 'srv' is not an absolute path (got 'srv')",
        "p.yaml:2: antimalware.limits.max_member_size: '12Q' is not a size; "
        "write e.g. 512K, 64M or 2G (got '12Q')",
    ]
    good = parse_policy("antimalware: {limits: {max_member_size: 64M}, "
                        "on_access: {decision_timeout: 250ms}}", sections, "p.yaml")
    antimalware = good.modules["antimalware"]
    assert antimalware.limits.max_member_size == 64 * 1024 * 1024  # type: ignore[attr-defined]
    assert antimalware.on_access.decision_timeout == 0.25  # type: ignore[attr-defined]
