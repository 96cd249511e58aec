"""The agent's policy: one YAML document with an ``agent`` section and one section per module.

Example (every key optional; the defaults are safe)::

    agent:
      name: web-01
      events:
        sinks:
          - {type: jsonl, path: /var/log/yoroi/events.jsonl}
          - {type: syslog, host: siem.example.org, port: 6514, protocol: tls, format: cef}
      responder:
        kill_processes: true
        never_ban: [192.0.2.10/32]
    antimalware:
      enabled: true

Unknown keys are errors; every error names file, line and key (see :mod:`yoroi.yamldoc`).
Each module declares the model of its own section (``Module.policy_type``); the loader finds
it through the module registry, so this file never changes when a module is added.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    field_validator,
)

from yoroi.errors import ConfigError
from yoroi.events.config import SinkSpec
from yoroi.units import parse_duration, parse_size
from yoroi.yamldoc import YamlDocument, parse_yaml, read_yaml, validate

AGENT_SECTION = "agent"
P = TypeVar("P", bound=BaseModel)


def _absolute(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is not an absolute path")
    return path


# Field types policies share: sizes ("64M"), durations ("1h"), absolute paths.
Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
AbsolutePath = Annotated[str, AfterValidator(_absolute)]


class StrictModel(BaseModel):
    """Immutable, unknown keys rejected: the base of every policy model."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModulePolicy(StrictModel):
    """Base of every module's policy section."""

    enabled: bool = Field(False, description="Run this protection module.")


class NotBuiltPolicy(ModulePolicy):
    """The section of a module that this version of Yoroi does not have yet."""

    @field_validator("enabled")
    @classmethod
    def _cannot_enable(cls, value: bool) -> bool:
        if value:
            raise ValueError("this module is not part of this Yoroi version yet; set it false")
        return value


class EventSettings(StrictModel):
    """Where events go. With no ``sinks`` key: a JSON-lines file in the state directory."""

    sinks: tuple[SinkSpec, ...] | None = Field(
        None, description="Event sinks; default: jsonl at <state>/events.jsonl"
    )


class ResponderSettings(StrictModel):
    """What the responder may do when a module asks for an action."""

    kill_processes: bool = Field(True, description="Allow stopping and killing process trees.")
    quarantine_files: bool = Field(True, description="Allow moving files to quarantine.")
    ban_addresses: bool = Field(True, description="Allow timed firewall bans.")
    run_scripts: bool = Field(False, description="Allow running response scripts.")
    script_dir: Path | None = Field(
        None, description="Only scripts in this directory run; default <config>/scripts."
    )
    script_timeout: float = Field(30.0, gt=0, le=3600, description="Seconds before a script dies.")
    never_ban: tuple[IPvAnyNetwork, ...] = Field(
        (), description="Networks never banned, besides loopback and the manager's address."
    )
    protected_executables: tuple[str, ...] = Field(
        (), description="Executables never stopped or killed, besides pid 1 and the agent."
    )

    def is_protected_address(self, address: str) -> bool:
        """True for loopback and the ``never_ban`` networks (and for unparsable input)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return True
        return ip.is_loopback or any(ip in net for net in self.never_ban)


class RestartSettings(StrictModel):
    """How a crashed module is restarted: exponential back-off between the two delays."""

    initial_delay: float = Field(1.0, gt=0, le=3600)
    max_delay: float = Field(60.0, gt=0, le=86400)
    stop_timeout: float = Field(10.0, gt=0, le=600, description="Seconds a module has to stop.")


class AgentSettings(StrictModel):
    """The ``agent`` section."""

    name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=253)
    events: EventSettings = EventSettings()
    responder: ResponderSettings = ResponderSettings()
    restart: RestartSettings = RestartSettings()
    status_interval: float = Field(
        60.0, ge=0, description="Seconds between status lines in the foreground; 0 = never."
    )


@dataclass(frozen=True)
class Policy:
    """A validated policy: the agent's settings and every known module's section."""

    agent: AgentSettings
    modules: Mapping[str, ModulePolicy]
    source: str

    def enabled_modules(self) -> list[str]:
        """Names of the modules this policy turns on, in registry order."""
        return [name for name, section in self.modules.items() if section.enabled]

    @property
    def fingerprint(self) -> str:
        """A stable digest of the effective policy (what the manager compares)."""
        doc = {"agent": self.agent.model_dump(mode="json")}
        doc.update({k: v.model_dump(mode="json") for k, v in sorted(self.modules.items())})
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def load_policy(path: Path, sections: Mapping[str, type[ModulePolicy]]) -> Policy:
    """Read and validate a policy file; ``sections`` maps module names to their models."""
    return build_policy(read_yaml(path), sections)


def parse_policy(text: str, sections: Mapping[str, type[ModulePolicy]], source: str) -> Policy:
    """Validate a policy given as text (``source`` names it in messages)."""
    return build_policy(parse_yaml(text, source), sections)


def build_policy(doc: YamlDocument, sections: Mapping[str, type[ModulePolicy]]) -> Policy:
    """Validate every section, collecting all problems before raising one ConfigError."""
    data = _top_mapping(doc)
    problems: list[str] = []
    for key in data:
        if key != AGENT_SECTION and key not in sections:
            known = ", ".join([AGENT_SECTION, *sections])
            where = doc.where((key,))
            problems.append(f"{where}: {key}: unknown section; expected one of: {known}")
    agent = _section(doc, AgentSettings, data, AGENT_SECTION, problems)
    modules = {n: _section(doc, m, data, n, problems) for n, m in sections.items()}
    if problems or agent is None:
        raise ConfigError(f"{doc.source}: invalid policy", problems)
    return Policy(agent=agent, modules=_present(modules), source=doc.source)


def _top_mapping(doc: YamlDocument) -> dict[str, Any]:
    if doc.data is None:
        return {}
    if not isinstance(doc.data, dict):
        raise ConfigError(f"{doc.where(())}: the policy must be a mapping of sections")
    return {str(k): v for k, v in doc.data.items()}


def _section(
    doc: YamlDocument, model: type[P], data: dict[str, Any], name: str, problems: list[str]
) -> P | None:
    try:
        return validate(doc, model, data.get(name), prefix=(name,))
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


def _present(modules: dict[str, ModulePolicy | None]) -> dict[str, ModulePolicy]:
    return {name: section for name, section in modules.items() if section is not None}
