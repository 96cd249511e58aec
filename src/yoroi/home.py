"""Where Yoroi keeps its configuration and state.

By default the system places an administrator expects: ``/etc/yoroi`` for configuration and
``/var/lib/yoroi`` for databases, quarantine, baselines and spooled events. With ``--home DIR``
(or ``YOROI_HOME``) everything lives under ``DIR/etc`` and ``DIR/var`` instead, so that tests
and users without root can run every command; a user who is not root and names no home gets
``~/.local/share/yoroi``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "YOROI_HOME"


@dataclass(frozen=True)
class Home:
    """The two roots of Yoroi's files on this host."""

    config_dir: Path
    state_dir: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> Home:
        """Pick the home from the argument, then ``YOROI_HOME``, then the system paths."""
        chosen = home if home is not None else os.environ.get(ENV_HOME) or None
        if chosen is None and os.geteuid() == 0:
            return cls(Path("/etc/yoroi"), Path("/var/lib/yoroi"))
        if chosen is None:  # a user without root keeps everything in their home directory
            chosen = Path.home() / ".local" / "share" / "yoroi"
        root = Path(chosen).expanduser().absolute()
        return cls(root / "etc", root / "var")

    @property
    def policy_file(self) -> Path:
        """The agent's policy document."""
        return self.config_dir / "agent.yaml"

    @property
    def spool_dir(self) -> Path:
        """Events that a sink could not take yet wait here."""
        return self.state_dir / "spool"

    @property
    def events_file(self) -> Path:
        """The default JSON-lines event log."""
        return self.state_dir / "events.jsonl"

    def ensure(self) -> None:
        """Create the state directory (owner-only) if it does not exist."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
