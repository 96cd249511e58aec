"""Running one module in the foreground, as ``clamscan`` stands beside ``clamd``.

``yoroi behavior run``, ``yoroi appcontrol run`` and the like build a policy with just that
module enabled, send events to the terminal (and to ``--events FILE``), and run the agent
until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
import yaml

from yoroi.agent.daemon import Agent
from yoroi.home import Home
from yoroi.modules import module_classes, policy_sections


def standalone_policy(module: str, section: dict[str, Any], events_file: Path | None,
                      as_json: bool) -> str:
    """A policy enabling only ``module``, events to stdout and optionally a file."""
    sinks: list[dict[str, Any]] = [{"type": "stdout", "format": "json" if as_json else "text"}]
    if events_file is not None:
        sinks.append({"type": "jsonl", "path": str(events_file.absolute())})
    doc = {
        "agent": {"events": {"sinks": sinks}, "status_interval": 0},
        module: {"enabled": True, **section},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def run_module(home: Home, module: str, section: dict[str, Any], events_file: Path | None,
               as_json: bool) -> int:
    """Run the agent with only ``module``; returns the exit status."""
    classes = module_classes()
    text = standalone_policy(module, section, events_file, as_json)
    agent = Agent(home, classes, policy_sections(classes), policy_text=text, say=_say)
    return asyncio.run(agent.run())


def _say(message: str) -> None:
    click.echo(f"yoroi: {message}", err=True)
