"""Read models of the inbound governance API (``geomesh api``), for the approval tool.

Read-only: the releases of a product and the governance status of one item (its state,
content digest, open findings per severity and sign-off status).
"""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from geomesh.models import Product
from geomesh.services.finding_counts import finding_counts
from geomesh.services.history import list_releases
from geomesh.services.lookup import get_item, get_product
from geomesh.services.products import registered_config
from geomesh.services.signoff import signoff_status
from geomesh.workspace import Workspace


def product_releases(ws: Workspace, product_id: str) -> dict[str, Any]:
    """``GET /v1/products/{id}/releases``: every release, oldest version first."""
    infos = list_releases(ws, product_id)
    current = next((r.version for r in infos if r.current), None)
    return {
        "product_id": product_id,
        "current_version": current,
        "releases": [
            {
                "id": r.id,
                "version": r.version,
                "kind": r.kind,
                "item_count": r.item_count,
                "deprecated": r.deprecated,
                "current": r.current,
                "created_at": r.created_at,
                "actor": r.actor,
            }
            for r in infos
        ],
    }


def item_status(ws: Workspace, product_id: str, item_id: str) -> dict[str, Any]:
    """``GET /v1/products/{id}/items/{item_id}/status``: what an approver needs to see."""
    with ws.read() as session:
        get_product(session, product_id)
        item = get_item(session, item_id, product_id=product_id)
        config = registered_config(session, product_id)
        counts = finding_counts(session, [item.id]).get(item.id, {})
        state, digest, submitted_by = item.state.value, item.content_digest, item.submitted_by
        derived_from = item.derived_from
    signoff = signoff_status(ws, config, item_id)
    return {
        "product_id": product_id,
        "item_id": item_id,
        "state": state,
        "content_digest": digest,
        "submitted_by": submitted_by,
        "derived_from": derived_from,
        "open_findings": counts,
        "signoff": signoff.to_json(),
    }


def health(ws: Workspace) -> dict[str, Any]:
    """``GET /v1/health``: the process answers and the database can be read."""
    with ws.read() as session:
        session.exec(select(Product.id).limit(1)).first()
    return {"status": "ok", "database": "ok"}
