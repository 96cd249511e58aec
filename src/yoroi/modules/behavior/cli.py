"""``yoroi behavior run``: behaviour monitoring in the foreground."""

from __future__ import annotations

from pathlib import Path

import click

from yoroi.agent.standalone import run_module
from yoroi.home import Home


@click.group("behavior")
def behavior() -> None:
    """Behaviour monitoring: stop ransomware mid-run and restore its damage; report the
    tell-tale behaviour of exploited servers."""


@behavior.command("run")
@click.option("--watch", "watch", multiple=True, required=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Protected directory (repeatable): activity scored, originals kept.")
@click.option("--events", "events_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also append events to FILE (one OCSF JSON object per line).")
@click.option("--json", "as_json", is_flag=True, help="Events on stdout as JSON lines.")
@click.option("--response", type=click.Choice(["kill", "alert"]), default="kill",
              show_default=True, help="Kill the family and restore, or only alert.")
@click.option("--no-decoys", is_flag=True, help="Do not plant decoy files.")
@click.pass_obj
def run(home: Home, watch: tuple[Path, ...], events_file: Path | None, as_json: bool,
        response: str, no_decoys: bool) -> None:
    """Watch DIRs until Ctrl-C: a process family behaving like ransomware is frozen, killed,
    its program quarantined and every file it damaged restored (needs root)."""
    section = {
        "watch": [str(p.resolve()) for p in watch],
        "response": response,
        "decoys": not no_decoys,
    }
    raise SystemExit(run_module(home, "behavior", section, events_file, as_json))
