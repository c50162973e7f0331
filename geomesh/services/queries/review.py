"""Review page: the sign-off queue of a product and one item under review."""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select

from geomesh.models import FindingRecord, Item, ItemState
from geomesh.services.findings import finding_counts
from geomesh.services.gates import checksum_gate
from geomesh.services.lookup import chunks
from geomesh.services.queries._common import iso
from geomesh.services.queries.items import (
    item_detail,
    production_counterpart,
    verify_item_checksum,
)
from geomesh.services.queries.products import product_config
from geomesh.services.signoff import approvals_by_item, status_from
from geomesh.workspace import Workspace


def _checksum_status(open_rules: set[str]) -> str:
    if any(r.startswith("GM-CHECKSUM") for r in open_rules):
        return "MISMATCH"
    return "verified"


def review_queue(ws: Workspace, product_id: str, *, verify_limit: int = 50) -> list[dict[str, Any]]:
    """Items awaiting sign-off (state ``validation``) with findings, approvals and checksum.

    The checksum column streams the stored object of the first ``verify_limit`` items now
    ("verified" / "MISMATCH: …"); beyond that it reports the last validation run's verdict.
    """
    config = product_config(ws, product_id)
    required = config.governance.approvals_required
    with ws.read() as session:
        items = session.exec(
            select(Item)
            .where(Item.product_id == product_id, Item.state == ItemState.validation)
            .order_by(col(Item.created_at), col(Item.id))
        ).all()
        ids = [i.id for i in items]
        counts = finding_counts(session, ids)
        approvals = approvals_by_item(session, ids)
        open_rules: dict[str, set[str]] = {}
        for chunk in chunks(ids):
            for iid, rid in session.exec(
                select(FindingRecord.item_id, FindingRecord.rule_id).where(
                    col(FindingRecord.item_id).in_(chunk), col(FindingRecord.open).is_(True)
                )
            ).all():
                open_rules.setdefault(iid, set()).add(rid)
        prod_sources = set(
            session.exec(
                select(Item.source_key).where(
                    Item.product_id == product_id, Item.state == ItemState.production
                )
            ).all()
        )
        out: list[dict[str, Any]] = []
        for i in items:
            status = status_from(i, approvals[i.id], required)
            rejected = sorted({actor for actor, _ in status.rejected_by})
            c = counts[i.id]
            if len(out) < verify_limit:
                gate = checksum_gate(ws, i)
                checksum = "verified" if gate.ok else "MISMATCH"
            else:
                checksum = _checksum_status(open_rules.get(i.id, set())) + " (last run)"
            out.append(
                {
                    "id": i.id,
                    "source": i.source.rsplit("/", 1)[-1],
                    "submitted_by": i.submitted_by,
                    "P1": c["P1"],
                    "P2": c["P2"],
                    "P3": c["P3"],
                    "checksum": checksum,
                    "approvals": f"{len(status.approved_by)}/{required}",
                    "approved_by": ", ".join(status.approved_by),
                    "rejected_by": ", ".join(rejected),
                    "replaces_production": i.source_key in prod_sources,
                    "staged_at": iso(i.created_at),
                }
            )
        return out


def review_item(ws: Workspace, item_id: str) -> dict[str, Any]:
    """One item under review: its detail, the production version of the same tile with the
    field diff (None when the tile is new), and a live checksum verification."""
    detail = item_detail(ws, item_id)
    detail["production"] = production_counterpart(ws, item_id)
    detail["checksum_now"] = verify_item_checksum(ws, item_id)
    return detail
