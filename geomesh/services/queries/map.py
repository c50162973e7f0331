"""Map page: the product boundary and item footprints as one simplified GeoJSON layer."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import col

from geomesh.models import Item, ItemState, Severity
from geomesh.services.findings import open_count_columns
from geomesh.services.queries._common import SEVERITIES, val
from geomesh.services.queries.products import boundary_geojson, product_config
from geomesh.workspace import Workspace

#: items shown on the map by default (the "live" states)
MAP_STATES: Final = ("staging", "validation", "quarantined", "production")
MAX_MAP_FEATURES: Final = 5000
#: ~1 m at San Francisco's latitude: invisible at any zoom the review map is used at
SIMPLIFY_DEGREES: Final = 1e-5
#: rows read beyond the cap, for items without a footprint (not drawn, listed)
FOOTPRINT_SLACK: Final = 500
#: the order footprints are drawn in when capped: worst open severity first, clean last
WORST_FIRST: Final = (Severity.P1, Severity.P2, Severity.P3, None)


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
    for tooltips (the map inserts tooltip values as HTML).
    """
    wanted = [ItemState(s) for s in states]
    where = (col(Item.product_id) == product_id, col(Item.state).in_(wanted))
    budget = max_features + FOOTPRINT_SLACK  # slack: footprint-less rows are listed, not drawn
    ranked: list[Any] = []
    with ws.read() as session:
        total = int(session.execute(sa_select(func.count()).where(*where)).scalar_one())
        # worst first, one severity at a time: each is a range of ix_item_product_worst_state
        # already in (state, id) order, so only the rows that can be drawn are read
        for severity in WORST_FIRST:
            if len(ranked) >= budget:
                break
            same = (
                col(Item.worst_severity).is_(None)
                if severity is None
                else col(Item.worst_severity) == severity
            )
            ranked += session.execute(
                sa_select(
                    col(Item.id),
                    col(Item.state),
                    col(Item.worst_severity),
                    col(Item.source),
                    # the GeoJSON as text: GEOS parses it (vectorised) faster than json + shape
                    col(Item.stac)["geometry"].as_string(),
                    *open_count_columns(col(Item.id)),
                )
                .where(*where, same)
                .order_by(col(Item.state), col(Item.id))
                .limit(budget - len(ranked))
            ).all()
    parsed = shapely.from_geojson(  # None for a null geometry (no CRS)
        [r[4] if r[4] and r[4] != "null" else "null" for r in ranked], on_invalid="ignore"
    )
    without: list[str] = []
    keep: list[tuple[Any, ...]] = []
    geoms: list[BaseGeometry] = []
    for row, geom in zip(ranked, parsed, strict=True):
        if geom is None or geom.is_empty:
            without.append(row[0])
        elif len(keep) < max_features:
            keep.append((row[0], row[1], row[2], row[3], row[5:]))
            geoms.append(geom)
    features = []
    for t, geometry in zip(keep, _simplified(geoms, tolerance), strict=True):
        state = str(val(t[1]))
        worst = val(t[2])
        summary = ", ".join(f"{s}: {n}" for s, n in zip(SEVERITIES, t[4], strict=True))
        source = str(t[3]).rsplit("/", 1)[-1]
        features.append(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": {
                    "item_id": t[0],
                    "state": state,
                    "worst": worst or "clean",
                    "source": source,
                    "tip_id": html.escape(t[0]),
                    "tip_state": html.escape(state),
                    "tip_findings": html.escape(summary),
                    "tip_source": html.escape(source),
                },
            }
        )
    return MapLayer(
        features={"type": "FeatureCollection", "features": features},
        total=total,
        shown=len(features),
        without_footprint=without,
    )


def _simplified(geoms: Sequence[BaseGeometry], tolerance: float) -> list[dict[str, Any]]:
    """The geometries simplified, coordinates rounded to 1e-6° (~0.1 m), as GeoJSON dicts
    (vectorised in GEOS and numpy; no Python loop over coordinates)."""
    if not geoms:
        return []
    simple = shapely.simplify(np.asarray(geoms, dtype=object), tolerance, preserve_topology=False)
    rounded = shapely.transform(simple, lambda xy: np.round(xy, 6))
    geometries: list[dict[str, Any]] = json.loads("[" + ",".join(shapely.to_geojson(rounded)) + "]")
    return geometries


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
