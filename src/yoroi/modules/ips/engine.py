"""The ModSecurity v3 engine behind :class:`~yoroi.modules.ips.types.Inspector`.

An :class:`Engine` parses its rule set once (engine base, CRS setup, Yoroi's settings and
exclusions, virtual patches, CRS rules); each HTTP exchange is one ModSecurity transaction.
The rule engine always runs ``On``: in detect mode an intervention becomes
``Outcome.DETECT`` and the front end forwards anyway, while later phases keep being
inspected (ModSecurity only skips the rest of the phase in which a rule denied).
"""

from __future__ import annotations

import enum
import itertools
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libmodsecurity import ModSecurity, RuleMessage, RulesSet, Transaction

from yoroi.errors import ConfigError
from yoroi.modules.ips.crs import RuleSet
from yoroi.modules.ips.types import Decision, Headers, Outcome, RuleMatch

VALUE_PREFIX = 16  # characters of a matched value that events may carry
FIRST_EXCLUSION_ID = 10_000  # our generated rules: ModSecurity's range for local rules
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_./:\-\[\]@]+")
_CVE = re.compile(r"CVE-\d{4}-\d{4,}", re.IGNORECASE)
_LOGDATA = re.compile(r"found within (?P<var>[A-Z_]+(?::[^:]*)?): (?P<value>.*)", re.DOTALL)
_OPERATOR = re.compile(r"against variable `(?P<var>[^`']*)' \(Value: `(?P<value>.*)' \)",
                       re.DOTALL)


class Mode(enum.StrEnum):
    """Block what the rules deny, or only report it."""

    PREVENT = "prevent"
    DETECT = "detect"


@dataclass(frozen=True)
class Exclusion:
    """Silence a false positive: a rule, or a rule for one parameter, optionally on paths.

    ``parameter`` is a ModSecurity target such as ``ARGS:comment`` or
    ``REQUEST_COOKIES:session``; a bare name means ``ARGS:name``. ``paths`` are URL path
    prefixes; none means everywhere.
    """

    rule_id: int
    parameter: str | None = None
    paths: tuple[str, ...] = ()

    def target(self) -> str | None:
        """The ModSecurity target the exclusion removes, if it names a parameter."""
        if self.parameter is None:
            return None
        return self.parameter if ":" in self.parameter else f"ARGS:{self.parameter}"


def _discard(_line: str) -> None:
    """ModSecurity's server log: Yoroi reads rule messages per transaction instead."""


_MODSECURITY: ModSecurity | None = None


def _modsecurity() -> ModSecurity:
    # One library instance for the process: its log-callback registration lives until exit.
    global _MODSECURITY
    if _MODSECURITY is None:
        _MODSECURITY = ModSecurity()
        _MODSECURITY.set_connector_information("Yoroi IPS")
        _MODSECURITY.set_log_callback(_discard)
    return _MODSECURITY


class Engine:
    """ModSecurity v3 with a rule set loaded once; ``begin`` is thread-safe and reusable."""

    def __init__(self, rules: RuleSet, mode: Mode | str = Mode.PREVENT, paranoia: int = 1,
                 inbound_threshold: int = 5, outbound_threshold: int = 4,
                 exclusions: Iterable[Exclusion] = (),
                 crs_settings: Mapping[str, str | int] | None = None) -> None:
        self.mode = Mode(mode)
        _check_settings(paranoia, inbound_threshold, outbound_threshold)
        self.rule_set = rules
        self.paranoia = paranoia
        settings = {
            "paranoia_level": paranoia,
            "executing_paranoia_level": paranoia,
            "inbound_anomaly_score_threshold": inbound_threshold,
            "outbound_anomaly_score_threshold": outbound_threshold,
            **(crs_settings or {}),
        }
        self._modsec = _modsecurity()
        self._rules = RulesSet()
        self.rule_count = self._load(rules, settings, tuple(exclusions))
        # Unique transaction ids of our own: without one, libmodsecurity seeds a
        # std::random_device for each transaction (a quarter of its cost).
        self._id_prefix = f"{time.time_ns():x}-{os.getpid()}-"
        self._ids = itertools.count(1)

    def transaction_id(self) -> str:
        """A new transaction id (ModSecurity's ``UNIQUE_ID``), unique across processes."""
        return f"{self._id_prefix}{next(self._ids)}"

    def begin(self, client: tuple[str, int], server: tuple[str, int]) -> EngineInspection:
        """Open one exchange (a ModSecurity transaction) between ``client`` and ``server``."""
        return EngineInspection(self, client, server)

    def _load(self, rules: RuleSet, settings: Mapping[str, str | int],
              exclusions: tuple[Exclusion, ...]) -> int:
        count = self._load_file(rules.engine_config)
        count += self._load_text(settings_rule(settings), "Yoroi CRS settings")
        count += self._load_file(rules.crs_setup)
        count += self._load_text(exclusion_rules(exclusions), "Yoroi exclusions")
        for path in (*rules.patches, *rules.crs_rules):
            count += self._load_file(path)
        if rules.body_checks is not None:
            count += self._load_file(rules.body_checks)
        count += self._load_text(removal_directives(exclusions), "Yoroi exclusions")
        return count

    def _load_file(self, path: Path) -> int:
        if not path.is_file():
            raise ConfigError(f"{path}: rule file not found")
        loaded = self._rules.load_from_uri(str(path))
        if loaded < 0:
            raise ConfigError(f"{path}: ModSecurity refused the rules: {self._parser_error()}")
        return loaded

    def _load_text(self, text: str, what: str) -> int:
        if not text:
            return 0
        loaded = self._rules.load(text)
        if loaded < 0:
            raise ConfigError(f"{what}: ModSecurity refused the rules: {self._parser_error()}")
        return loaded

    def _parser_error(self) -> str:
        return " ".join(self._rules.get_parser_error().split())


