"""Read models for the CLI and the app (no state changes here).

Every function takes the :class:`~geomesh.workspace.Workspace` first and returns plain,
JSON-ready values (dicts, lists, small dataclasses), so the app never needs sqlmodel.
"""

from __future__ import annotations

import csv
import html
import io
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import shapely
from pyproj import CRS, Transformer
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry
from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from geomesh import audit
from geomesh.config import ProductConfig, parse_config
from geomesh.errors import NotFound
from geomesh.models import (
    Approval,
    AuditEvent,
    Decision,
    FindingRecord,
    Item,
    ItemState,
    Product,
    Release,
    ValidationRun,
)
from geomesh.workspace import Workspace

SEVERITIES: Final = ("P1", "P2", "P3")
#: items shown on the map by default (the "live" states)
MAP_STATES: Final = ("staging", "validation", "quarantined", "production")
MAX_MAP_FEATURES: Final = 5000
#: ~1 m at San Francisco's latitude: invisible at any zoom the review map is used at
SIMPLIFY_DEGREES: Final = 1e-5
_IN_CHUNK: Final = 500


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
    ws: Workspace, *, product_id: str | None = None, state: str | ItemState | None = None
) -> list[dict[str, Any]]:
    with ws.read() as session:
        stmt = select(Item).order_by(col(Item.created_at))
        if product_id:
            stmt = stmt.where(Item.product_id == product_id)
        if state:
            stmt = stmt.where(Item.state == ItemState(state))
        items = session.exec(stmt).all()
        counts = finding_counts(session)
        return [item_summary(i, counts.get(i.id)) for i in items]


def get_item(ws: Workspace, item_id: str) -> dict[str, Any]:
    with ws.read() as session:
        item = session.get(Item, item_id)
        if item is None:
            raise NotFound(f"item {item_id!r} does not exist", hint="see `geomesh items list`")
        summary = item_summary(item, finding_counts(session, [item_id]).get(item_id))
        summary["stac"] = item.stac
        return summary


# ------------------------------------------------------------------ products


def _iso(ts: datetime | None) -> str | None:
    return ts.replace(tzinfo=None).isoformat(timespec="seconds") + "Z" if ts else None


def _product_row(session: Session, product_id: str) -> Product:
    product = session.get(Product, product_id)
    if product is None:
        raise NotFound(
            f"product {product_id!r} is not registered",
            hint="ingest tiles first, or seed the demo: `geomesh demo seed`",
        )
    return product


def _current_version(session: Session, product: Product) -> str | None:
    if product.current_release_id is None:
        return None
    rel = session.get(Release, product.current_release_id)
    return rel.version if rel is not None else None


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
                    "current_version": _current_version(session, p),
                }
            )
        return out


def product_config(ws: Workspace, product_id: str) -> ProductConfig:
    """The product's registered config (the contract the services act on)."""
    with ws.read() as session:
        product = _product_row(session, product_id)
        data = dict(product.config_json)
    return parse_config(data, source=f"registered config of {product_id}")


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
    import numpy as np

    x, y = tr.transform(xy[:, 0], xy[:, 1])
    return np.column_stack([x, y])


def overview(ws: Workspace, product_id: str) -> dict[str, Any]:
    """The product card, counts per state and severity, recent activity and KPIs."""
    config = product_config(ws, product_id)
    with ws.read() as session:
        product = _product_row(session, product_id)
        version = _current_version(session, product)
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
            severities[str(_val(sev))] = int(n)
        worst = {s: 0 for s in (*SEVERITIES, "clean")}
        for wsev, n in session.exec(
            select(Item.worst_severity, func.count())
            .where(Item.product_id == product_id)
            .where(col(Item.state).notin_([ItemState.discarded, ItemState.superseded]))
            .group_by(col(Item.worst_severity))
        ).all():
            worst[str(_val(wsev)) if wsev else "clean"] = int(n)
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
                "time": _iso(e.timestamp),
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
    from geomesh.validation.registry import RULES

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


# ------------------------------------------------------------------ map


@dataclass
class MapLayer:
    """Footprints as ONE GeoJSON FeatureCollection (simplified) plus what was left out."""

    features: dict[str, Any]
    total: int
    shown: int
    without_footprint: list[str] = field(default_factory=list)

    @property
    def capped(self) -> bool:
        return self.shown < self.total - len(self.without_footprint)


_SEV_RANK: Final = {"P1": 0, "P2": 1, "P3": 2, None: 3}


