"""The ModSecurity engine with Debian's CRS 3.3.4: blocks, detects, exclusions, broken rules."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from yoroi.errors import ConfigError
from yoroi.modules.ips.crs import DEBIAN_CRS, RuleSet
from yoroi.modules.ips.engine import Engine, EngineInspection, Exclusion, Mode
from yoroi.modules.ips.types import Decision, Outcome

pytestmark = pytest.mark.skipif(not (DEBIAN_CRS / "rules").is_dir(),
                                reason="Debian's modsecurity-crs is not installed")

BROWSER = [("Host", "shop.example"), ("User-Agent", "Mozilla/5.0"), ("Accept", "text/html")]
SQLI = "/products?id=1%27%20OR%20%271%27%3D%271"
XSS = "/search?q=%3Cscript%3Ealert(document.cookie)%3C/script%3E"


def rules() -> RuleSet:
    return replace(RuleSet.default(), patches=())


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(rules(), Mode.PREVENT)


def get(engine: Engine, uri: str) -> tuple[Decision | None, EngineInspection]:
    inspection = engine.begin(("203.0.113.7", 51000), ("127.0.0.1", 8080))
    decision = inspection.request_headers("GET", uri, "HTTP/1.1", BROWSER)
    return decision or inspection.request_end(), inspection


@pytest.mark.parametrize("uri", [SQLI, XSS])
def test_blocks_classic_attacks_at_paranoia_1(engine: Engine, uri: str) -> None:
    decision, inspection = get(engine, uri)
    assert decision is not None and decision.outcome is Outcome.BLOCK
    assert decision.status == 403
    assert 949110 in {m.rule_id for m in decision.matches}
    attack = next(m for m in decision.matches if m.rule_id in (942100, 941100))
    assert attack.variable in ("ARGS:id", "ARGS:q") and attack.phase == 2
    assert attack.value_prefix is not None and len(attack.value_prefix) <= 17
    assert "attack-sqli" in attack.tags or "attack-xss" in attack.tags
    assert inspection.close()[-1].rule_id in {949110, 980130}


def test_allows_a_benign_request(engine: Engine) -> None:
    decision, inspection = get(engine, "/products?name=O%27Brien%27s+caf%C3%A9&page=2")
    assert decision is None
    inspection.response_headers(200, "HTTP/1.1", [("Content-Type", "text/html")])
    inspection.response_body(b"<html><body>Hello</body></html>")
    assert inspection.response_end() is None
    assert inspection.close() == ()


def test_detect_mode_reports_and_never_blocks() -> None:
    decision, inspection = get(Engine(rules(), Mode.DETECT), SQLI)
    assert decision is not None and decision.outcome is Outcome.DETECT
    assert {942100, 949110} <= {m.rule_id for m in inspection.close()}


def test_exclusion_of_a_parameter_on_a_path_removes_the_false_positive() -> None:
    excluded = Engine(rules(), exclusions=[Exclusion(942100, "id", ("/products",))])
    assert get(excluded, SQLI)[0] is None
    decision, _ = get(excluded, SQLI.replace("/products", "/orders"))
    assert decision is not None and decision.outcome is Outcome.BLOCK


def test_exclusion_of_a_rule_everywhere() -> None:
    excluded = Engine(rules(), exclusions=[Exclusion(942100)])
    _, inspection = get(excluded, SQLI)
    assert 942100 not in {m.rule_id for m in inspection.close()}


def test_exclusion_values_cannot_inject_rules() -> None:
    with pytest.raises(ConfigError, match="parameter"):
        Engine(rules(), exclusions=[Exclusion(942100, 'id" "id:1,deny', ("/x",))])


def test_paranoia_and_thresholds_come_from_arguments() -> None:
    lenient = Engine(rules(), inbound_threshold=100)
    decision, inspection = get(lenient, SQLI)
    assert decision is None and 942100 in {m.rule_id for m in inspection.close()}
    with pytest.raises(ConfigError, match="paranoia"):
        Engine(rules(), paranoia=5)


def test_cve_comes_from_the_rule_tags(tmp_path: Path) -> None:
    patch = tmp_path / "CVE-2017-5638.conf"
    patch.write_text(
        'SecRule REQUEST_HEADERS:Content-Type "@contains #_=" "id:4900001,phase:1,deny,'
        "status:403,log,msg:'Struts2 OGNL',tag:'yoroi/cve/CVE-2017-5638',severity:2\"\n")
    engine = Engine(replace(rules(), patches=(patch,)))
    inspection = engine.begin(("203.0.113.7", 51000), ("127.0.0.1", 8080))
    headers = [*BROWSER, ("Content-Type", "%{(#_='multipart/form-data')}")]
    decision = inspection.request_headers("POST", "/upload.action", "HTTP/1.1", headers)
    assert decision is not None and decision.outcome is Outcome.BLOCK
    match = next(m for m in decision.matches if m.rule_id == 4900001)
    assert match.cve == "CVE-2017-5638"
    assert match.variable == "REQUEST_HEADERS:Content-Type" and match.phase == 1


def test_broken_rule_file_names_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.conf"
    broken.write_text('# a comment\nSecRule ARGS "@rx x" "id:1,phase:2,nosuchaction"\n')
    with pytest.raises(ConfigError) as caught:
        Engine(replace(rules(), patches=(broken,)))
    message = str(caught.value)
    assert str(broken) in message and "Line: 2" in message and "nosuchaction" in message


def test_one_engine_serves_many_threads(engine: Engine) -> None:
    outcomes: list[Outcome | None] = []

    def work() -> None:
        for uri in (SQLI, "/", XSS):
            decision, inspection = get(engine, uri)
            inspection.close()
            outcomes.append(decision.outcome if decision else None)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(Outcome.BLOCK) == 8 and outcomes.count(None) == 4


def test_body_chunks_may_be_bytearrays() -> None:
    # h11, under the reverse proxy, hands request and response body chunks out as bytearray.
    inspection = Engine(RuleSet.default(), paranoia=1).begin(("127.0.0.1", 1), ("127.0.0.1", 2))
    inspection.request_headers("POST", "/", "HTTP/1.1", [
        ("Host", "localhost"), ("Content-Type", "application/x-www-form-urlencoded")])
    inspection.request_body(bytearray(b"var=1234 OR 1=1"))
    inspection.request_end()
    assert 942100 in {m.rule_id for m in inspection.close()}