class EngineInspection:
    """One HTTP exchange inside the engine: a ModSecurity transaction, phase by phase."""

    def __init__(self, engine: Engine, client: tuple[str, int],
                 server: tuple[str, int]) -> None:
        self._engine = engine
        self._tx = Transaction(engine._modsec, engine._rules, engine.transaction_id())
        self._matches: list[RuleMatch] = []
        self._closed = False
        self._tx.process_connection(client[0], client[1], server[0], server[1])

    def request_headers(self, method: str, uri: str, version: str,
                        headers: Headers) -> Decision | None:
        """Phase 1: the request line and headers."""
        # pybind11's std::string parameters take bytes too; the stubs only say str.
        self._tx.process_uri(wire(uri), method,  # type: ignore[arg-type]
                             version.removeprefix("HTTP/"))
        for name, value in headers:
            self._tx.add_request_header(wire(name), wire(value))  # type: ignore[arg-type]
        self._tx.process_request_headers()
        return self._decide()

    def request_body(self, chunk: bytes) -> None:
        """Part of the request body (inspected at ``request_end``)."""
        # bytes(): the binding takes only bytes, and h11 hands body chunks out as bytearray.
        self._tx.append_request_body(bytes(chunk))

    def request_end(self) -> Decision | None:
        """Phase 2: the whole request body has been given."""
        self._tx.process_request_body()
        return self._decide()

    def response_headers(self, status: int, version: str, headers: Headers) -> Decision | None:
        """Phase 3: the response status line and headers."""
        for name, value in headers:
            self._tx.add_response_header(wire(name), wire(value))  # type: ignore[arg-type]
        protocol = version if version.startswith("HTTP/") else f"HTTP/{version}"
        self._tx.process_response_headers(status, protocol)
        return self._decide()

    def response_body(self, chunk: bytes) -> None:
        """Part of the response body (inspected at ``response_end``)."""
        self._tx.append_response_body(bytes(chunk))

    def response_end(self) -> Decision | None:
        """Phase 4: the whole response body has been given."""
        self._tx.process_response_body()
        return self._decide()

    def close(self) -> tuple[RuleMatch, ...]:
        """Phase 5 (logging); every rule that matched during the exchange."""
        if not self._closed:
            self._closed = True
            self._tx.process_logging()
            self._collect()
        return tuple(self._matches)

    def _collect(self) -> None:
        messages = self._tx.get_rule_messages()
        self._matches.extend(rule_match(m) for m in messages[len(self._matches):])

    def _decide(self) -> Decision | None:
        intervention = self._tx.intervention()
        if intervention is None or not intervention.disruptive:
            return None  # the rule messages are read once, at close
        self._collect()
        outcome = Outcome.BLOCK if self._engine.mode is Mode.PREVENT else Outcome.DETECT
        return Decision(outcome, intervention.status, tuple(self._matches), intervention.url)


