"""Products for the app's product picker and every page header; the app's cache key.

``list_products`` and ``product_config`` feed the sidebar and each page,
``catalog_version`` is what the app keys its caches on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry
from sqlalchemy import func
from sqlmodel import Session, col, select

from geomesh.config import ProductConfig
from geomesh.models import AuditEvent, AuditHead, Product, Release
from geomesh.services.products import registered_config
from geomesh.workspace import Workspace

#: what the app tells a user who picks a product that is not registered
PRODUCT_HINT = "ingest tiles first, or seed the demo: `geomesh demo seed`"


def current_version(session: Session, product: Product) -> str | None:
    """The version of the product's current release (None before the first release)."""
    if product.current_release_id is None:
        return None
    # the version only: every page's sidebar asks, and a first release's delta lists every item
    version = session.exec(
        select(Release.version).where(Release.id == product.current_release_id)
    ).first()
    return str(version) if version is not None else None


def list_products(ws: Workspace) -> list[dict[str, Any]]:
    """Every registered product: id, title and current release version."""
    with ws.read() as session:
        rows = session.exec(select(Product).order_by(col(Product.id))).all()
        out = []
        for p in rows:
            meta = (p.config_json or {}).get("product_metadata") or {}
            out.append(
                {
                    "id": p.id,
                    "title": meta.get("title") or p.id,
                    "current_version": current_version(session, p),
                }
            )
        return out


def product_config(ws: Workspace, product_id: str) -> ProductConfig:
    """The product's registered config (the contract the services act on)."""
    with ws.read() as session:
        return registered_config(session, product_id, hint=PRODUCT_HINT)


def boundary_geojson(config: ProductConfig) -> dict[str, Any]:
    """The product's domain boundary as a GeoJSON geometry in EPSG:4326."""
    dom = config.spatial_domain
    geom: BaseGeometry = dom.boundary
    src = dom.pyproj_crs
    wgs84 = CRS.from_epsg(4326)
    if not src.equals(wgs84, ignore_axis_order=True):
        tr = Transformer.from_crs(src, wgs84, always_xy=True)
        geom = shapely.transform(geom, lambda xy: _apply(tr, xy))
    return dict(mapping(geom))


def _apply(tr: Transformer, xy: Any) -> Any:
    x, y = tr.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def is_empty(ws: Workspace) -> bool:
    """True when no product is registered (the demo seeds only then with --if-empty)."""
    with ws.read() as session:
        return session.exec(select(Product.id).limit(1)).first() is None


def product_version(ws: Workspace, product_id: str | None) -> int:
    """A product's change counter: the sequence number of its newest audit event.

    Every change to a product (its items, findings, approvals, releases, config) appends an
    audit event naming it in the change's own transaction, so a read model of the product
    computed at the same counter is still current, and a change elsewhere (another product,
    a sign-in, a user) leaves it alone. One lookup in ``ix_auditevent_product_seq``.
    ``product_id=None`` (all products): :func:`catalog_version`.
    """
    if product_id is None:
        return catalog_version(ws)
    with ws.read() as session:
        seq = session.exec(
            select(func.max(AuditEvent.seq)).where(AuditEvent.product_id == product_id)
        ).one()
        return int(seq or 0)


def catalog_version(ws: Workspace) -> int:
    """A number that changes with every state change (the audit chain's last sequence).

    Every change appends an audit event in its own transaction, so read models computed
    at the same version are still current (the app keys its caches on it).
    """
    with ws.read() as session:
        head = session.get(AuditHead, 1)
        return int(head.last_seq) if head is not None else 0
