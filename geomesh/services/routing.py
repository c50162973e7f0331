"""Severity routing after validation, escalation through the outbox, webhook delivery.

Routing table per product (``validation.routing``; default P1 rollback, P2 quarantine,
P3 warn):

* ``warn`` (or no findings): log a warning and proceed: staging → validation.
* ``quarantine``: halt the tile: its object is copied to the ``quarantine`` area, the item
  becomes ``quarantined`` with ``quarantine_reason`` and ``quarantine_key``.
* ``rollback``: the item leaves staging (→ ``rolled_back``), an item it superseded returns
  to its earlier state where the lifecycle allows, cached previews under
  ``meta/previews/<item_id>`` are deleted and, when clipping can fix a boundary failure, a
  ``reclip`` task is queued.

Escalation webhooks go to the outbox (``services.outbox``) in the SAME transaction as the
routing event.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from sqlmodel import Session, col, select

from geomesh import auth, faults, lifecycle
from geomesh.config import ProductConfig, RouteAction
from geomesh.models import (
    AuditEvent,
    Item,
    ItemState,
    Severity,
)
from geomesh.services.findings import latest_run
from geomesh.services.lookup import get_item, items_by_id
from geomesh.services.outbox import enqueue_escalations
from geomesh.services.products import check_config, resolve_config
from geomesh.services.tasks import enqueue as enqueue_task
from geomesh.validation.findings import Finding, count_by_severity, sort_findings, worst_severity
from geomesh.workspace import Workspace

log = logging.getLogger(__name__)

FINDING_EVENT: Final = "finding"
BOUNDARY_RULES: Final = ("GM-BOUNDARY-001", "GM-BOUNDARY-002")
MAX_PAYLOAD_FINDINGS: Final = 50
PERMISSION: Final[dict[str, str]] = {
    "proceed": "validate",
    "warn": "validate",
    "quarantine": "quarantine",
    "rollback": "rollback",
}


@dataclass
class RouteOutcome:
    """What routing did to one item."""

    item_id: str
    #: proceed (no findings) | warn | quarantine | rollback | none (not routable now)
    action: str
    state: str
    worst_severity: str | None
    counts: dict[str, int]
    findings: list[Finding] = field(default_factory=list, repr=False)
    changed: bool = True
    outbox_ids: list[int] = field(default_factory=list)
    task_id: int | None = None
    restored_item_id: str | None = None
    invalidated: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "action": self.action,
            "state": self.state,
            "worst_severity": self.worst_severity,
            "counts": self.counts,
            "changed": self.changed,
            "outbox_ids": self.outbox_ids,
            "task_id": self.task_id,
            "restored_item_id": self.restored_item_id,
            "invalidated": self.invalidated,
            "findings": [f.to_json() for f in self.findings],
        }


def route_action(config: ProductConfig, findings: Iterable[Finding]) -> str:
    """The routing table's action for the worst finding ("proceed" when there is none)."""
    worst = worst_severity(findings)
    if worst is None:
        return "proceed"
    action: RouteAction | None = config.validation.routing.get(worst.value)
    return action or "warn"


#: root causes first in a quarantine reason: a missing CRS explains missing proj:bbox
_CAUSE_ORDER: Final = ("CHECKSUM", "CRS", "BOUNDARY", "COG", "DRIFT", "JSON", "SCHEMA", "CONTRACT")


def _cause_rank(rule_id: str) -> int:
    family = rule_id.split("-")[1] if rule_id.count("-") >= 2 else ""
    return _CAUSE_ORDER.index(family) if family in _CAUSE_ORDER else len(_CAUSE_ORDER)


def summarize(findings: list[Finding]) -> str:
    """One line: the worst severity, then each of its rules (root causes first) once."""
    worst = worst_severity(findings)
    if worst is None:
        return "no findings"
    by_rule: dict[str, list[Finding]] = {}
    for f in sort_findings(findings):
        if f.severity is worst:
            by_rule.setdefault(f.rule_id, []).append(f)
    parts = []
    for rule_id in sorted(by_rule, key=lambda r: (_cause_rank(r), r)):
        group = by_rule[rule_id]
        more = f" (+{len(group) - 1} more)" if len(group) > 1 else ""
        parts.append(f"{rule_id} {group[0].message}{more}")
    return f"{worst.value}: " + "; ".join(parts)


