"""Items: `geomesh items show`, and the item detail the map, quarantine and review pages
show for one item (summary, raster facts, findings, history, production counterpart, a live
checksum check). Lists of items are :mod:`.item_list`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from geomesh.models import Approval, AuditEvent, Item, ItemState
from geomesh.releases import diff_json
from geomesh.services.finding_counts import finding_counts, zero_counts
from geomesh.services.gates import cached_checksum_gate, checksum_gate
from geomesh.services.lookup import get_item as lookup_item
from geomesh.services.queries._common import iso, val
from geomesh.services.queries.findings import findings_table
from geomesh.workspace import Workspace

#: what an "item does not exist" error from the list / detail views tells the user
ITEM_HINT = "see `geomesh items list`"


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
        "findings": counts or zero_counts(),
        "created_at": item.created_at.isoformat(),
        "updated_at": item.updated_at.isoformat(),
    }


def get_item(ws: Workspace, item_id: str) -> dict[str, Any]:
    with ws.read() as session:
        item = lookup_item(session, item_id, hint=ITEM_HINT)
        summary = item_summary(item, finding_counts(session, [item_id]).get(item_id))
        summary["stac"] = item.stac
        return summary


def state_counts(ws: Workspace, product_id: str) -> dict[str, int]:
    with ws.read() as session:
        return {
            str(val(s)): int(n)
            for s, n in session.exec(
                select(Item.state, func.count())
                .where(Item.product_id == product_id)
                .group_by(col(Item.state))
            ).all()
        }


def item_detail(ws: Workspace, item_id: str) -> dict[str, Any]:
    """Everything a reviewer looks at for one item: summary, raster, findings, history."""
    with ws.read() as session:
        item = lookup_item(session, item_id, hint=ITEM_HINT)
        summary = item_summary(item, finding_counts(session, [item_id]).get(item_id))
        approvals = session.exec(
            select(Approval).where(Approval.item_id == item_id).order_by(col(Approval.created_at))
        ).all()
        history = session.exec(
            select(AuditEvent).where(AuditEvent.target == item_id).order_by(col(AuditEvent.seq))
        ).all()
        summary["approvals"] = [
            {
                "actor": a.actor,
                "decision": a.decision.value,
                "comment": a.comment,
                "current_content": a.content_digest == item.content_digest,
                "time": iso(a.created_at),
            }
            for a in approvals
        ]
        summary["history"] = [
            {
                "time": iso(e.timestamp),
                "actor": e.actor,
                "action": e.action,
                "from": e.state_before,
                "to": e.state_after,
            }
            for e in history
        ]
        summary["source_key"] = item.source_key
        summary["stac"] = item.stac
        summary["derived_from"] = item.derived_from
    summary["raster"] = raster_facts(summary["stac"])
    table = findings_table(ws, item_id=item_id, open_only=True)
    summary["open_findings"] = [
        dict(zip(table, values, strict=True)) for values in zip(*table.values(), strict=True)
    ]
    return summary


def raster_facts(stac: dict[str, Any]) -> dict[str, Any]:
    """What the item says about its raster (CRS, shape, bands, size), for display."""
    props = stac.get("properties") or {}
    asset = (stac.get("assets") or {}).get("data") or {}
    bands = asset.get("raster:bands") or []
    return {
        "crs": props.get("proj:code") or ("WKT2" if props.get("proj:wkt2") else None),
        "shape": props.get("proj:shape"),
        "bbox_4326": stac.get("bbox"),
        "datetime": props.get("datetime"),
        "bands": len(bands),
        "data_types": sorted({str(b.get("data_type")) for b in bands if b.get("data_type")}),
        "nodata": sorted({str(b.get("nodata")) for b in bands if "nodata" in b}),
        "resolution": bands[0].get("spatial_resolution") if bands else None,
        "file_size": asset.get("file:size"),
        "checksum": asset.get("file:checksum"),
        "platform": props.get("platform"),
        "instruments": props.get("instruments"),
        "processing_level": props.get("processing:level"),
    }


def production_counterpart(ws: Workspace, item_id: str) -> dict[str, Any] | None:
    """The production version of the same tile (same source_key) and the field diff.

    None when no version of the tile is in production.
    """
    with ws.read() as session:
        item = lookup_item(session, item_id, hint="")
        # the tile's versions in production (one, normally) from ix_item_product_source_state;
        # newest first in Python: an ORDER BY created_at makes SQLite walk every production
        # item of the product in the state index instead
        versions = session.exec(
            select(Item).where(
                Item.product_id == item.product_id,
                Item.source_key == item.source_key,
                Item.state == ItemState.production,
                col(Item.id) != item.id,
            )
        ).all()
        if not versions:
            return None
        prod = max(versions, key=lambda v: v.created_at)
        return {
            "production_id": prod.id,
            "production_digest": prod.content_digest,
            "production_raster": raster_facts(prod.stac),
            "changes": diff_json(prod.stac, item.stac),
        }


def verify_item_checksum(ws: Workspace, item_id: str, *, cached: bool = False) -> dict[str, Any]:
    """Compare the stored object's SHA-256 with file:checksum (read-only for the catalog).

    ``cached``: the hash remembered for the unchanged object (one stat), computed now only
    when there is none; else the object is streamed now.
    """
    with ws.read() as session:
        item = lookup_item(session, item_id, hint="")
    gate = (cached_checksum_gate(ws, item, verify=True) if cached else None) or checksum_gate(
        ws, item
    )
    return {"ok": gate.ok, "detail": gate.detail}
