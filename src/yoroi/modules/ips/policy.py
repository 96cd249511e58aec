"""The ``ips`` section of the agent policy.

Example::

    ips:
      enabled: true
      mode: prevent                  # prevent | detect
      paranoia: 1
      sites:
        - {listen: "0.0.0.0:443", upstream: "http://127.0.0.1:8080",
           cert: /etc/ssl/site.pem, key: /etc/ssl/private/site.key}
      exclusions:
        - {rule: 942100, parameter: comment, paths: [/blog/]}
      ban: {after: 3, window: 10m, ttl: 1h}   # hand repeat attackers to the firewall
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from yoroi.config import AbsolutePath, Duration, ModulePolicy, Size, StrictModel


class SitePolicy(StrictModel):
    """One protected web application: where the proxy listens and what it protects."""

    listen: str = Field(description="HOST:PORT the proxy listens on.")
    upstream: str = Field(description="URL of the application, e.g. http://127.0.0.1:8080.")
    cert: Path | None = Field(None, description="Certificate chain (PEM) for TLS termination.")
    key: Path | None = Field(None, description="Private key (PEM) of cert.")
    body_limit: Size = 13_107_200
    timeout: Duration = 60.0


class ExclusionPolicy(StrictModel):
    """Silence a false positive: a rule, or a rule for one parameter, on some paths."""

    rule: int = Field(ge=1)
    parameter: str | None = None
    paths: tuple[AbsolutePath, ...] = ()


class BanPolicy(StrictModel):
    """Ask the firewall for a timed ban of a client blocked ``after`` times in ``window``."""

    after: int = Field(3, ge=1)
    window: Duration = 600.0
    ttl: Duration = 3600.0


class IpsPolicy(ModulePolicy):
    """The ``ips`` section."""

    mode: Literal["prevent", "detect"] = "prevent"
    paranoia: int = Field(1, ge=1, le=4)
    inbound_threshold: int = Field(5, ge=1)
    outbound_threshold: int = Field(4, ge=1)
    rules: Path | None = Field(None, description="A CRS release directory; default Debian's.")
    sites: tuple[SitePolicy, ...] = ()
    exclusions: tuple[ExclusionPolicy, ...] = ()
    ban: BanPolicy | None = None
    log_all: bool = Field(False, description="An HTTP Activity event for every request.")