def _latest_run_id(session: Session, item_id: str) -> int | None:
    run = latest_run(session, item_id)
    return run.id if run is not None else None


def route_item(
    ws: Workspace,
    config: ProductConfig,
    item_id: str,
    findings: list[Finding],
    *,
    actor: str,
) -> RouteOutcome:
    """Apply the product's routing table to a validated item. Idempotent.

    Only items in ``staging`` or ``validation`` are routed; for any other state nothing
    changes and the outcome says ``action="none"``.
    """
    config = resolve_config(ws, config)  # the registered routing table decides
    outcome = planned_route(config, item_id, findings)
    action = outcome.action
    with ws.read() as session:
        auth.require(session, actor, PERMISSION[action])
        item = get_item(
            session,
            item_id,
            product_id=config.product_id,
            hint="see `geomesh items list` for item ids",
        )
        routable = ItemState(item.state) in (ItemState.staging, ItemState.validation)
        object_key, stac_key = item.object_key, item.stac_key
    if routable and action == "quarantine":
        copy_to_quarantine(ws, object_key, stac_key)

    with ws.transaction() as session:
        auth.require(session, actor, PERMISSION[action])
        check_config(session, config)  # the policy did not change since it was resolved
        # locked: a concurrent routing of the same item waits and then finds it routed
        item = get_item(session, item_id, lock=True, hint="see `geomesh items list` for item ids")
        if action == "rollback" and item.supersedes:
            # the version it may restore, locked before the first audit event (head last)
            items_by_id(session, [item.supersedes], lock=True)
        apply_route(session, config, item, outcome, actor=actor)

    after_route(ws, outcome)
    return outcome


def planned_route(config: ProductConfig, item_id: str, findings: list[Finding]) -> RouteOutcome:
    """What the routing table says for ``findings`` (worst first), before anything changes."""
    findings = sort_findings(findings)
    worst = worst_severity(findings)
    return RouteOutcome(
        item_id=item_id,
        action=route_action(config, findings),
        state="",
        worst_severity=worst.value if worst else None,
        counts=count_by_severity(findings),
        findings=findings,
    )


def copy_to_quarantine(ws: Workspace, object_key: str, stac_key: str) -> None:
    """Copy a staged object and its item JSON to the quarantine area, BEFORE the routing
    transaction (idempotent): the row must never point at a missing quarantine object."""
    ws.store.copy("staging", "quarantine", object_key)
    faults.point("quarantine.copied")
    if ws.store.exists("staging", stac_key):
        ws.store.copy("staging", "quarantine", stac_key)


def apply_route(
    session: Session,
    config: ProductConfig,
    item: Item,
    outcome: RouteOutcome,
    *,
    actor: str,
    run_id: int | None = None,
) -> None:
    """Route ``item`` by ``outcome.action`` in the caller's transaction, which holds the
    permission for it and has locked the item (and, for a rollback, the version it
    superseded) before its first audit event: the state change with its audit event, an
    escalation in the outbox, a re-clip task. Sets ``outcome.state`` and what was done.
    ``run_id``: the validation run the findings come from (None: the item's latest).
    """
    state = ItemState(item.state)
    if run_id is None:
        run_id = _latest_run_id(session, item.id)
    details: dict[str, Any] = {
        "run_id": run_id,
        "worst_severity": outcome.worst_severity,
        "counts": outcome.counts,
        "route": outcome.action,
    }
    if state not in (ItemState.staging, ItemState.validation):
        outcome.action, outcome.changed = "none", False
    elif outcome.action in ("proceed", "warn"):
        if state is ItemState.staging:
            lifecycle.transition(
                session,
                item,
                ItemState.validation,
                actor=actor,
                action="route.proceed",
                details=details,
            )
        else:
            outcome.changed = False
    elif outcome.action == "quarantine":
        item.quarantine_reason = summarize(outcome.findings)
        item.quarantine_key = item.object_key
        lifecycle.transition(
            session,
            item,
            ItemState.quarantined,
            actor=actor,
            action="quarantine",
            details={**details, "reason": item.quarantine_reason},
        )
    else:  # rollback
        lifecycle.transition(
            session,
            item,
            ItemState.rolled_back,
            actor=actor,
            action="rollback",
            details=details,
        )
        outcome.restored_item_id = _restore_superseded(session, item, actor=actor)
        outcome.task_id = _queue_reclip(session, config, item, outcome.findings)
    if outcome.changed and outcome.findings:
        outcome.outbox_ids = enqueue_escalations(
            session,
            config,
            event=FINDING_EVENT,
            item=item,
            key=f"run:{run_id}:{outcome.action}",
            severities={f.severity for f in outcome.findings},
            payload={
                "item_id": item.id,
                "product_id": item.product_id,
                "action": outcome.action,
                "state": ItemState(item.state).value,
                "worst_severity": outcome.worst_severity,
                "counts": outcome.counts,
                "run_id": run_id,
                "content_digest": item.content_digest,
                "quarantine_reason": (
                    item.quarantine_reason if outcome.action == "quarantine" else None
                ),
                "reclip_task_id": outcome.task_id,
                "findings": [
                    {k: f.to_json()[k] for k in ("rule_id", "severity", "path", "message")}
                    for f in outcome.findings[:MAX_PAYLOAD_FINDINGS]
                ],
            },
        )
    outcome.state = ItemState(item.state).value
    faults.point("route.before_commit")