def wire(text: str) -> bytes:
    """The bytes a front end received, from the ISO 8859-1 text it made of them (the binding
    would encode a ``str`` as UTF-8 and so double-encode every byte over 0x7f); text that is
    not ISO 8859-1 came from elsewhere and goes as UTF-8."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def rule_match(message: RuleMessage) -> RuleMatch:
    """A ModSecurity rule message as a :class:`RuleMatch`, the matched value redacted."""
    variable, value = _matched(message)
    tags = tuple(_field(message, "tags") or ())
    return RuleMatch(
        rule_id=message.rule_id,
        message=_field(message, "message") or _field(message, "match") or "",
        severity=message.severity,
        tags=tags,
        cve=_cve(tags),
        variable=variable,
        value_prefix=None if value is None else redact(value),
        phase=message.phase,
    )


def redact(value: str, keep: int = VALUE_PREFIX) -> str:
    """The first ``keep`` characters of a matched value, marked when cut."""
    return value if len(value) <= keep else value[:keep] + "…"


def _field(message: RuleMessage, name: str) -> Any:
    try:
        return getattr(message, name)
    except UnicodeDecodeError:  # the binding decodes strictly; matched bytes may be binary
        return None


def _matched(message: RuleMessage) -> tuple[str | None, str | None]:
    data, match = _field(message, "data") or "", _field(message, "match") or ""
    found = _LOGDATA.search(data) or _OPERATOR.search(match)
    return (found["var"], found["value"]) if found else (None, None)


def _cve(tags: tuple[str, ...]) -> str | None:
    for tag in tags:
        if found := _CVE.search(tag):
            return found[0].upper()
    return None


def settings_rule(settings: Mapping[str, str | int]) -> str:
    """A ``SecAction`` setting CRS variables, run before the CRS's own defaults (as
    crs-setup.conf does)."""
    for name, value in settings.items():
        _check_token(name, "CRS setting name")
        _check_token(str(value), f"CRS setting {name}")
    setvars = ",".join(f"setvar:tx.{name}={value}" for name, value in settings.items())
    return f'SecAction "id:900000,phase:1,nolog,pass,t:none,{setvars}"\n'


def exclusion_rules(exclusions: Iterable[Exclusion]) -> str:
    """Runtime exclusions (``ctl:``) for exclusions bound to path prefixes."""
    lines: list[str] = []
    rule_id = FIRST_EXCLUSION_ID
    for exclusion in exclusions:
        _check_exclusion(exclusion)
        target = exclusion.target()
        ctl = (f"ctl:ruleRemoveTargetById={exclusion.rule_id};{target}" if target
               else f"ctl:ruleRemoveById={exclusion.rule_id}")
        for path in exclusion.paths:
            lines.append(f'SecRule REQUEST_FILENAME "@beginsWith {path}" '
                         f'"id:{rule_id},phase:1,pass,nolog,t:none,{ctl}"')
            rule_id += 1
    return "\n".join(lines) + "\n" if lines else ""


def removal_directives(exclusions: Iterable[Exclusion]) -> str:
    """Configure-time exclusions (everywhere): loaded after the rules they change."""
    lines = []
    for exclusion in exclusions:
        if exclusion.paths:
            continue
        target = exclusion.target()
        lines.append(f'SecRuleUpdateTargetById {exclusion.rule_id} "!{target}"' if target
                     else f"SecRuleRemoveById {exclusion.rule_id}")
    return "\n".join(lines) + "\n" if lines else ""


def _check_exclusion(exclusion: Exclusion) -> None:
    if exclusion.rule_id <= 0:
        raise ConfigError(f"exclusion: rule id {exclusion.rule_id} is not a positive integer")
    if exclusion.parameter is not None:
        _check_token(exclusion.parameter, f"exclusion of rule {exclusion.rule_id}: parameter")
    for path in exclusion.paths:
        if not path.startswith("/"):
            raise ConfigError(f"exclusion of rule {exclusion.rule_id}: path {path!r} "
                              "must be a URL path prefix starting with '/'")
        _check_token(path, f"exclusion of rule {exclusion.rule_id}: path")


def _check_token(value: str, what: str) -> None:
    # Values end up inside generated SecRules: refuse anything that could break out of them.
    if not _SAFE_TOKEN.fullmatch(value):
        raise ConfigError(f"{what} {value!r}: use only letters, digits and _ . / : - [ ] @")


def _check_settings(paranoia: int, inbound: int, outbound: int) -> None:
    if paranoia not in (1, 2, 3, 4):
        raise ConfigError(f"paranoia level {paranoia}: must be 1, 2, 3 or 4")
    for name, value in (("inbound", inbound), ("outbound", outbound)):
        if value < 1:
            raise ConfigError(f"{name} anomaly threshold {value}: must be at least 1")
