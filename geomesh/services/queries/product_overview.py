"""Overview page: the product card, counts per state and severity, recent activity and KPIs
(rule pass rates, time to sign-off).

A constant number of statements whatever the product's size, each an aggregate over one
index that reads no table row (issue 16): items per (state, worst severity) from
``ix_item_product_worst_state``, open findings per severity from
``ix_finding_product_open_order``, items failing each rule from
``ix_finding_product_open_rule_item``, validated items from the state index, and the
staging → sign-off times from ``signoff_time`` (kept by every sign-off,
``services.approval_times``: no join of the product's items to their approvals). Only
numbers leave the database. The counts still walk index entries (no row is fetched); the
app computes the overview once per change of the product (``ui.cached``).
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import Integer, cast, exists, func, or_
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from geomesh.models import (
    AuditEvent,
    FindingRecord,
    Item,
    ItemState,
    Release,
    SignoffTime,
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

#: buckets of the staging → sign-off distribution the overview charts
SIGNOFF_BINS: Final = 12
#: states whose items no longer count towards the worst-severity breakdown
_GONE: Final = (ItemState.discarded, ItemState.superseded)


def overview(ws: Workspace, product_id: str) -> dict[str, Any]:
    """The product card, counts per state and severity, recent activity and KPIs."""
    config = product_config(ws, product_id)
    with ws.read() as session:
        product = get_product(session, product_id, hint=PRODUCT_HINT)
        version = current_version(session, product)
        states, worst = item_counts(session, product_id)
        severities = {s: 0 for s in SEVERITIES}
        for sev, n in session.exec(
            select(FindingRecord.severity, func.count())
            .where(FindingRecord.product_id == product_id, col(FindingRecord.open).is_(True))
            .group_by(col(FindingRecord.severity))
        ).all():
            severities[str(val(sev))] = int(n)
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


def item_counts(session: Session, product_id: str) -> tuple[dict[str, int], dict[str, int]]:
    """Items per state, and per worst open severity (``clean``: none) of the items that
    still count (not discarded or superseded): one grouped count over an index."""
    states: dict[str, int] = {}
    worst = {s: 0 for s in (*SEVERITIES, "clean")}
    for state, wsev, n in session.execute(
        sa_select(col(Item.state), col(Item.worst_severity), func.count())
        .where(col(Item.product_id) == product_id)
        .group_by(col(Item.state), col(Item.worst_severity))
    ).all():
        states[str(val(state))] = states.get(str(val(state)), 0) + int(n)
        if ItemState(state) not in _GONE:
            key = str(val(wsev)) if wsev else "clean"
            worst[key] += int(n)
    return states, worst


def rule_pass_rates(session: Session, product_id: str) -> list[dict[str, Any]]:
    """Per rule: of the validated items, the share with no open finding of that rule.

    Validated: every item past staging (it left staging through routing, which follows a
    validation run) and the staging items with a run (released from quarantine); the runs
    index is probed for the staging items only.
    """
    validated = session.execute(
        sa_select(func.count())
        .select_from(Item)
        .where(
            col(Item.product_id) == product_id,
            or_(
                col(Item.state) != ItemState.staging,
                exists().where(col(ValidationRun.item_id) == col(Item.id)),
            ),
        )
    ).scalar_one()
    total = int(validated or 0)
    failing = {
        str(rule): int(n)
        for rule, n in session.execute(
            sa_select(col(FindingRecord.rule_id), func.count(func.distinct(FindingRecord.item_id)))
            .where(col(FindingRecord.product_id) == product_id, col(FindingRecord.open).is_(True))
            .group_by(col(FindingRecord.rule_id))
        ).all()
    }
    out = []
    for rule_id in sorted(RULES):
        bad = failing.get(rule_id, 0)
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


def signoff_times(session: Session, product_id: str, *, bins: int = SIGNOFF_BINS) -> dict[str, Any]:
    """Seconds from staging (ingest) to the first approval of each item version (the
    ``signoff_time`` rows every sign-off keeps): count, median and maximum, and how many
    fall in each of ``bins`` equal buckets from 0 to the maximum. Three index aggregates."""
    seconds = col(SignoffTime.seconds)
    mine = col(SignoffTime.product_id) == product_id
    n, longest = session.execute(sa_select(func.count(), func.max(seconds)).where(mine)).one()
    if not n:
        return {"count": 0, "median_seconds": None, "max_seconds": None, "histogram": []}
    middle = session.execute(
        sa_select(seconds).where(mine).order_by(seconds).offset((n - 1) // 2).limit(2 - n % 2)
    ).scalars()
    values = [float(v) for v in middle]
    width = (float(longest) or 1.0) / bins
    counts = [0] * bins
    buckets = _bin_of(session, seconds, width).label("bucket")
    for k, m in session.execute(
        sa_select(buckets, func.count()).where(mine).group_by(buckets)
    ).all():
        counts[min(int(k), bins - 1)] += int(m)  # the longest time closes the last range
    return {
        "count": int(n),
        "median_seconds": round(sum(values) / len(values), 3),
        "max_seconds": round(float(longest), 3),
        "histogram": [
            {"from": round(k * width, 3), "to": round((k + 1) * width, 3), "items": m}
            for k, m in enumerate(counts)
        ],
    }


def _bin_of(session: Session, value: Any, width: float) -> Any:
    """``floor(value / width)`` for ``value >= 0`` (SQLite's CAST truncates, PostgreSQL's
    rounds: floor there)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.floor(value / width)
    return cast(value / width, Integer)
