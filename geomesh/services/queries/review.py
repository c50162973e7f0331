"""Review page: the sign-off queue of a product and one item under review."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import aliased
from sqlmodel import col, select

from geomesh.models import Item, ItemState
from geomesh.services.finding_counts import finding_counts
from geomesh.services.gates import cached_checksum_gate, checksum_gate
from geomesh.services.lookup import items_by_id
from geomesh.services.queries._common import iso
from geomesh.services.queries.items import (
    item_detail,
    production_counterpart,
    verify_item_checksum,
)
from geomesh.services.queries.products import product_config
from geomesh.services.signoff import approvals_by_item, status_from
from geomesh.workspace import Workspace


def review_queue(ws: Workspace, product_id: str, *, verify_limit: int = 50) -> list[dict[str, Any]]:
    """Items awaiting sign-off (state ``validation``) with findings, approvals and checksum.

    A constant number of queries (items, finding counts, approvals, which tiles have a
    production version), whatever the queue's length. The checksum column comes from the
    cached hash of each unchanged object (``gates.cached_checksum_gate``: one stat each);
    an object never hashed at its current stamp is hashed now, at most ``verify_limit`` of
    them per call ("not verified" beyond), so a rerun hashes nothing.
    """
    config = product_config(ws, product_id)
    required = config.governance.approvals_required
    queued = (Item.product_id == product_id, Item.state == ItemState.validation)
    prod = aliased(Item)
    with ws.read() as session:
        items = session.exec(
            select(Item).where(*queued).order_by(col(Item.created_at), col(Item.id))
        ).all()
        ids = [i.id for i in items]
        counts = finding_counts(session, ids)
        approvals = approvals_by_item(session, ids)
        replacing = set(
            session.exec(
                select(Item.id).where(
                    *queued,
                    select(prod.id)
                    .where(
                        prod.product_id == product_id,
                        prod.source_key == Item.source_key,
                        prod.state == ItemState.production,
                    )
                    .exists(),
                )
            ).all()
        )
    out: list[dict[str, Any]] = []
    budget = verify_limit
    for i in items:
        status = status_from(i, approvals[i.id], required)
        rejected = sorted({actor for actor, _ in status.rejected_by})
        c = counts[i.id]
        gate = cached_checksum_gate(ws, i, verify=budget > 0)
        if gate is None:
            checksum = "not verified"
        else:
            checksum = "verified" if gate.ok else "MISMATCH"
            budget -= "(checked " not in gate.detail  # hashed just now
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
                "replaces_production": i.id in replacing,
                "staged_at": iso(i.created_at),
            }
        )
    return out


def verify_checksums(ws: Workspace, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """ "Verify now": stream each item's stored object and compare with its file:checksum
    (read-only for the catalog; the result refreshes the checksum cache)."""
    with ws.read() as session:
        items = items_by_id(session, list(item_ids))
    out: dict[str, dict[str, Any]] = {}
    for iid in item_ids:
        if iid in items:
            gate = checksum_gate(ws, items[iid])
            out[iid] = {"ok": gate.ok, "detail": gate.detail}
    return out


def review_item(ws: Workspace, item_id: str) -> dict[str, Any]:
    """One item under review: its detail, the production version of the same tile with the
    field diff (None when the tile is new), and its checksum check (the cached hash of the
    unchanged object; hashed now only when it never was at its current stamp)."""
    detail = item_detail(ws, item_id)
    detail["production"] = production_counterpart(ws, item_id)
    detail["checksum_now"] = verify_item_checksum(ws, item_id, cached=True)
    return detail
