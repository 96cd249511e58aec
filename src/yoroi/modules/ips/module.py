"""The intrusion-prevention module in the agent: one reverse proxy per protected site, on the
agent's event loop, with events on the bus and repeat attackers handed to the firewall."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from typing import ClassVar

from yoroi.agent.actions import BanAddress
from yoroi.agent.module import AgentContext, Health, ModuleStatus
from yoroi.config import ModulePolicy
from yoroi.errors import ModuleError, YoroiError
from yoroi.modules.ips.crs import RuleSet
from yoroi.modules.ips.engine import Engine, Exclusion
from yoroi.modules.ips.frontend import Action, Exchange, Limits, Mode
from yoroi.modules.ips.policy import IpsPolicy, SitePolicy
from yoroi.modules.ips.proxy import ProxyConfig, ProxyServer, parse_listen
from yoroi.modules.ips.proxy_events import exchange_events
from yoroi.modules.ips.proxy_upstream import Upstream


class IpsModule:
    """Virtual patching and the OWASP CRS in front of the host's web applications."""

    name: ClassVar[str] = "ips"
    policy_type: ClassVar[type[ModulePolicy]] = IpsPolicy

    def __init__(self) -> None:
        self.policy = IpsPolicy()
        self._ctx: AgentContext | None = None
        self._servers: list[ProxyServer] = []
        self._blocks: dict[str, deque[float]] = defaultdict(deque)
        self._banned: set[str] = set()
        self.counters = {"requests": 0, "blocked": 0, "detected": 0, "bans": 0, "rules": 0}

    def configure(self, policy: ModulePolicy) -> None:
        assert isinstance(policy, IpsPolicy)
        self.policy = policy

    async def start(self, ctx: AgentContext) -> None:
        self._ctx = ctx
        engine = await asyncio.to_thread(self._engine)
        self.counters["rules"] = engine.rule_count
        for site in self.policy.sites:
            server = ProxyServer(self._config(site), engine, factory=self._engine,
                                 on_exchange=self._exchange)
            try:
                await server.start()
            except OSError as exc:
                raise ModuleError(f"ips: cannot listen on {site.listen}: {exc}") from exc
            self._servers.append(server)
            ctx.say(f"protecting {site.upstream} on {site.listen} ({self.policy.mode})")

    async def stop(self) -> None:
        for server in self._servers:
            await server.stop()
        self._servers.clear()

    def status(self) -> ModuleStatus:
        sites = ", ".join(s.listen for s in self.policy.sites) or "no sites"
        return ModuleStatus(Health.RUNNING, f"{self.policy.mode} on {sites}", dict(self.counters))

    def _engine(self) -> Engine:
        policy = self.policy
        try:
            rules = RuleSet.from_crs(policy.rules) if policy.rules else RuleSet.default(
                self._ctx.home.state_dir if self._ctx else None)
            exclusions = [Exclusion(e.rule, e.parameter, e.paths) for e in policy.exclusions]
            return Engine(rules, mode=policy.mode, paranoia=policy.paranoia,
                          inbound_threshold=policy.inbound_threshold,
                          outbound_threshold=policy.outbound_threshold, exclusions=exclusions)
        except YoroiError:
            raise
        except Exception as exc:
            raise ModuleError(f"ips: the rules cannot be loaded: {exc}") from exc

    def _config(self, site: SitePolicy) -> ProxyConfig:
        return ProxyConfig(
            listen=parse_listen(site.listen), upstream=Upstream.parse(site.upstream),
            mode=Mode(self.policy.mode),
            limits=Limits(request_body=site.body_limit, upstream_read=site.timeout),
            cert=site.cert, key=site.key)

    def _exchange(self, exchange: Exchange) -> None:
        """Called on the agent's loop after every exchange."""
        assert self._ctx is not None
        self.counters["requests"] += 1
        if exchange.action is Action.BLOCKED:
            self.counters["blocked"] += 1
            self._maybe_ban(exchange.client[0])
        elif exchange.action is Action.DETECTED:
            self.counters["detected"] += 1
        for event in exchange_events(exchange, every=self.policy.log_all):
            self._ctx.publish(event)

    def _maybe_ban(self, address: str) -> None:
        ban = self.policy.ban
        if ban is None or address in self._banned or self._ctx is None:
            return
        now = time.monotonic()
        recent = self._blocks[address]
        recent.append(now)
        while recent and recent[0] < now - ban.window:
            recent.popleft()
        if len(recent) >= ban.after:
            self._banned.add(address)
            self._ctx.spawn(self._ban(address, int(ban.ttl)), f"ban:{address}")

    async def _ban(self, address: str, ttl: int) -> None:
        assert self._ctx is not None
        result = await self._ctx.request(BanAddress(
            address, ttl, f"{self.policy.ban.after if self.policy.ban else 0} requests blocked"
            " by the IPS"))
        if result.ok:  # a refused ban (no firewall, a protected address) is not asked again
            self.counters["bans"] += 1
