"""Overview page: the product card, counts per state and severity, recent activity and KPIs
(rule pass rates, time to sign-off)."""

from __future__ import annotations

import statistics
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from geomesh.models import (
    Approval,
    AuditEvent,
    Decision,
    FindingRecord,
    Item,
    ItemState,
    Release,
    ValidationRun,
)
from geomesh.services.lookup import get_product
from geomesh.services.queries._common import SEVERITIES, iso, val
from geomesh.services.queries.products import (
    PRODUCT_HINT,
    boundary_geojson,
    current_version,
    product_config,
)
from geomesh.validation.registry import RULES
from geomesh.workspace import Workspace


def overview(ws: Workspace, product_id: str) -> dict[str, Any]:
    """The product card, counts per state and severity, recent activity and KPIs."""
    config = product_config(ws, product_id)
    with ws.read() as session:
        product = get_product(session, product_id, hint=PRODUCT_HINT)
        version = current_version(session, product)
        states = {
            str(getattr(s, "value", s)): int(n)
            for s, n in session.exec(
                select(Item.state, func.count())
                .where(Item.product_id == product_id)
                .group_by(col(Item.state))
            ).all()
        }
        sev_rows = session.exec(
            select(FindingRecord.severity, func.count())
            .where(FindingRecord.product_id == product_id, col(FindingRecord.open).is_(True))
            .group_by(col(FindingRecord.severity))
        ).all()
        severities = {s: 0 for s in SEVERITIES}
        for sev, n in sev_rows:
            severities[str(val(sev))] = int(n)
        worst = {s: 0 for s in (*SEVERITIES, "clean")}
        for wsev, n in session.exec(
            select(Item.worst_severity, func.count())
            .where(Item.product_id == product_id)
            .where(col(Item.state).notin_([ItemState.discarded, ItemState.superseded]))
            .group_by(col(Item.worst_severity))
        ).all():
            worst[str(val(wsev)) if wsev else "clean"] = int(n)
        releases_n = session.exec(
            select(func.count()).select_from(Release).where(Release.product_id == product_id)
        ).one()
        recent = session.exec(
            select(AuditEvent)
            .where(AuditEvent.product_id == product_id)
            .order_by(col(AuditEvent.seq).desc())
            .limit(15)
        ).all()
        activity = [
            {
                "time": iso(e.timestamp),
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "state": f"{e.state_before or ''} → {e.state_after or ''}"
                if e.state_before or e.state_after
                else "",
            }
            for e in recent
        ]
        rates = rule_pass_rates(session, product_id)
        signoff = signoff_times(session, product_id)
    meta = config.product_metadata
    return {
        "id": product_id,
        "title": meta.title or product_id,
        "description": meta.description or "",
        "current_version": version,
        "releases": int(releases_n),
        "lifecycle_stage": meta.lifecycle_stage,
        "platform": meta.platform,
        "instruments": list(meta.instruments or []),
        "processing_level": meta.processing_level,
        "approvals_required": config.governance.approvals_required,
        "crs": config.spatial_domain.crs,
        "boundary": boundary_geojson(config),
        "boundary_bounds": list(config.spatial_domain.boundary.bounds),
        "states": states,
        "severities": severities,
        "worst_severity": worst,
        "activity": activity,
        "rule_pass_rates": rates,
        "signoff": signoff,
    }


def rule_pass_rates(session: Session, product_id: str) -> list[dict[str, Any]]:
    """Per rule: of the validated items, the share with no open finding of that rule."""
    validated = session.exec(
        select(func.count(func.distinct(ValidationRun.item_id)))
        .join(Item, col(Item.id) == col(ValidationRun.item_id))
        .where(Item.product_id == product_id)
    ).one()
    total = int(validated or 0)
    failing = dict(
        session.exec(
            select(FindingRecord.rule_id, func.count(func.distinct(FindingRecord.item_id)))
            .where(FindingRecord.product_id == product_id, col(FindingRecord.open).is_(True))
            .group_by(col(FindingRecord.rule_id))
        ).all()
    )
    out = []
    for rule_id in sorted(RULES):
        bad = int(failing.get(rule_id, 0))
        rate = (total - bad) / total if total else None
        out.append(
            {
                "rule": rule_id,
                "severity": RULES[rule_id].severity.value,
                "items_failing": bad,
                "items_validated": total,
                "pass_rate": rate,
            }
        )
    return out


def signoff_times(session: Session, product_id: str) -> dict[str, Any]:
    """Seconds from staging (ingest) to the first approval of each item version."""
    rows = session.exec(
        select(Item.id, Item.created_at, func.min(Approval.created_at))
        .join(Approval, col(Approval.item_id) == col(Item.id))
        .where(Item.product_id == product_id, Approval.decision == Decision.approve)
        .where(col(Approval.content_digest) == col(Item.content_digest))
        .group_by(col(Item.id), col(Item.created_at))
    ).all()
    per_item: list[dict[str, Any]] = []
    seconds: list[float] = []
    for item_id, created, approved in rows:
        if created is None or approved is None:
            continue
        delta = (approved.replace(tzinfo=None) - created.replace(tzinfo=None)).total_seconds()
        seconds.append(round(max(delta, 0.0), 3))
        per_item.append({"item_id": item_id, "seconds": seconds[-1]})
    return {
        "count": len(per_item),
        "median_seconds": statistics.median(seconds) if seconds else None,
        "max_seconds": max(seconds) if seconds else None,
        "items": per_item,
    }
