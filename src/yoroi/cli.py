"""The ``yoroi`` command: one sub-command group per protection module.

Exit status everywhere: 0 ok or clean, 1 something found or blocked, 2 usage or runtime error.
Errors are one clear line on stderr (never a traceback); ``--json`` prints machine-readable
output on stdout.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from yoroi import __version__
from yoroi.errors import ConfigError, NotBuiltError, YoroiError
from yoroi.home import Home
from yoroi.modules import CATALOG, module_classes, policy_sections

EXIT_OK, EXIT_FOUND, EXIT_ERROR = 0, 1, 2


# Module commands, imported only when used so that `yoroi --version` stays fast.
LAZY_COMMANDS = {
    "scan": "yoroi.modules.antimalware.cli:scan_command",
    "quarantine": "yoroi.modules.antimalware.quarantine_cli:quarantine",
    "behavior": "yoroi.modules.behavior.cli:behavior",
    "ips": "yoroi.modules.ips.cli:ips",
    "integrity": "yoroi.modules.integrity.cli:integrity",
    "appcontrol": "yoroi.modules.appcontrol.cli:appcontrol",
}


class YoroiGroup(click.Group):
    """Turns every Yoroi error into one line on stderr and exit status 2."""

    lazy: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module_name, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            for line in exc.problems:
                click.echo(f"yoroi: {line}", err=True)
            ctx.exit(EXIT_ERROR)
        except YoroiError as exc:
            click.echo(f"yoroi: error: {exc}", err=True)
            ctx.exit(EXIT_ERROR)


@click.group(cls=YoroiGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="yoroi", message="%(prog)s %(version)s")
@click.option(
    "--home", type=click.Path(file_okay=False, path_type=Path), envvar="YOROI_HOME",
    help="Keep configuration and state under DIR/etc and DIR/var instead of /etc/yoroi and "
    "/var/lib/yoroi (also: YOROI_HOME).",
)
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv: debug).")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, verbose: int) -> None:
    """Yoroi: defence in depth for Linux servers.

    One agent per server runs protection layers (anti-malware, behaviour monitoring,
    intrusion prevention, integrity monitoring, application control, firewall, log
    inspection); a manager shows and steers them all.

    \b
    Quick start:  yoroi up
    Exit status:  0 ok/clean, 1 something found or blocked, 2 usage or runtime error.
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="yoroi: %(levelname)s: %(name)s: %(message)s")
    ctx.obj = Home.resolve(home)


@cli.command()
@click.pass_obj
def up(home: Home) -> None:
    """Start the agent on this host in the foreground, with every built module.

    Uses the policy at <config>/agent.yaml when it exists; otherwise a default policy
    that enables every module built into this version with its safe defaults and prints
    each event on the terminal. Stop with Ctrl-C.
    """
    from yoroi.agent.quickstart import run_up

    raise SystemExit(run_up(home))


@cli.group(cls=YoroiGroup)
def agent() -> None:
    """The agent daemon (normally run by systemd: packaging/yoroi-agent.service)."""


@agent.command("run")
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
    help="Policy file (default: <config>/agent.yaml).",
)
@click.option("--check", is_flag=True, help="Validate the policy and exit; start nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --check: print the result as JSON.")
@click.pass_obj
def agent_run(home: Home, config_file: Path | None, check: bool, as_json: bool) -> None:
    """Run the agent in the foreground until SIGTERM; SIGHUP reloads the policy."""
    from yoroi.agent.daemon import Agent

    path = config_file or home.policy_file
    classes = module_classes()
    if check:
        raise SystemExit(_check_policy(path, classes, as_json))
    daemon = Agent(home, classes, policy_sections(classes), policy_path=path, say=_say)
    raise SystemExit(asyncio.run(daemon.run()))


def _check_policy(path: Path, classes: dict[str, Any], as_json: bool) -> int:
    from yoroi.config import load_policy

    try:
        policy = load_policy(path, policy_sections(classes))
    except ConfigError as exc:
        if not as_json:
            raise
        click.echo(json.dumps({"valid": False, "source": str(path), "problems": exc.problems}))
        return EXIT_ERROR
    result = {
        "valid": True, "source": str(path), "agent": policy.agent.name,
        "enabled": policy.enabled_modules(), "fingerprint": policy.fingerprint,
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        enabled = ", ".join(policy.enabled_modules()) or "none"
        click.echo(f"{path}: valid; agent {policy.agent.name}; modules enabled: {enabled}")
    return EXIT_OK


def _say(message: str) -> None:
    click.echo(f"yoroi: {message}", err=True)


def _not_built(command: str, title: str, issue: int | None) -> click.Command:
    where = f" (tracked as issue #{issue})" if issue else ""

    @click.command(
        command,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        help=f"{title}. Not built into this version of Yoroi yet{where}.",
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stub(args: tuple[str, ...]) -> None:
        raise NotBuiltError(f"'yoroi {command}': {title.lower()} is not built yet{where}")

    return stub


def _add_stubs() -> None:
    planned = [(cmd, i.title, i.issue) for i in CATALOG for cmd in i.commands]
    planned.append(("manager", "The manager: enrollment, policies, events, console, API", 10))
    for command, title, issue in planned:
        if command not in LAZY_COMMANDS:
            cli.add_command(_not_built(command, title, issue))


cli.lazy = LAZY_COMMANDS
_add_stubs()


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(prog_name="yoroi")
    except KeyboardInterrupt:
        click.echo("yoroi: interrupted", err=True)
        sys.exit(130)
