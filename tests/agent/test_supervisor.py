"""The agent hosts modules: a crash is reported and restarted with back-off; others go on."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.agent.helpers import BadStart, Crasher, Ticker, wait_until
from yoroi.agent.daemon import Agent
from yoroi.agent.module import Health, Module
from yoroi.config import ModulePolicy
from yoroi.events.enums import Status
from yoroi.events.model import ApplicationLifecycle, Event, decode_json
from yoroi.home import Home

CLASSES: dict[str, type[Module]] = {"ticker": Ticker, "crasher": Crasher, "badstart": BadStart}
SECTIONS: dict[str, type[ModulePolicy]] = {n: c.policy_type for n, c in CLASSES.items()}
POLICY = """
agent:
  name: test-agent
  status_interval: 0
  restart: {initial_delay: 0.05, max_delay: 0.2}
ticker: {enabled: true}
crasher: {enabled: true}
badstart: {enabled: true}
"""


def make_agent(home: Path, text: str = POLICY, said: list[str] | None = None) -> Agent:
    sink = said if said is not None else []
    return Agent(Home.resolve(home), CLASSES, SECTIONS, policy_text=text, say=sink.append)


async def test_crashing_module_is_restarted_and_reported_while_others_run(tmp_path: Path) -> None:
    said: list[str] = []
    agent = make_agent(tmp_path, said=said)
    seen: list[Event] = []
    agent.bus.subscribe(seen.append, (), "test")
    running = asyncio.create_task(agent.run())
    await wait_until(lambda: "crasher" in agent.runners and agent.runners["crasher"].restarts >= 3)
    ticker = agent.runners["ticker"]
    ticks_before = ticker.status().counters["ticks"]
    await wait_until(lambda: ticker.status().counters["ticks"] > ticks_before + 5)

    statuses = agent.statuses()
    assert statuses["ticker"].health is Health.RUNNING
    assert statuses["ticker"].counters["restarts"] == 0
    assert statuses["crasher"].counters["restarts"] >= 3
    assert "simulated fault" in (statuses["crasher"].last_error or "")
    assert statuses["badstart"].counters["restarts"] >= 1
    assert "cannot open the kernel facility" in (statuses["badstart"].last_error or "")

    agent.request_stop()
    assert await asyncio.wait_for(running, 10) == 0
    crashes = [
        e for e in seen
        if isinstance(e, ApplicationLifecycle) and e.status_id == Status.FAILURE
        and e.app.feature is not None and e.app.feature.name == "crasher"
    ]
    assert len(crashes) >= 3
    assert "simulated fault" in (crashes[0].status_detail or "")
    assert any("crasher: crashed; restarting in" in line for line in said)
    # each crashed instance was stopped before its replacement started
    assert Crasher.stops >= Crasher.starts - 1


async def test_restart_delay_backs_off(tmp_path: Path) -> None:
    text = POLICY.replace("ticker: {enabled: true}", "").replace("badstart: {enabled: true}", "")
    said: list[str] = []
    agent = make_agent(tmp_path, text, said)
    running = asyncio.create_task(agent.run())
    await wait_until(lambda: sum("restarting in" in s for s in said) >= 4)
    agent.request_stop()
    await asyncio.wait_for(running, 10)
    delays = [s.split("restarting in ")[1].split("s")[0] for s in said if "restarting in" in s]
    assert [float(d) for d in delays[:4]] == [0.05, 0.1, 0.2, 0.2]


async def test_events_reach_the_default_jsonl_file(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, POLICY.replace("crasher: {enabled: true}", ""))
    running = asyncio.create_task(agent.run())
    await wait_until(lambda: "ticker" in agent.runners
                     and agent.runners["ticker"].status().counters.get("ticks", 0) > 3)
    agent.request_stop()
    await asyncio.wait_for(running, 10)
    lines = (tmp_path / "var" / "events.jsonl").read_bytes().splitlines()
    events = [decode_json(line) for line in lines]
    messages = [e.message for e in events]
    assert messages[0] == "agent test-agent started"
    assert messages[-1] == "agent test-agent stopped"
    assert "tick 1" in messages


async def test_reload_applies_a_good_policy_and_refuses_a_bad_one(tmp_path: Path) -> None:
    policy_file = tmp_path / "agent.yaml"
    policy_file.write_text("agent: {status_interval: 0}\nticker: {enabled: true}\n")
    said: list[str] = []
    agent = Agent(Home.resolve(tmp_path), CLASSES, SECTIONS, policy_path=policy_file,
                  say=said.append)
    running = asyncio.create_task(agent.run())
    await wait_until(lambda: "ticker" in agent.runners)

    policy_file.write_text("agent: {status_interval: 0}\nticker: {enabled: tru}\n")
    assert await agent.reload() is False
    assert "ticker" in agent.runners
    assert any("reload refused" in s and "ticker.enabled" in s for s in said)

    policy_file.write_text("agent: {status_interval: 0}\nticker: {enabled: false}\n")
    assert await agent.reload() is True
    assert "ticker" not in agent.runners
    assert agent.statuses()["ticker"].health is Health.DISABLED

    agent.request_stop()
    await asyncio.wait_for(running, 10)


async def test_status_reports_what_each_sink_sent_and_dropped(tmp_path: Path) -> None:
    text = POLICY.replace("crasher: {enabled: true}", "").replace("badstart: {enabled: true}", "")
    text = text.replace("status_interval: 0", "status_interval: 0.05")
    said: list[str] = []
    agent = make_agent(tmp_path, text, said)
    running = asyncio.create_task(agent.run())
    await wait_until(lambda: any(line.startswith("events to ") for line in said))
    agent.request_stop()
    await asyncio.wait_for(running, 10)
    line = next(line for line in said if line.startswith("events to "))
    assert "connected; sent " in line and ", dropped 0" in line
