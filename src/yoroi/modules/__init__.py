"""The protection modules: the built-in set is listed here, and only here.

Third-party modules come in through the ``yoroi.modules`` entry-point group; each entry point
names a class implementing :class:`yoroi.agent.module.Module`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import cast

from yoroi.agent.module import Module
from yoroi.config import ModulePolicy, NotBuiltPolicy
from yoroi.errors import ModuleError

ENTRY_POINT_GROUP = "yoroi.modules"


@dataclass(frozen=True)
class ModuleInfo:
    """A protection layer of the design, built or not yet."""

    name: str
    title: str
    commands: tuple[str, ...]
    issue: int | None = None


CATALOG: tuple[ModuleInfo, ...] = (
    ModuleInfo("antimalware", "Anti-malware scanning and quarantine", ("scan", "quarantine"), 3),
    ModuleInfo("behavior", "Behaviour monitoring and ransomware rollback", ("behavior",), 4),
    ModuleInfo("ips", "Intrusion prevention (virtual patching)", ("ips",), 5),
    ModuleInfo("integrity", "Integrity monitoring", ("integrity",), 6),
    ModuleInfo("appcontrol", "Application control (allowlisting)", ("appcontrol",), 7),
    ModuleInfo("firewall", "Host firewall", ("firewall",), 8),
    ModuleInfo("loginspect", "Log inspection", ("logs",), 9),
    ModuleInfo("webreputation", "Web reputation", ()),
)


def default_modules() -> dict[str, type[Module]]:
    """The built-in modules of this version, by policy-section name (imported on demand)."""
    from yoroi.modules.antimalware.module import AntimalwareModule
    from yoroi.modules.behavior.module import BehaviorModule
    from yoroi.modules.integrity.module import IntegrityModule
    from yoroi.modules.ips.module import IpsModule

    return {"antimalware": AntimalwareModule, "behavior": BehaviorModule, "ips": IpsModule,
            "integrity": IntegrityModule}


def module_classes() -> dict[str, type[Module]]:
    """Built-in modules plus those installed through entry points."""
    classes = default_modules()
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = entry.load()
        except Exception as exc:  # a broken plug-in must not stop the agent
            raise ModuleError(f"module plug-in {entry.value!r} failed to load: {exc}") from exc
        name = getattr(cls, "name", None)
        if not isinstance(cls, type) or not isinstance(name, str):
            raise ModuleError(f"module plug-in {entry.value!r} is not a Module class")
        classes.setdefault(name, cast("type[Module]", cls))
    return classes


def policy_sections(classes: Mapping[str, type[Module]]) -> dict[str, type[ModulePolicy]]:
    """The policy model of every module: built ones their own, the rest 'not built yet'."""
    sections: dict[str, type[ModulePolicy]] = {
        info.name: NotBuiltPolicy for info in CATALOG
    }
    sections.update({name: cls.policy_type for name, cls in classes.items()})
    return sections


def info(name: str) -> ModuleInfo | None:
    """The catalogue entry of a module, if the design names it."""
    return next((i for i in CATALOG if i.name == name), None)
