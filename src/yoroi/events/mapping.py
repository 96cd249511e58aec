"""What CEF and LEEF share: severity scales, signature id, event name, field lookup.

The encoders work on :func:`yoroi.events.model.flatten` output, so a mapping is a table of
``(target key, [OCSF dotted keys, first present wins])``.
"""

from __future__ import annotations

from collections.abc import Sequence

from yoroi.events.model import Event, Scalar, flatten

# OCSF severity_id -> CEF 0-10 (0-3 low, 4-6 medium, 7-8 high, 9-10 very high).
CEF_SEVERITY = {0: 0, 1: 1, 2: 3, 3: 5, 4: 7, 5: 9, 6: 10, 99: 0}
# OCSF severity_id -> LEEF sev 1-10 (LEEF has no 0).
LEEF_SEVERITY = {0: 1, 1: 1, 2: 3, 3: 5, 4: 7, 5: 9, 6: 10, 99: 1}

FieldMap = Sequence[tuple[str, Sequence[str]]]


REMEDIATION_CATEGORY = 7


def flat_view(event: Event) -> dict[str, Scalar]:
    """:func:`flatten` plus ``remediation_action``: the activity name of a Remediation event."""
    flat = flatten(event)
    if event.category_uid == REMEDIATION_CATEGORY:
        flat["remediation_action"] = event.activity_name
    return flat


def first(flat: dict[str, Scalar], keys: Sequence[str]) -> Scalar:
    """The value of the first of ``keys`` present in ``flat`` (None and "" count as absent)."""
    for key in keys:
        value = flat.get(key)
        if value is not None and value != "":
            return value
    return None


def text(value: Scalar) -> str:
    """A scalar as CEF/LEEF text: booleans lower-case, numbers plain."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def signature_id(flat: dict[str, Scalar]) -> str:
    """The rule or signature id of a finding, else the OCSF ``type_uid`` ("100103")."""
    return text(first(flat, ("finding_info.analytic.uid", "type_uid")))


def event_name(flat: dict[str, Scalar]) -> str:
    """A human name: the finding title, else the OCSF ``type_name``."""
    return text(first(flat, ("finding_info.title", "type_name")))


def apply(table: FieldMap, flat: dict[str, Scalar]) -> list[tuple[str, str]]:
    """``(target key, text)`` for every row of ``table`` whose OCSF value is present."""
    pairs: list[tuple[str, str]] = []
    for key, sources in table:
        value = first(flat, sources)
        if value is not None:
            pairs.append((key, text(value)))
    return pairs


# Both formats draw these from the same OCSF keys.
ACTOR_USER = ("actor.user.name", "actor.process.user.name")
TARGET_USER = ("process.user.name", "file.owner.name")
OUTCOME = ("status",)
ACTION = ("disposition", "action", "remediation_action")
RULE_UID = ("finding_info.analytic.uid",)
CVE = ("vulnerabilities.0.cve.uid",)
MODULE = ("metadata.product.feature.name", "app.feature.name", "actor.app_name")
