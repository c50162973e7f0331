"""The quarantine lifecycle: list, inspect, re-validate, release to staging, discard.

A P2 item (by default) is quarantined by routing. After the cause is fixed, e.g. a
severity override in the product config or a schema added to the offline store,
``revalidate`` records a new validation run; ``release`` then moves the item back to
``staging`` only if its open findings no longer route it to quarantine or rollback.
``discard`` ends it, with a reason. Every change is audited via ``lifecycle.transition``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from geomesh import auth, lifecycle
from geomesh.config import ProductConfig
from geomesh.errors import InvalidTransition, QuarantineBlocked
from geomesh.models import AuditEvent, Item, ItemState
from geomesh.services.finding_counts import finding_counts
from geomesh.services.findings import open_findings
from geomesh.services.lookup import get_item
from geomesh.services.products import check_config
from geomesh.services.routing import route_action
from geomesh.services.validation import validate_item
from geomesh.validation.findings import Finding, count_by_severity, worst_severity
from geomesh.workspace import Workspace

_HINT = "see `geomesh quarantine list` for item ids"


def _require_quarantined(item: Item, target: ItemState) -> None:
    if ItemState(item.state) is not ItemState.quarantined:
        raise InvalidTransition(ItemState(item.state).value, target.value, item_id=item.id)


def entry_json(item: Item, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": item.id,
        "product_id": item.product_id,
        "state": ItemState(item.state).value,
        "source": item.source,
        "quarantine_reason": item.quarantine_reason,
        "quarantine_key": item.quarantine_key,
        "worst_severity": item.worst_severity.value if item.worst_severity else None,
        "findings": counts,
        "updated_at": item.updated_at.isoformat(),
    }


def list_quarantined(ws: Workspace, *, product_id: str | None = None) -> list[dict[str, Any]]:
    """Quarantined items (oldest first) with their reason and open finding counts."""
    with ws.read() as session:
        stmt = (
            select(Item)
            .where(Item.state == ItemState.quarantined)
            .order_by(col(Item.updated_at), col(Item.id))
        )
        if product_id is not None:
            stmt = stmt.where(Item.product_id == product_id)
        items = session.exec(stmt).all()
        counts = finding_counts(session, [i.id for i in items])
        return [entry_json(i, counts[i.id]) for i in items]


def show_quarantined(ws: Workspace, item_id: str) -> dict[str, Any]:
    """One item: its quarantine record, open findings and lifecycle history."""
    with ws.read() as session:
        item = get_item(session, item_id, hint=_HINT)
        findings = open_findings(session, item_id)
        history = session.exec(
            select(AuditEvent).where(AuditEvent.target == item_id).order_by(col(AuditEvent.seq))
        ).all()
        out = entry_json(item, count_by_severity(findings))
        out["open_findings"] = [f.to_json() for f in findings]
        out["history"] = [
            {
                "seq": e.seq,
                "timestamp": e.timestamp.isoformat(),
                "actor": e.actor,
                "action": e.action,
                "state_before": e.state_before,
                "state_after": e.state_after,
                "details": e.details,
            }
            for e in history
        ]
        return out


@dataclass
class RevalidateResult:
    item_id: str
    findings: list[Finding]
    #: what routing would do now: release is possible when this is "warn" or "proceed"
    route: str

    @property
    def releasable(self) -> bool:
        return self.route in ("warn", "proceed")

    def to_json(self) -> dict[str, Any]:
        worst = worst_severity(self.findings)
        return {
            "item_id": self.item_id,
            "route": self.route,
            "releasable": self.releasable,
            "worst_severity": worst.value if worst else None,
            "counts": count_by_severity(self.findings),
            "findings": [f.to_json() for f in self.findings],
        }


def revalidate(
    ws: Workspace, config: ProductConfig, item_id: str, *, actor: str, strict: bool = False
) -> RevalidateResult:
    """Validate a quarantined item again (after a fix). Idempotent; the item stays put."""
    with ws.read() as session:
        auth.require(session, actor, "quarantine")
        config = check_config(session, config)  # the registered policy decides
        _require_quarantined(
            get_item(session, item_id, product_id=config.product_id, hint=_HINT),
            ItemState.staging,
        )
    findings = validate_item(ws, config, item_id, actor=actor, strict=strict)
    return RevalidateResult(item_id, findings, route_action(config, findings))


def release(
    ws: Workspace, config: ProductConfig, item_id: str, *, actor: str, note: str | None = None
) -> str:
    """Move a quarantined item back to staging once its open findings allow it.

    Releasing an item that is already back in staging after a release is a no-op.
    Returns the item's state.
    """
    with ws.transaction() as session:
        auth.require(session, actor, "quarantine.release")
        config = check_config(session, config)  # the registered routing table decides
        # locked: a concurrent release waits, then finds it released (a no-op)
        item = get_item(session, item_id, product_id=config.product_id, lock=True, hint=_HINT)
        state = ItemState(item.state)
        if state is ItemState.staging and _last_action(session, item_id) == "quarantine.release":
            return state.value
        _require_quarantined(item, ItemState.staging)
        findings = open_findings(session, item_id)
        route = route_action(config, findings)
        if route not in ("warn", "proceed"):
            worst = worst_severity(findings)
            raise QuarantineBlocked(
                f"item {item_id!r} still has open {worst.value if worst else ''} findings that "
                f"route it to {route} ({', '.join(sorted({f.rule_id for f in findings}))})",
                hint=f"fix them, then `geomesh quarantine revalidate CONFIG {item_id}` and release",
            )
        reason = item.quarantine_reason
        item.quarantine_reason = None
        item.quarantine_key = None
        lifecycle.transition(
            session,
            item,
            ItemState.staging,
            actor=actor,
            action="quarantine.release",
            details={"quarantine_reason": reason, "note": note},
        )
        return ItemState.staging.value


def discard(ws: Workspace, item_id: str, *, actor: str, reason: str) -> str:
    """End a quarantined item with a reason (kept in the audit trail). Idempotent."""
    reason = reason.strip()
    if not reason:
        raise QuarantineBlocked(
            f"discarding item {item_id!r} needs a reason", hint="pass --reason 'why'"
        )
    with ws.transaction() as session:
        auth.require(session, actor, "quarantine.discard")
        item = get_item(session, item_id, lock=True, hint=_HINT)  # a concurrent discard waits
        if ItemState(item.state) is ItemState.discarded:
            return ItemState.discarded.value
        _require_quarantined(item, ItemState.discarded)
        lifecycle.transition(
            session,
            item,
            ItemState.discarded,
            actor=actor,
            action="quarantine.discard",
            details={"reason": reason, "quarantine_reason": item.quarantine_reason},
        )
        return ItemState.discarded.value


def _last_action(session: Session, item_id: str) -> str | None:
    ev = session.exec(
        select(AuditEvent)
        .where(AuditEvent.target == item_id, col(AuditEvent.state_after).is_not(None))
        .order_by(col(AuditEvent.seq).desc())
        .limit(1)
    ).first()
    return ev.action if ev is not None else None
