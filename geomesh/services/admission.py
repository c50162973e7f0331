"""Admission: a new tile staged, validated and routed in ONE transaction.

The default end of the ingest pipeline (``services.pipeline``, ``services.sources``) for
a tile whose content the product does not hold yet. Before the transaction, with no row
written: the object and item JSON are stored (``services.ingest.store_tile``), the rules
run on them, given the digest and COG verdict the file work computed (nothing is hashed
or cog-validated again), and a tile bound for quarantine has its copies made there. Then
one transaction inserts the row with its ``ingest`` event, records the validation run
with its ``validate`` event and routes the item with its event (and any escalation or
re-clip task), so the catalog never shows a staged tile that is not yet validated, and a
tile pays one commit, not three.

A crash before the commit leaves only complete, unreferenced objects: a re-run stores the
same bytes again and admits the tile. An item an older run left in staging is validated
and routed by ``pipeline.validate_and_route`` as before.
"""

from __future__ import annotations

from pathlib import Path

from rasterio.transform import Affine

from geomesh import auth, db
from geomesh.config import ProductConfig
from geomesh.crs import crs_from_text
from geomesh.raster import RasterInfo
from geomesh.services.ingest import TileResult, insert_item, new_item, store_tile
from geomesh.services.routing import (
    PERMISSION,
    RouteOutcome,
    after_route,
    apply_route,
    copy_to_quarantine,
    planned_route,
)
from geomesh.services.validation import record_run, run_rules
from geomesh.tiles import PreparedTile
from geomesh.validation.registry import Policy
from geomesh.validation.rules import KnownRaster, RasterFacts, raster_facts
from geomesh.workspace import Workspace


def known_raster(prepared: PreparedTile) -> KnownRaster:
    """What the file work computed of a tile's COG: its digest, rio-cogeo's verdict and
    the header its one inspection read."""
    info = prepared.cog_info
    return KnownRaster(
        sha256=prepared.hexdigest,
        cog_errors=tuple(prepared.cog_errors),
        cog_warnings=tuple(prepared.cog_warnings),
        facts=header_facts(info, prepared.cog_path) if info is not None else None,
    )


def header_facts(info: RasterInfo, path: Path) -> RasterFacts | None:
    """The validation's :class:`RasterFacts` of an inspected raster at ``path``; None for
    one georeferenced by ground control points alone (the rules read those themselves)."""
    if info.crs_wkt2 is None and info.has_gcps:
        return None
    crs = crs_from_text(info.crs_wkt2) if info.crs_wkt2 is not None else None
    return raster_facts(
        path, crs, Affine(*info.transform), info.height, info.width, info.block_shapes
    )


def admit_tile(
    ws: Workspace, config: ProductConfig, prepared: PreparedTile, *, actor: str
) -> TileResult:
    """Stage, validate and route a prepared tile in one transaction (see the module).

    ``config`` is the product's registered config (or, for its first tile, the one this
    transaction registers). The result is ``staged`` with the route taken and the state it
    led to, or ``exists`` (with the item's state) when the product holds this content.
    """
    stored = store_tile(ws, config, prepared)
    if isinstance(stored, TileResult):
        return stored
    result = stored.result
    assert result.item_id is not None and result.object_key and result.stac_key
    Policy.from_config(config)  # an unknown rule id in the config fails before any work
    strict = config.validation.strict
    findings = run_rules(
        ws,
        config,
        new_item(config, prepared, stored, actor=actor),
        strict=strict,
        known=known_raster(prepared),
        storing=prepared.cog_path,  # its bytes: the rules read no object back
    )
    item_id = result.item_id
    if planned_route(config, item_id, findings).action == "quarantine":
        copy_to_quarantine(ws, result.object_key, result.stac_key)

    def admit(retry: bool) -> RouteOutcome | None:
        """None: a concurrent run staged this content first (and routes it)."""
        # a new outcome per attempt: apply_route fills it in, and a retried attempt must
        # not start from what a rolled-back one wrote there
        outcome = planned_route(config, item_id, findings)
        with ws.transaction() as session:
            auth.require(session, actor, "validate")
            auth.require(session, actor, PERMISSION[outcome.action])
            item = insert_item(session, config, prepared, stored, actor=actor, retry=retry)
            if item is None:
                return None
            run_id = record_run(session, item, findings, strict=strict, actor=actor, first=True)
            apply_route(session, config, item, outcome, actor=actor, run_id=run_id)
        return outcome

    outcome = db.retry_on_conflict(admit)
    if outcome is None:
        result.status = "exists"
        return result
    after_route(ws, outcome)
    result.state, result.route, result.findings = outcome.state, outcome.action, outcome.counts
    result.item = stored.stac
    return result