def map_layer(
    ws: Workspace,
    product_id: str,
    *,
    states: Sequence[str] = MAP_STATES,
    max_features: int = MAX_MAP_FEATURES,
    tolerance: float = SIMPLIFY_DEGREES,
) -> MapLayer:
    """Item footprints (EPSG:4326) for the map, worst first when capped.

    Properties: ``item_id`` (raw, for selection) and ``tip_*`` values that are HTML-escaped
    for tooltips (folium inserts tooltip values as HTML).
    """
    wanted = [ItemState(s) for s in states]
    with ws.read() as session:
        rows = session.execute(
            sa_select(
                col(Item.id),
                col(Item.state),
                col(Item.worst_severity),
                col(Item.source),
                # the GeoJSON as text: GEOS parses it (vectorised) faster than json + shape
                col(Item.stac)["geometry"].as_string(),
            )
            .where(col(Item.product_id) == product_id, col(Item.state).in_(wanted))
            .order_by(col(Item.created_at))
        ).all()
        counts = _product_finding_counts(session, product_id) if rows else {}
    ranked = sorted(
        rows,
        key=lambda r: (_SEV_RANK.get(_val(r[2]), 3), str(_val(r[1])), r[0]),
    )
    parsed = shapely.from_geojson(  # None for a null geometry (no CRS)
        [r[4] if r[4] and r[4] != "null" else "null" for r in ranked], on_invalid="ignore"
    )
    without: list[str] = []
    keep: list[tuple[Any, ...]] = []
    geoms: list[BaseGeometry | None] = []
    for row, geom in zip(ranked, parsed, strict=True):
        if geom is None or geom.is_empty:
            without.append(row[0])
        elif len(keep) < max_features:
            keep.append((row[0], row[1], row[2], row[3]))
            geoms.append(geom)
    arr = [g for g in geoms if g is not None]
    simplified = iter(
        shapely.set_precision(shapely.simplify(arr, tolerance, preserve_topology=False), 1e-6)
        if arr
        else []
    )
    features = []
    for t, g in zip(keep, geoms, strict=True):
        if g is None:
            without.append(t[0])
            continue
        sg = next(simplified)
        state = str(_val(t[1]))
        worst = _val(t[2])
        c = counts.get(t[0], {"P1": 0, "P2": 0, "P3": 0})
        summary = ", ".join(f"{s}: {c.get(s, 0)}" for s in SEVERITIES)
        features.append(
            {
                "type": "Feature",
                "geometry": mapping(sg),
                "properties": {
                    "item_id": t[0],
                    "state": state,
                    "worst": worst or "clean",
                    "source": str(t[3]).rsplit("/", 1)[-1],
                    "tip_id": html.escape(t[0]),
                    "tip_state": html.escape(state),
                    "tip_findings": html.escape(summary),
                    "tip_source": html.escape(str(t[3]).rsplit("/", 1)[-1]),
                },
            }
        )
    return MapLayer(
        features={"type": "FeatureCollection", "features": features},
        total=len(rows),
        shown=len(features),
        without_footprint=without,
    )


def _val(v: Any) -> Any:
    return getattr(v, "value", v)


