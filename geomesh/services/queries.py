"""Read models for the CLI and the app (no state changes here)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from geomesh.catalog import Catalog
from geomesh.errors import NotFound
from geomesh.models import FindingRecord, Item, ItemState


def finding_counts(
    session: Session, item_ids: Iterable[str] | None = None
) -> dict[str, dict[str, int]]:
    """Open findings per item and severity: {item_id: {"P1": n, "P2": n, "P3": n}}."""
    stmt = (
        select(FindingRecord.item_id, FindingRecord.severity, func.count())
        .where(col(FindingRecord.open).is_(True))
        .group_by(col(FindingRecord.item_id), col(FindingRecord.severity))
    )
    ids = list(item_ids) if item_ids is not None else None
    if ids is not None:
        stmt = stmt.where(col(FindingRecord.item_id).in_(ids))
    out: dict[str, dict[str, int]] = {}
    for item_id, severity, n in session.exec(stmt).all():
        out.setdefault(item_id, {"P1": 0, "P2": 0, "P3": 0})[
            str(severity.value if hasattr(severity, "value") else severity)
        ] = int(n)
    return out


def _checksum(item: Item) -> str | None:
    asset = (item.stac.get("assets") or {}).get("data") or {}
    value = asset.get("file:checksum")
    return str(value) if value is not None else None


def item_summary(item: Item, counts: dict[str, int] | None) -> dict[str, Any]:
    return {
        "id": item.id,
        "product_id": item.product_id,
        "state": item.state.value,
        "source": item.source,
        "checksum": _checksum(item),
        "digest": item.content_digest,
        "size": item.size,
        "submitted_by": item.submitted_by,
        "supersedes": item.supersedes,
        "worst_severity": item.worst_severity.value if item.worst_severity else None,
        "quarantine_reason": item.quarantine_reason,
        "findings": counts or {"P1": 0, "P2": 0, "P3": 0},
        "created_at": item.created_at.isoformat(),
        "updated_at": item.updated_at.isoformat(),
    }


def list_items(
    cat: Catalog, *, product_id: str | None = None, state: str | ItemState | None = None
) -> list[dict[str, Any]]:
    with cat.read() as session:
        stmt = select(Item).order_by(col(Item.created_at))
        if product_id:
            stmt = stmt.where(Item.product_id == product_id)
        if state:
            stmt = stmt.where(Item.state == ItemState(state))
        items = session.exec(stmt).all()
        counts = finding_counts(session)
        return [item_summary(i, counts.get(i.id)) for i in items]


def get_item(cat: Catalog, item_id: str) -> dict[str, Any]:
    with cat.read() as session:
        item = session.get(Item, item_id)
        if item is None:
            raise NotFound(f"item {item_id!r} does not exist", hint="see `geomesh items list`")
        summary = item_summary(item, finding_counts(session, [item_id]).get(item_id))
        summary["stac"] = item.stac
        return summary
