"""STAC API sources, the service side: discover new scenes and ingest their assets.

* :func:`discover` searches the config's ``source`` and marks each candidate ``new`` or
  ``ingested`` by source item id + asset identity. It never reads pixels.
* :func:`ingest_from_stac` runs the same core as local ingestion (``prepare_tile`` →
  ``stage_tile`` → validate + route) on the new assets, reading them through GDAL's
  ``/vsicurl/`` with the clip to the domain forced on, so only the byte ranges under the
  domain are fetched. The source item's metadata (datetime, platform, eo:cloud_cover, s2:*,
  …) and a ``derived_from`` link to it go into the new item. Re-runs skip what is already
  ingested; an interrupted run resumes without duplicates.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pystac
from shapely.errors import ShapelyError
from shapely.geometry import shape
from sqlmodel import col, select

from geomesh import audit, auth
from geomesh.config import ProductConfig
from geomesh.errors import GeomeshError, SourceError
from geomesh.logs import RunLog
from geomesh.models import Item, utcnow
from geomesh.raster import sanitize_source
from geomesh.remote import (
    AssetStatus,
    Candidate,
    CandidateStatus,
    asset_identity,
    carried_metadata,
    cloud_cover,
    domain_geometry_4326,
    forget_cached,
    gdal_remote_env,
    item_datetime,
    open_client,
    remote_config,
    require_source,
    scrub,
    search_items,
    self_href,
)
from geomesh.services.ingest import IngestReport, TileResult, stage_tile
from geomesh.services.lookup import chunks
from geomesh.services.pipeline import PostStage, validate_and_route_staged
from geomesh.storage import TMP_PREFIX
from geomesh.tiles import SourceMeta, prepare_tile
from geomesh.workspace import Workspace


def _known(ws: Workspace, product_id: str, ids: Sequence[str]) -> dict[str, dict[str | None, str]]:
    """source_item_id → {identity: geomesh item id} of what this product already holds."""
    out: dict[str, dict[str | None, str]] = {}
    unique = sorted(set(ids))
    with ws.read() as session:
        for chunk in chunks(unique):
            rows = session.exec(
                select(Item.source_item_id, Item.source_etag, Item.id)
                .where(Item.product_id == product_id)
                .where(col(Item.source_item_id).in_(chunk))
                .order_by(col(Item.created_at))
            ).all()
            for sid, identity, item_id in rows:
                if sid is not None:
                    out.setdefault(sid, {})[identity] = item_id
    return out


# ------------------------------------------------------------------ discover


def discover(ws: Workspace, config: ProductConfig) -> list[Candidate]:
    """Candidate scenes over the domain, each marked new or already ingested. No pixel reads.

    Sorted by datetime, then item id. Items the API returns although they miss the domain
    or exceed ``max_cloud_cover`` (APIs without the query/filter extension) are dropped.
    """
    source = require_source(config)
    client = open_client(source)
    domain = domain_geometry_4326(config)
    found: list[tuple[pystac.Item, dict[str, str], dict[str, str | None], dict[str, str]]] = []
    for item in search_items(client, config):
        if item.geometry is None:
            continue
        try:
            if not shape(item.geometry).intersects(domain):
                continue
        except (ShapelyError, ValueError, TypeError, AttributeError):
            continue  # an unreadable footprint cannot be placed in the domain
        cc = cloud_cover(item)
        if source.max_cloud_cover is not None and (cc is None or cc >= source.max_cloud_cover):
            continue
        hrefs: dict[str, str] = {}
        identities: dict[str, str | None] = {}
        errors: dict[str, str] = {}
        for key in source.assets:
            asset = item.assets.get(key)
            if asset is None:
                continue
            href = asset.get_absolute_href() or asset.href
            hrefs[key] = href
            try:
                identities[key] = asset_identity(href, asset)
            except SourceError as exc:
                identities[key] = None
                errors[key] = str(exc)
        found.append((item, hrefs, identities, errors))

    known = _known(
        ws, config.product_id, [f"{item.id}/{k}" for item, hrefs, _, _ in found for k in hrefs]
    )
    api_url = client.get_self_href() or source.url
    out: list[Candidate] = []
    for item, hrefs, identities, errors in found:
        asset_status: dict[str, AssetStatus] = {}
        ingested: dict[str, str] = {}
        for key in hrefs:
            versions = known.get(f"{item.id}/{key}", {})
            if identities[key] in versions and key not in errors:
                asset_status[key] = "ingested"
                ingested[key] = versions[identities[key]]
            else:
                asset_status[key] = "changed" if versions else "new"
        status: CandidateStatus
        if not hrefs:
            status = "unavailable"
        elif all(s == "ingested" for s in asset_status.values()):
            status = "ingested"
        else:
            status = "new"
        out.append(
            Candidate(
                item_id=item.id,
                collection=item.collection_id,
                datetime=item_datetime(item),
                cloud_cover=cloud_cover(item),
                geometry=dict(item.geometry) if item.geometry else {},
                bbox=[float(v) for v in item.bbox] if item.bbox else None,
                assets=hrefs,
                status=status,
                self_href=self_href(item, api_url),
                identities=identities,
                asset_status=asset_status,
                ingested_items=ingested,
                missing_assets=tuple(k for k in source.assets if k not in hrefs),
                offered_assets=tuple(sorted(item.assets)),
                errors=errors,
                properties=dict(item.properties),
            )
        )
    out.sort(key=lambda c: (c.datetime.isoformat() if c.datetime else "", c.item_id))
    return out


# ------------------------------------------------------------------ ingest


def ingest_from_stac(
    ws: Workspace,
    config: ProductConfig,
    *,
    actor: str,
    candidates: Sequence[Candidate] | None = None,
    acquired: datetime | None = None,
    progress: Callable[[TileResult], None] | None = None,
    post_stage: PostStage | None = None,
) -> IngestReport:
    """Ingest the new assets of the discovered scenes; skip what is already ingested.

    Each asset is read through /vsicurl/ with the clip to the domain forced on, staged by
    :func:`~geomesh.services.ingest.stage_tile` (idempotent per content) and recorded with
    ``source_item_id = "<stac item id>/<asset key>"`` and its identity, so a re-run ingests
    only what is new and an interrupted run resumes where it stopped.
    """
    require_source(config)
    with ws.read() as session:
        auth.require(session, actor, "ingest")
    cands = list(discover(ws, config) if candidates is None else candidates)
    if post_stage is None:
        post_stage = validate_and_route_staged
    log = RunLog(ws.root, product_id=config.product_id, stderr=ws.settings.log_stderr)
    report = IngestReport(product_id=config.product_id, run_id=log.run_id, dry_run=False)
    workdir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}ingest-", dir=ws.root))
    run = _Run(ws, config, remote_config(config), actor, log, workdir, post_stage, acquired)
    try:
        with gdal_remote_env():
            for cand in cands:
                for res in run.candidate(cand):
                    report.results.append(res)
                    if progress is not None:
                        progress(res)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


@dataclass
class _Run:
    ws: Workspace
    config: ProductConfig
    remote: ProductConfig
    actor: str
    log: RunLog
    workdir: Path
    post_stage: PostStage
    acquired: datetime | None

    def candidate(self, cand: Candidate) -> Iterator[TileResult]:
        if not cand.assets:
            offered = ", ".join(cand.offered_assets) or "none"
            msg = (
                f"{cand.item_id}: has none of the configured assets "
                f"{list(cand.missing_assets)}; it offers: {offered} (fix source.assets)"
            )
            self.log.write(step="prepare", outcome="error", source=cand.item_id, error=msg)
            yield TileResult(source=cand.self_href or cand.item_id, status="failed", error=msg)
            return
        meta: tuple[dict[str, Any], list[str]] | None = None
        for key, href in cand.assets.items():
            if cand.asset_status.get(key) == "ingested":
                yield self._existing(cand, key, href)
                continue
            if meta is None:
                props, exts, dropped = carried_metadata(self.ws.schema_dir, cand.properties)
                if dropped:
                    self.log.write(
                        step="carry", outcome="dropped", source=cand.item_id, fields=dropped
                    )
                meta = (props, exts)
            yield self._ingest_asset(cand, key, href, meta)

    def _existing(self, cand: Candidate, key: str, href: str) -> TileResult:
        item_id = cand.ingested_items[key]
        with self.ws.read() as session:
            row = session.get(Item, item_id)
        if row is None:  # removed since discover: report what discover saw
            return TileResult(source=sanitize_source(href), status="exists", item_id=item_id)
        return TileResult.existing(row)

    def _ingest_asset(
        self, cand: Candidate, key: str, href: str, meta: tuple[dict[str, Any], list[str]]
    ) -> TileResult:
        name = sanitize_source(href)
        source_item_id = cand.source_item_id(key)
        if not href.startswith(("http://", "https://", "s3://")):
            # a remote catalog must not point geomesh at local files (or GDAL /vsi paths)
            error = (
                f"{cand.item_id}/{key}: the asset href is not an http(s) or s3 URL "
                f"({name[:200]!r}); a STAC source may not point at local files"
            )
            self.log.write(
                step="prepare",
                outcome="error",
                source=name,
                source_item_id=source_item_id,
                error=error,
            )
            return TileResult(source=name, status="failed", error=error)
        forget_cached(href)
        try:
            prepared = prepare_tile(
                self.remote, href, self.workdir, acquired=cand.datetime or self.acquired
            )
        except GeomeshError as exc:
            error = scrub(str(exc), href)
            self.log.write(
                step="prepare",
                outcome="error",
                source=name,
                source_item_id=source_item_id,
                error=error,
            )
            return TileResult(source=name, status="failed", error=error)
        try:
            props, exts = meta
            prepared.source_meta = SourceMeta(
                source_item_id=source_item_id,
                source_etag=cand.identities.get(key),
                derived_from=cand.self_href,
                properties=dict(props),
                stac_extensions=list(exts),
            )
            self.log.write(
                step="prepare",
                outcome="ok",
                source=name,
                source_item_id=source_item_id,
                size=prepared.size,
            )
            with self.log.step("stage", source_item_id=source_item_id):
                # the product's own config: forcing the clip must not register a new version
                res = stage_tile(self.ws, self.config, prepared, actor=self.actor)
            if res.status == "exists" and res.item_id:
                self._record_identity(res.item_id, prepared.source_meta)
            elif res.status == "staged" and res.item_id:
                with self.log.step("validate+route", item_id=res.item_id) as info:
                    res.state, res.route, res.findings = self.post_stage(
                        self.ws, self.config, res.item_id, self.actor
                    )
                    info["outcome"] = res.route or "ok"
        except GeomeshError as exc:
            return TileResult(source=name, status="failed", error=scrub(str(exc), href))
        finally:
            prepared.cog_path.unlink(missing_ok=True)
        return res

    def _record_identity(self, item_id: str, meta: SourceMeta) -> None:
        """Same bytes as an item we hold (e.g. the asset was re-uploaded unchanged): note
        the new identity on it so the next discover sees the asset as ingested."""
        with self.ws.transaction() as session:
            row = session.get(Item, item_id)
            if row is None or row.source_item_id not in (None, meta.source_item_id):
                return
            if row.source_item_id == meta.source_item_id and row.source_etag == meta.source_etag:
                return
            before = {"source_item_id": row.source_item_id, "source_etag": row.source_etag}
            row.source_item_id = meta.source_item_id
            row.source_etag = meta.source_etag
            row.updated_at = utcnow()
            session.add(row)
            audit.append(
                session,
                actor=self.actor,
                action="ingest.source",
                target=item_id,
                product_id=row.product_id,
                digest=row.content_digest,
                details={
                    "previous": before,
                    "source_item_id": meta.source_item_id,
                    "source_etag": meta.source_etag,
                },
            )
