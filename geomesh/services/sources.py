"""STAC API sources, the service side: discover new scenes and ingest their assets.

* :func:`discover` searches the config's ``source`` and marks each candidate ``new`` or
  ``ingested`` by source item id + asset identity. It never reads pixels.
* :func:`ingest_from_stac` runs the same core as local ingestion (``prepare_tile`` →
  admission: staged, validated and routed in one transaction) on the new assets, reading
  them through GDAL's ``/vsicurl/`` with the clip to the domain forced on, so only the byte
  ranges under the domain are fetched. The source item's metadata (datetime, platform,
  eo:cloud_cover, s2:*, …) and a ``derived_from`` link to it go into the new item. Re-runs
  skip what is already ingested; an interrupted run resumes without duplicates.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pystac
from shapely.errors import ShapelyError
from shapely.geometry import shape
from sqlmodel import col, select

from geomesh import audit
from geomesh.config import ProductConfig
from geomesh.db import chunks
from geomesh.errors import GeomeshError, SourceError
from geomesh.logs import RunLog
from geomesh.models import Item, utcnow
from geomesh.opening import OpeningPolicy
from geomesh.parallel import plan_remote
from geomesh.raster import sanitize_source
from geomesh.redact import redact
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
    search_items,
    self_href,
)
from geomesh.services.ingest import IngestReport, TileResult, ingest_policy
from geomesh.services.lookup import items_by_id
from geomesh.services.pipeline import PostStage, stage_and_check
from geomesh.storage import TMP_PREFIX
from geomesh.tiles import PreparedTile, SourceMeta, prepare_tile
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


def source_policy(ws: Workspace, config: ProductConfig) -> OpeningPolicy:
    """What a STAC source's assets may point at: the untrusted policy (allowed URL
    prefixes with public addresses, local files only under the import directories)."""
    return OpeningPolicy.untrusted(ws.settings, config, context="a STAC source")


def discover(
    ws: Workspace, config: ProductConfig, *, policy: OpeningPolicy | None = None
) -> list[Candidate]:
    """Candidate scenes over the domain, each marked new or already ingested. No pixel reads.

    Sorted by datetime, then item id. Items the API returns although they miss the domain
    or exceed ``max_cloud_cover`` (APIs without the query/filter extension) are dropped.
    An asset's identity HEAD goes only where the opening policy allows.
    """
    source = require_source(config)
    if policy is None:
        policy = source_policy(ws, config)
    client = open_client(source)
    domain = domain_geometry_4326(config)
    scenes: list[tuple[pystac.Item, dict[str, pystac.Asset]]] = []
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
        scenes.append((item, {k: item.assets[k] for k in source.assets if k in item.assets}))
    # the identity HEADs wait on the network: ask them all at once
    asks = {(item.id, key): asset for item, assets in scenes for key, asset in assets.items()}
    with ThreadPoolExecutor(
        max_workers=plan_remote(len(asks), ws.settings.workers), thread_name_prefix="geomesh-head"
    ) as pool:
        answers = dict(
            zip(asks, pool.map(lambda a: _identity(a, policy), asks.values()), strict=True)
        )
    found: list[tuple[pystac.Item, dict[str, str], dict[str, str | None], dict[str, str]]] = []
    for item, assets in scenes:
        hrefs: dict[str, str] = {}
        identities: dict[str, str | None] = {}
        errors: dict[str, str] = {}
        for key, asset in assets.items():
            hrefs[key] = _href(asset)
            identities[key], error = answers[(item.id, key)]
            if error is not None:
                errors[key] = error
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


def _href(asset: pystac.Asset) -> str:
    return asset.get_absolute_href() or asset.href


def _identity(asset: pystac.Asset, policy: OpeningPolicy) -> tuple[str | None, str | None]:
    """(identity, error) of one asset: its HEAD, where the opening policy allows it."""
    try:
        return asset_identity(_href(asset), asset, policy=policy), None
    except SourceError as exc:
        return None, str(exc)


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
    workers: int | None = None,
) -> IngestReport:
    """Ingest the new assets of the discovered scenes; skip what is already ingested.

    Each asset is read through /vsicurl/ with the clip to the domain forced on, staged by
    :func:`~geomesh.services.ingest.stage_tile` (idempotent per content) and recorded with
    ``source_item_id = "<stac item id>/<asset key>"`` and its identity, so a re-run ingests
    only what is new and an interrupted run resumes where it stopped.

    The file work of the assets (range reads, warp, COG, hash) runs on
    :func:`~geomesh.parallel.plan_remote` threads (``workers``: None = the setting
    ``GEOMESH_WORKERS``; unset or 0 = auto, more threads than cores: the reads wait on the
    network); staging, validation and routing
    stay in the caller, one asset at a time in discovery order, so the rows are a serial
    run's. ``post_stage`` None = validation + routing.
    """
    require_source(config)
    with ws.read() as session:
        config = ingest_policy(session, config, actor=actor)
    policy = source_policy(ws, config)
    cands = list(discover(ws, config, policy=policy) if candidates is None else candidates)
    log = RunLog(ws.root, product_id=config.product_id, stderr=ws.settings.log_stderr)
    report = IngestReport(product_id=config.product_id, run_id=log.run_id, dry_run=False)
    workdir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}ingest-", dir=ws.root))
    run = _Run(ws, config, remote_config(config), actor, log, workdir, post_stage, acquired, policy)
    try:
        with gdal_remote_env():
            steps = [step for cand in cands for step in run.plan(cand)]
            jobs = [step for step in steps if isinstance(step, _Asset)]
            pool = ThreadPoolExecutor(
                max_workers=plan_remote(
                    len(jobs), ws.settings.workers if workers is None else workers
                ),
                thread_name_prefix="geomesh-remote",
            )
            try:
                # every asset's file work starts now; each is staged when its turn comes
                futures = {id(job): pool.submit(run.prepare, job) for job in jobs}
                for step in steps:
                    res = (
                        run.finish(step, futures[id(step)].result())
                        if isinstance(step, _Asset)
                        else step
                    )
                    report.results.append(res)
                    if progress is not None:
                        progress(res)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


@dataclass(frozen=True)
class _Asset:
    """One asset whose file work is to run: where it is and what its item carries."""

    cand: Candidate
    key: str
    href: str
    meta: tuple[dict[str, Any], list[str]]


@dataclass
class _Run:
    ws: Workspace
    config: ProductConfig
    remote: ProductConfig
    actor: str
    log: RunLog
    workdir: Path
    post_stage: PostStage | None
    acquired: datetime | None
    policy: OpeningPolicy

    def plan(self, cand: Candidate) -> Iterator[TileResult | _Asset]:
        """The candidate's assets in order: a result already known, or file work to do."""
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
            refused = self._refused(cand, key, href)
            if refused is not None:
                yield refused
                continue
            if meta is None:
                props, exts, dropped = carried_metadata(self.ws.schema_dir, cand.properties)
                if dropped:
                    self.log.write(
                        step="carry", outcome="dropped", source=cand.item_id, fields=dropped
                    )
                meta = (props, exts)
            yield _Asset(cand, key, href, meta)

    def _existing(self, cand: Candidate, key: str, href: str) -> TileResult:
        item_id = cand.ingested_items[key]
        with self.ws.read() as session:
            row = session.get(Item, item_id)
        if row is None:  # removed since discover: report what discover saw
            return TileResult(source=sanitize_source(href), status="exists", item_id=item_id)
        return TileResult.existing(row)

    def _refused(self, cand: Candidate, key: str, href: str) -> TileResult | None:
        """The opening policy's verdict: no /vsi or file://, local files only under the
        import directories, URLs only under allowed prefixes with public addresses."""
        try:
            self.policy.check(href, probe=False)
        except GeomeshError as exc:
            error = f"{cand.item_id}/{key}: {redact(str(exc), href)}"
            self.log.write(
                step="prepare",
                outcome="error",
                source=sanitize_source(href),
                source_item_id=cand.source_item_id(key),
                error=error,
            )
            return TileResult(source=sanitize_source(href), status="failed", error=error)
        return None

    def prepare(self, job: _Asset) -> PreparedTile | GeomeshError:
        """The file work of one asset (runs on a worker thread; no database access)."""
        forget_cached(job.href)  # a remote asset replaced in place is read afresh
        try:
            # rasterio's GDAL options are per thread: this thread's own remote settings
            with gdal_remote_env():
                return prepare_tile(
                    self.remote,
                    job.href,
                    self.workdir,
                    acquired=job.cand.datetime or self.acquired,
                    policy=self.policy,
                    flush=self.ws.store.adopts_files,
                )
        except GeomeshError as exc:
            return exc

    def finish(self, job: _Asset, prepared: PreparedTile | GeomeshError) -> TileResult:
        """Stage, validate and route one prepared asset (in the caller, in order)."""
        cand, key, href = job.cand, job.key, job.href
        name = sanitize_source(href)
        source_item_id = cand.source_item_id(key)
        if isinstance(prepared, GeomeshError):
            error = redact(str(prepared), href)
            self.log.write(
                step="prepare",
                outcome="error",
                source=name,
                source_item_id=source_item_id,
                error=error,
            )
            return TileResult(source=name, status="failed", error=error)
        try:
            props, exts = job.meta
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
            # the product's own config: forcing the clip must not register a new version
            res = stage_and_check(
                self.ws,
                self.config,
                prepared,
                actor=self.actor,
                post_stage=self.post_stage,
                log=self.log,
                source_item_id=source_item_id,
            )
            if res.status == "exists" and res.item_id:
                self._record_identity(res.item_id, prepared.source_meta)
        except GeomeshError as exc:
            return TileResult(source=name, status="failed", error=redact(str(exc), href))
        finally:
            prepared.cog_path.unlink(missing_ok=True)
        return res

    def _record_identity(self, item_id: str, meta: SourceMeta) -> None:
        """Same bytes as an item we hold (e.g. the asset was re-uploaded unchanged): note
        the new identity on it so the next discover sees the asset as ingested."""
        with self.ws.transaction() as session:
            # locked: two runs noting the same identity write one audit event, not two
            row = items_by_id(session, [item_id], lock=True).get(item_id)
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
