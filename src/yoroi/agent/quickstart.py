"""``yoroi up``: the agent on this host in the foreground, explained as it goes."""

from __future__ import annotations

import asyncio
from typing import Any

import click
import yaml

from yoroi import __version__
from yoroi.agent.daemon import Agent
from yoroi.home import Home
from yoroi.modules import CATALOG, module_classes, policy_sections


def default_policy(home: Home, built: list[str]) -> str:
    """Every built module on with its safe defaults; events to a file and the terminal."""
    doc: dict[str, Any] = {
        "agent": {
            "events": {
                "sinks": [
                    {"type": "jsonl", "path": str(home.events_file)},
                    {"type": "stdout", "format": "text"},
                ]
            },
            "status_interval": 60,
        }
    }
    doc.update({name: {"enabled": True} for name in built})
    return yaml.safe_dump(doc, sort_keys=False)


def run_up(home: Home) -> int:
    """Start the agent (the manager joins here once it is built); returns the exit status."""
    classes = module_classes()
    use_file = home.policy_file.exists()
    policy_text = None if use_file else default_policy(home, sorted(classes))
    daemon = Agent(
        home, classes, policy_sections(classes),
        policy_path=home.policy_file if use_file else None,
        policy_text=policy_text, say=_say,
    )
    _banner(home, daemon, use_file, classes)
    return asyncio.run(daemon.run())


def _banner(home: Home, daemon: Agent, use_file: bool, classes: dict[str, Any]) -> None:
    source = str(home.policy_file) if use_file else "built-in default (no agent.yaml yet)"
    _say(f"Yoroi {__version__}: agent {daemon.policy.agent.name}")
    _say(f"policy: {source}")
    _say(f"state:  {home.state_dir}  (events: {home.events_file})")
    enabled = set(daemon.policy.enabled_modules())
    for info in CATALOG:
        if info.name in enabled:
            state = "enabled"
        elif info.name in classes:
            state = "available, disabled in the policy"
        else:
            state = "not built yet" + (f" (issue #{info.issue})" if info.issue else "")
        _say(f"  {info.name:<14} {state:<36} {info.title}")
    _say("the manager and console are not built yet (issue #10); press Ctrl-C to stop")


def _say(message: str) -> None:
    click.echo(f"yoroi: {message}", err=True)