def after_route(ws: Workspace, outcome: RouteOutcome) -> None:
    """What follows a committed route: a rolled-back item's cached previews go, a warning
    is logged for an item that proceeds with warnings."""
    if outcome.changed and outcome.action == "rollback":
        outcome.invalidated = invalidate_previews(ws, outcome.item_id)
    if outcome.changed and outcome.action == "warn":
        log.warning(
            "item %s proceeds with warnings: %s",
            outcome.item_id,
            summarize(outcome.findings),
            extra={"item": outcome.item_id},
        )


def _restore_superseded(session: Session, item: Item, *, actor: str) -> str | None:
    """Return the version ``item`` superseded to its earlier state, where that is legal
    (the caller locked that row before this transaction's first audit event: ``route_item``
    itself, ``ingest.insert_item`` in an admission)."""
    if not item.supersedes:
        return None
    prev = session.get(Item, item.supersedes)
    if prev is None or ItemState(prev.state) is not ItemState.superseded:
        return None
    event = session.exec(
        select(AuditEvent)
        .where(AuditEvent.target == prev.id, AuditEvent.state_after == ItemState.superseded.value)
        .order_by(col(AuditEvent.seq).desc())
        .limit(1)
    ).first()
    if event is None or not event.state_before:
        return None
    prior = ItemState(event.state_before)
    if not lifecycle.can_transition(ItemState.superseded, prior):
        return None
    lifecycle.transition(
        session,
        prev,
        prior,
        actor=actor,
        action="rollback.restore",
        details={"rolled_back": item.id},
    )
    return prev.id


def _queue_reclip(
    session: Session, config: ProductConfig, item: Item, findings: list[Finding]
) -> int | None:
    """A re-clip task when a boundary failure caused the rollback and clipping is off."""
    if config.ingestion.clip:
        return None
    boundary = [f for f in findings if f.rule_id in BOUNDARY_RULES and f.severity is Severity.P1]
    if not boundary:
        return None
    task = enqueue_task(
        session,
        kind="reclip",
        product_id=item.product_id,
        item_id=item.id,
        dedupe_key=f"reclip:{item.id}",
        details={
            "source": item.source,
            "rules": sorted({f.rule_id for f in boundary}),
            "overlap_fraction": boundary[0].context.get("overlap_fraction"),
            "hint": "`geomesh worker` re-ingests the source clipped to the domain",
        },
    )
    return task.id


def invalidate_previews(ws: Workspace, item_id: str) -> list[str]:
    """Delete cached previews/manifests of ``item_id`` (meta keys under previews/<item_id>)."""
    prefix = f"previews/{item_id}"
    removed: list[str] = []
    for key in list(ws.store.list("meta", prefix)):
        rest = key[len(prefix) :]
        if rest == "" or rest[0] in "/.":
            ws.store.delete("meta", key)
            removed.append(key)
    return removed
