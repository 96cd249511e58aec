"""What ``yoroi ips proxy`` does once click has parsed its options: build the config, the
engine factory (called again on SIGHUP) and the events hook, then run the workers."""

from __future__ import annotations

import logging
from pathlib import Path

from yoroi.errors import UsageError
from yoroi.home import Home
from yoroi.modules.ips.crs import RuleSet
from yoroi.modules.ips.engine import Engine
from yoroi.modules.ips.frontend import Limits, Mode
from yoroi.modules.ips.proxy import InspectorFactory, ProxyConfig, parse_listen
from yoroi.modules.ips.proxy_events import events_file_hook
from yoroi.modules.ips.proxy_upstream import Upstream
from yoroi.modules.ips.types import Inspector
from yoroi.modules.ips.workers import run

log = logging.getLogger(__name__)


def engine_factory(home: Home, rules_dir: Path | None, mode: Mode,
                   paranoia: int) -> InspectorFactory:
    """Builds an engine from the rule files as they are now (so SIGHUP picks up changes)."""

    def build() -> Inspector:
        rules = RuleSet.from_crs(rules_dir) if rules_dir else RuleSet.default(home.state_dir)
        engine = Engine(rules, mode=mode.value, paranoia=paranoia)
        log.info("ips proxy: %d rules loaded", engine.rule_count)
        return engine

    return build


def run_proxy(home: Home, *, listen: str, upstream: str, mode: str, rules_dir: Path | None,
              events: Path | None, cert: Path | None, key: Path | None, workers: int,
              paranoia: int, body_limit: int, timeout: float, log_all: bool) -> int:
    """Serve in the foreground until SIGTERM/SIGINT; the exit status."""
    if key is not None and cert is None:
        raise UsageError("--key needs --cert (the site's certificate chain)")
    config = ProxyConfig(
        listen=parse_listen(listen), upstream=Upstream.parse(upstream), mode=Mode(mode),
        limits=Limits(request_body=body_limit, upstream_read=timeout), cert=cert, key=key,
        workers=workers)
    hook = events_file_hook(events, every=log_all) if events else None
    return run(config, engine_factory(home, rules_dir, config.mode, paranoia), hook)