def _product_finding_counts(session: Session, product_id: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for item_id, severity, n in session.exec(
        select(FindingRecord.item_id, FindingRecord.severity, func.count())
        .where(FindingRecord.product_id == product_id, col(FindingRecord.open).is_(True))
        .group_by(col(FindingRecord.item_id), col(FindingRecord.severity))
    ).all():
        out.setdefault(item_id, {"P1": 0, "P2": 0, "P3": 0})[str(_val(severity))] = int(n)
    return out


# ------------------------------------------------------------------ findings


FINDING_COLUMNS: Final = (
    "item_id",
    "product_id",
    "state",
    "severity",
    "rule_id",
    "path",
    "message",
    "remediation",
    "open",
    "created_at",
)


def findings_table(
    ws: Workspace,
    *,
    product_id: str | None = None,
    severities: Sequence[str] | None = None,
    rules: Sequence[str] | None = None,
    states: Sequence[str] | None = None,
    item_id: str | None = None,
    open_only: bool = True,
    limit: int | None = None,
) -> dict[str, list[Any]]:
    """Findings as columns (``FINDING_COLUMNS``), worst first; filters run in SQL.

    Columnar plain lists keep 50,000 rows cheap (no ORM objects); the app wraps them in a
    DataFrame.
    """
    stmt = sa_select(
        col(FindingRecord.item_id),
        col(FindingRecord.product_id),
        col(Item.state),
        col(FindingRecord.severity),
        col(FindingRecord.rule_id),
        col(FindingRecord.path),
        col(FindingRecord.message),
        col(FindingRecord.remediation),
        col(FindingRecord.open),
        col(FindingRecord.created_at),
    ).join(Item, col(Item.id) == col(FindingRecord.item_id))
    if product_id:
        stmt = stmt.where(col(FindingRecord.product_id) == product_id)
    if severities:
        stmt = stmt.where(col(FindingRecord.severity).in_(list(severities)))
    if rules:
        stmt = stmt.where(col(FindingRecord.rule_id).in_(list(rules)))
    if states:
        stmt = stmt.where(col(Item.state).in_([ItemState(s) for s in states]))
    if item_id:
        stmt = stmt.where(col(FindingRecord.item_id) == item_id)
    if open_only:
        stmt = stmt.where(col(FindingRecord.open).is_(True))
    stmt = stmt.order_by(
        col(FindingRecord.severity), col(FindingRecord.rule_id), col(FindingRecord.id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    out: dict[str, list[Any]] = {c: [] for c in FINDING_COLUMNS}
    with ws.read() as session:
        rows = session.execute(stmt).all()
    cols = [out[c] for c in FINDING_COLUMNS]
    for row in rows:
        for target, value in zip(cols, row, strict=True):
            target.append(value)
    out["state"] = [str(_val(v)) for v in out["state"]]
    out["severity"] = [str(_val(v)) for v in out["severity"]]
    out["created_at"] = [_iso(v) for v in out["created_at"]]
    out["open"] = [bool(v) for v in out["open"]]
    return out


def finding_rules(ws: Workspace, product_id: str | None = None) -> list[str]:
    """Rule ids that occur in the findings (for filter choices)."""
    stmt = select(FindingRecord.rule_id).distinct()
    if product_id:
        stmt = stmt.where(FindingRecord.product_id == product_id)
    with ws.read() as session:
        return sorted(str(r) for r in session.exec(stmt).all())


def findings_csv(table: dict[str, list[Any]]) -> str:
    """A findings table (as returned by :func:`findings_table`) as CSV text."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    cols = list(table)
    writer.writerow(cols)
    writer.writerows(zip(*(table[c] for c in cols), strict=True))
    return buf.getvalue()


def findings_json(table: dict[str, list[Any]]) -> str:
    """A findings table as a JSON array of objects."""
    cols = list(table)
    rows = [dict(zip(cols, values, strict=True)) for values in zip(*table.values(), strict=True)]
    return json.dumps(rows, indent=1, default=str)


# ------------------------------------------------------------------ one item


def item_detail(ws: Workspace, item_id: str) -> dict[str, Any]:
    """Everything a reviewer looks at for one item: summary, raster, findings, history."""
    with ws.read() as session:
        item = session.get(Item, item_id)
        if item is None:
            raise NotFound(f"item {item_id!r} does not exist", hint="see `geomesh items list`")
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
                "time": _iso(a.created_at),
            }
            for a in approvals
        ]
        summary["history"] = [
            {
                "time": _iso(e.timestamp),
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
    from geomesh.releases import diff_json

    with ws.read() as session:
        item = session.get(Item, item_id)
        if item is None:
            raise NotFound(f"item {item_id!r} does not exist")
        prod = session.exec(
            select(Item)
            .where(
                Item.product_id == item.product_id,
                Item.source_key == item.source_key,
                Item.state == ItemState.production,
                col(Item.id) != item.id,
            )
            .order_by(col(Item.created_at).desc())
        ).first()
        if prod is None:
            return None
        return {
            "production_id": prod.id,
            "production_digest": prod.content_digest,
            "production_raster": raster_facts(prod.stac),
            "changes": diff_json(prod.stac, item.stac),
        }


def verify_item_checksum(ws: Workspace, item_id: str) -> dict[str, Any]:
    """Stream the stored object now and compare with file:checksum (read-only)."""
    from geomesh.services.governance import checksum_gate

    with ws.read() as session:
        item = session.get(Item, item_id)
        if item is None:
            raise NotFound(f"item {item_id!r} does not exist")
    gate = checksum_gate(ws, item)
    return {"ok": gate.ok, "detail": gate.detail}


# ------------------------------------------------------------------ review queue


def _checksum_status(open_rules: set[str]) -> str:
    if any(r.startswith("GM-CHECKSUM") for r in open_rules):
        return "MISMATCH"
    return "verified"


def review_queue(ws: Workspace, product_id: str, *, verify_limit: int = 50) -> list[dict[str, Any]]:
    """Items awaiting sign-off (state ``validation``) with findings, approvals and checksum.

    The checksum column streams the stored object of the first ``verify_limit`` items now
    ("verified" / "MISMATCH: …"); beyond that it reports the last validation run's verdict.
    """
    from geomesh.services.governance import checksum_gate

    config = product_config(ws, product_id)
    with ws.read() as session:
        items = session.exec(
            select(Item)
            .where(Item.product_id == product_id, Item.state == ItemState.validation)
            .order_by(col(Item.created_at), col(Item.id))
        ).all()
        ids = [i.id for i in items]
        counts: dict[str, dict[str, int]] = {}
        open_rules: dict[str, set[str]] = {}
        approvals: dict[str, list[Approval]] = {}
        for chunk in _chunks(ids):
            counts.update(finding_counts(session, chunk))
            for iid, rid in session.exec(
                select(FindingRecord.item_id, FindingRecord.rule_id).where(
                    col(FindingRecord.item_id).in_(chunk), col(FindingRecord.open).is_(True)
                )
            ).all():
                open_rules.setdefault(iid, set()).add(rid)
            for a in session.exec(select(Approval).where(col(Approval.item_id).in_(chunk))).all():
                approvals.setdefault(a.item_id, []).append(a)
        prod_sources = set(
            session.exec(
                select(Item.source_key).where(
                    Item.product_id == product_id, Item.state == ItemState.production
                )
            ).all()
        )
        out: list[dict[str, Any]] = []
        for i in items:
            current = [a for a in approvals.get(i.id, []) if a.content_digest == i.content_digest]
            approved = sorted(
                {a.actor for a in current if a.decision == Decision.approve} - {i.submitted_by}
            )
            rejected = sorted({a.actor for a in current if a.decision == Decision.reject})
            c = counts.get(i.id, {"P1": 0, "P2": 0, "P3": 0})
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
                    "P1": c.get("P1", 0),
                    "P2": c.get("P2", 0),
                    "P3": c.get("P3", 0),
                    "checksum": checksum,
                    "approvals": f"{len(approved)}/{config.governance.approvals_required}",
                    "approved_by": ", ".join(approved),
                    "rejected_by": ", ".join(rejected),
                    "replaces_production": i.source_key in prod_sources,
                    "staged_at": _iso(i.created_at),
                }
            )
        return out


def _chunks(ids: Sequence[str], n: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for k in range(0, len(ids), n):
        yield ids[k : k + n]


# ------------------------------------------------------------------ audit


def audit_events(
    ws: Workspace,
    *,
    product_id: str | None = None,
    text: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Audit events, newest first, filtered in SQL; ``text`` matches target, action or actor."""
    stmt = select(AuditEvent).order_by(col(AuditEvent.seq).desc()).limit(limit)
    if product_id:
        stmt = stmt.where(AuditEvent.product_id == product_id)
    if actor:
        stmt = stmt.where(AuditEvent.actor == actor)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    if text:
        like = f"%{text.strip()}%"
        stmt = stmt.where(
            col(AuditEvent.target).ilike(like)
            | col(AuditEvent.action).ilike(like)
            | col(AuditEvent.actor).ilike(like)
            | col(AuditEvent.event_id).ilike(like)
        )
    with ws.read() as session:
        rows = session.exec(stmt).all()
    return [
        {
            "seq": e.seq,
            "time": _iso(e.timestamp),
            "actor": e.actor,
            "action": e.action,
            "target": e.target,
            "state_before": e.state_before,
            "state_after": e.state_after,
            "details": json.dumps(e.details, sort_keys=True, default=str),
            "hash": e.hash[:16],
        }
        for e in rows
    ]


def audit_facets(ws: Workspace) -> dict[str, list[str]]:
    with ws.read() as session:
        actors = session.exec(select(AuditEvent.actor).distinct()).all()
        actions = session.exec(select(AuditEvent.action).distinct()).all()
    return {"actors": sorted(actors), "actions": sorted(actions)}


def audit_chain_status(ws: Workspace) -> dict[str, Any]:
    """Recompute the hash chain: {"ok", "events", "problems": [str]}."""
    with ws.read() as session:
        problems = audit.verify(session)
        n = session.exec(select(func.count()).select_from(AuditEvent)).one()
    return {"ok": not problems, "events": int(n), "problems": [str(p) for p in problems]}


def audit_jsonl(ws: Workspace, *, product_id: str | None = None) -> str:
    """The audit trail as JSON lines, oldest first (for download)."""
    with ws.read() as session:
        lines = [
            json.dumps(audit.to_json(ev), sort_keys=True, default=str)
            for ev in audit.iter_events(session)
            if product_id is None or ev.product_id == product_id
        ]
    return "\n".join(lines) + ("\n" if lines else "")


# ------------------------------------------------------------------ users


def user_role(ws: Workspace, name: str) -> str | None:
    """The current role of a user (None when the user does not exist)."""
    from geomesh.auth import get_user

    with ws.read() as session:
        user = get_user(session, name)
        return user.role.value if user is not None else None


def state_counts(ws: Workspace, product_id: str) -> dict[str, int]:
    with ws.read() as session:
        return {
            str(_val(s)): int(n)
            for s, n in session.exec(
                select(Item.state, func.count())
                .where(Item.product_id == product_id)
                .group_by(col(Item.state))
            ).all()
        }


def catalog_version(ws: Workspace) -> int:
    """A number that changes with every state change (the audit chain's last sequence).

    Every change appends an audit event in its own transaction, so read models computed
    at the same version are still current (the app keys its caches on it).
    """
    from geomesh.models import AuditHead

    with ws.read() as session:
        head = session.get(AuditHead, 1)
        return int(head.last_seq) if head is not None else 0


def is_empty(ws: Workspace) -> bool:
    """True when no product is registered (the demo seeds only then with --if-empty)."""
    with ws.read() as session:
        return session.exec(select(Product.id).limit(1)).first() is None


# ------------------------------------------------------------------ map view and releases


def map_view(
    ws: Workspace, product_id: str, *, states: Sequence[str] = MAP_STATES
) -> dict[str, Any]:
    """What the map page draws: the boundary (EPSG:4326), its bounds and the footprints."""
    config = product_config(ws, product_id)
    boundary = boundary_geojson(config)
    return {
        "title": config.product_metadata.title or product_id,
        "boundary": boundary,
        "bounds": list(shape(boundary).bounds),
        "layer": map_layer(ws, product_id, states=states),
    }


def rollback_impact(
    ws: Workspace, product_id: str, *, kind: str, item_id: str | None = None
) -> dict[str, Any]:
    """What a rollback would change, for the confirmation dialog (nothing is written).

    ``kind="release"``: the current release goes, its parent comes back; the items its
    delta added or changed are rolled back, the ones it removed or replaced are restored.
    ``kind="item"``: a new PATCH release without ``item_id``.
    """
    from geomesh.errors import NothingToRollBack
    from geomesh.releases import Bump, Delta, highest_version, next_version

    with ws.read() as session:
        product = _product_row(session, product_id)
        if product.current_release_id is None:
            raise NothingToRollBack(f"product {product_id!r} has no release to roll back")
        current = session.get(Release, product.current_release_id)
        if current is None:  # pragma: no cover - the pointer always names a row
            raise NotFound(f"release {product.current_release_id} is missing")
        versions = session.exec(
            select(Release.version).where(Release.product_id == product_id)
        ).all()
        parent = session.get(Release, current.parent_id) if current.parent_id else None
    if kind == "release":
        delta = Delta.from_dict(current.delta)
        return {
            "kind": "release",
            "release_id": current.id,
            "version": current.version,
            "restores": parent.version if parent else None,
            "rolled_back": [*delta.added, *(c.to_id for c in delta.changed)],
            "restored": [*delta.removed, *(c.from_id for c in delta.changed)],
            "possible": parent is not None,
        }
    if item_id is None:
        raise NotFound("choose the item to roll back")
    return {
        "kind": "item",
        "item_id": item_id,
        "version": current.version,
        "new_version": next_version(highest_version(versions), Bump.patch),
        "items_after": max(current.item_count - 1, 0),
        "possible": True,
    }


def review_item(ws: Workspace, item_id: str) -> dict[str, Any]:
    """One item under review: its detail, the production version of the same tile with the
    field diff (None when the tile is new), and a live checksum verification."""
    detail = item_detail(ws, item_id)
    detail["production"] = production_counterpart(ws, item_id)
    detail["checksum_now"] = verify_item_checksum(ws, item_id)
    return detail
