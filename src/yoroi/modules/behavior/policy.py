"""The ``behavior`` section of the agent policy.

Example::

    behavior:
      enabled: true
      watch: [/srv, /home, /var/www]     # protected locations: activity scored, originals kept
      response: kill                     # kill | alert
      trusted: [/usr/bin/borg, restic]   # backup tools whose bulk writes are expected
      backup: {max_file_size: 64M, budget: 2G, keep_for: 1h}
      tells: {servers: [nginx, java, php-fpm8.2]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from yoroi.config import AbsolutePath, Duration, ModulePolicy, Size, StrictModel

DEFAULT_TRUSTED = ("apt", "apt-get", "dpkg", "unattended-upgrade", "unattended-upgr", "pip",
                   "pip3", "rsync", "borg", "restic", "duplicity", "logrotate")


class BackupPolicy(StrictModel):
    """Copies of originals kept before an untrusted process first changes them."""

    directory: Path | None = Field(None, description="Default <state>/behavior/backup.")
    max_file_size: Size = 64 * 1024 * 1024
    budget: Size = 2 * 1024 * 1024 * 1024
    keep_for: Duration = Field(3600.0, description="Copies of honest processes expire after.")


class DetectorPolicy(StrictModel):
    """How much evidence makes a verdict (see docs/behavior.md)."""

    threshold: float = Field(10.0, gt=0)
    half_life: Duration = Field(3600.0, description="Evidence loses half its weight in this time.")


class TellsPolicy(StrictModel):
    """Exploitation tells: servers that should never start shells or downloaders."""

    enabled: bool = True
    servers: tuple[str, ...] | None = Field(None, description="Default: the built-in list.")


class BehaviorPolicy(ModulePolicy):
    """The ``behavior`` section."""

    watch: tuple[AbsolutePath, ...] = Field((), description="Protected directories.")
    response: Literal["kill", "alert"] = "kill"
    quarantine_executable: bool = True
    restore: bool = True
    decoys: bool = Field(True, description="Plant decoy files in the watched directories.")
    trusted: tuple[str, ...] = DEFAULT_TRUSTED
    backup: BackupPolicy = BackupPolicy()
    detector: DetectorPolicy = DetectorPolicy()
    tells: TellsPolicy = TellsPolicy()
