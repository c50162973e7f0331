"""Registered policy: what a change of a product config means for governance.

Pure functions over two :class:`~geomesh.config.ProductConfig` values, used by
``services.products`` (refusing a caller config that differs from the registered one) and
``services.policy`` (changing the registered config):

* :func:`config_diff` lists the key paths that differ (``governance.approvals_required``,
  ``governance.escalation[ops].url``, …); :func:`render_diff` prints them one per line.
* :func:`classify_change` says whether a change *loosens* governance (it then waits for a
  second approver), *tightens* it, or is *neutral*, with a reason per key, and whether the
  spatial contract changed (the next release is then MAJOR).

The ``storage`` section is deployment (where the workspace is), not policy: it is never
compared.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from geomesh.config import DEFAULT_ROUTING, ProductConfig
from geomesh.validation.registry import RULES

#: config sections that are not policy and never compared
NOT_POLICY: Final = frozenset({"storage"})
#: a severity's weight: P1 is the most severe
SEVERITY_RANK: Final[dict[str, int]] = {"P1": 3, "P2": 2, "P3": 1}
#: a route's weight: rollback is the hardest, warn the softest (a missing route warns)
ROUTE_RANK: Final[dict[str, int]] = {"rollback": 3, "quarantine": 2, "warn": 1}
_MAX_VALUE_CHARS: Final = 200


class ChangeKind(StrEnum):
    initial = "initial"
    loosening = "loosening"
    tightening = "tightening"
    neutral = "neutral"


_MISSING: Final = object()


@dataclass(frozen=True)
class Change:
    """One differing key path; ``old``/``new`` is ``None`` where the key is absent."""

    path: str
    old: Any
    new: Any
    added: bool = False
    removed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "old": _short(self.old),
            "new": _short(self.new),
            "added": self.added,
            "removed": self.removed,
        }

    def old_text(self) -> str:
        return _text(self.old)

    def new_text(self) -> str:
        return _text(self.new)

    def describe(self) -> str:
        if self.added:
            return f"+ {self.path}: {_text(self.new)}"
        if self.removed:
            return f"- {self.path}: {_text(self.old)}"
        return f"~ {self.path}: {_text(self.old)} → {_text(self.new)}"


def _short(value: Any) -> Any:
    """Long strings (a boundary WKT) are cut in diffs; the full configs are in the history."""
    if isinstance(value, str) and len(value) > _MAX_VALUE_CHARS:
        return f"{value[:_MAX_VALUE_CHARS]}… ({len(value)} characters)"
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_short(v) for v in value]
    return value


def _text(value: Any) -> str:
    return json.dumps(_short(value), sort_keys=True, default=str)


def policy_view(config: ProductConfig) -> dict[str, Any]:
    """The config as JSON (secrets masked) without the sections that are not policy."""
    return {k: v for k, v in config.to_json_dict().items() if k not in NOT_POLICY}


def _named(values: list[Any]) -> dict[str, Any] | None:
    """A list of mappings that all have a distinct ``name`` (escalation targets), keyed."""
    if not values or not all(
        isinstance(v, dict) and isinstance(v.get("name"), str) for v in values
    ):
        return None
    keyed = {v["name"]: v for v in values}
    return keyed if len(keyed) == len(values) else None


def _diff(old: Any, new: Any, path: str, out: list[Change]) -> None:
    if old is _MISSING:
        out.append(Change(path, None, new, added=True))
        return
    if new is _MISSING:
        out.append(Change(path, old, None, removed=True))
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            _diff(old.get(key, _MISSING), new.get(key, _MISSING), f"{path}.{key}", out)
        return
    if isinstance(old, list) and isinstance(new, list):
        a, b = _named(old), _named(new)
        if a is not None and b is not None:
            for name in sorted(set(a) | set(b)):
                _diff(a.get(name, _MISSING), b.get(name, _MISSING), f"{path}[{name}]", out)
            return
    if old != new:
        out.append(Change(path, old, new))


def config_diff(old: ProductConfig, new: ProductConfig) -> list[Change]:
    """The key paths whose values differ between two configs (``storage`` ignored)."""
    a, b = policy_view(old), policy_view(new)
    out: list[Change] = []
    for section in sorted(set(a) | set(b)):
        _diff(a.get(section, _MISSING), b.get(section, _MISSING), section, out)
    return out


def render_diff(changes: Iterable[Change]) -> str:
    """One line per changed key path: ``~ path: old → new``, ``+ path: new``, ``- path: old``."""
    return "\n".join(c.describe() for c in changes)


@dataclass(frozen=True)
class Classification:
    kind: ChangeKind
    loosening: tuple[str, ...]
    tightening: tuple[str, ...]
    spatial_contract_changed: bool

    def to_json(self) -> dict[str, Any]:
        return {"loosening": list(self.loosening), "tightening": list(self.tightening)}


def _effective_severity(overrides: Mapping[str, str], rule_id: str) -> str | None:
    if rule_id in overrides:
        return overrides[rule_id]
    known = RULES.get(rule_id)
    return known.severity.value if known is not None else None


def _compare(
    what: str, before: int, after: int, old: object, new: object, loose: list[str], tight: list[str]
) -> None:
    if after < before:
        loose.append(f"{what}: {old} → {new}")
    elif after > before:
        tight.append(f"{what}: {old} → {new}")


def classify_change(old: ProductConfig, new: ProductConfig) -> Classification:
    """Is ``old`` → ``new`` a loosening, a tightening or a neutral change of governance?

    Loosening (any one makes the whole change loosening): fewer ``approvals_required``; a
    rule added to ``disabled_rules``; a rule's effective severity lowered (P1 > P2 > P3, an
    override or its removal); a route softened (rollback > quarantine > warn); ``strict``
    turned off; an escalation target removed, re-pointed to another URL, or receiving fewer
    severities or events; fewer webhook attempts. The opposite of each is tightening.
    Anything else (ingestion, metadata, source, the spatial contract) is neutral.
    """
    loose: list[str] = []
    tight: list[str] = []
    og, ng = old.governance, new.governance
    _compare(
        "governance.approvals_required",
        og.approvals_required,
        ng.approvals_required,
        og.approvals_required,
        ng.approvals_required,
        loose,
        tight,
    )
    _compare(
        "governance.webhook_max_attempts",
        og.webhook_max_attempts,
        ng.webhook_max_attempts,
        og.webhook_max_attempts,
        ng.webhook_max_attempts,
        loose,
        tight,
    )
    old_targets = {t.name: t for t in og.escalation}
    new_targets = {t.name: t for t in ng.escalation}
    for name in sorted(set(old_targets) | set(new_targets)):
        path = f"governance.escalation[{name}]"
        a, b = old_targets.get(name), new_targets.get(name)
        if b is None:
            loose.append(f"{path}: escalation target removed")
        elif a is None:
            tight.append(f"{path}: escalation target added")
        else:
            if a.url != b.url:
                loose.append(f"{path}.url: escalations go to another URL")
            for field in ("severities", "events"):
                before, after = set(getattr(a, field)), set(getattr(b, field))
                if before - after:
                    loose.append(f"{path}.{field}: no longer {', '.join(sorted(before - after))}")
                if after - before:
                    tight.append(f"{path}.{field}: now also {', '.join(sorted(after - before))}")
    ov, nv = old.validation, new.validation
    for rule_id in sorted(set(nv.disabled_rules) - set(ov.disabled_rules)):
        loose.append(f"validation.disabled_rules: {rule_id} disabled")
    for rule_id in sorted(set(ov.disabled_rules) - set(nv.disabled_rules)):
        tight.append(f"validation.disabled_rules: {rule_id} enabled again")
    for rule_id in sorted(set(ov.severity_overrides) | set(nv.severity_overrides)):
        a_sev = _effective_severity(ov.severity_overrides, rule_id)
        b_sev = _effective_severity(nv.severity_overrides, rule_id)
        if a_sev is None or b_sev is None:
            continue
        _compare(
            f"validation.severity_overrides.{rule_id}",
            SEVERITY_RANK[a_sev],
            SEVERITY_RANK[b_sev],
            a_sev,
            b_sev,
            loose,
            tight,
        )
    for sev in DEFAULT_ROUTING:
        a_route = ov.routing.get(sev, "warn")
        b_route = nv.routing.get(sev, "warn")
        _compare(
            f"validation.routing.{sev}",
            ROUTE_RANK[a_route],
            ROUTE_RANK[b_route],
            a_route,
            b_route,
            loose,
            tight,
        )
    _compare(
        "validation.strict", int(ov.strict), int(nv.strict), ov.strict, nv.strict, loose, tight
    )
    if loose:
        kind = ChangeKind.loosening
    elif tight:
        kind = ChangeKind.tightening
    else:
        kind = ChangeKind.neutral
    return Classification(
        kind=kind,
        loosening=tuple(loose),
        tightening=tuple(tight),
        spatial_contract_changed=old.spatial_contract() != new.spatial_contract(),
    )
