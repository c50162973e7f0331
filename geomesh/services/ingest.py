"""Ingest: raster → (warp/clip) → COG → content-addressed object → STAC Item → staged row.

The pipeline is split in two so batches can run in parallel:

* :func:`prepare_tile` is pure file work (inspect, COG, hash, statistics). It runs in
  worker processes and touches neither the database nor the object store.
* :func:`stage_tile` stores the object and the item JSON (both immutable, content-addressed)
  and then, in ONE transaction, inserts the Item row with its audit event. The row is the
  visibility point: a crash before it leaves only unreferenced complete objects that a re-run
  reuses and `geomesh doctor` can collect.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlmodel import Session, col, select

from geomesh import audit, auth, faults, lifecycle
from geomesh.config import ProductConfig
from geomesh.errors import GeomeshError, StorageError
from geomesh.hashing import sha256_file
from geomesh.logs import RunLog
from geomesh.models import Item, ItemState, Product, utcnow
from geomesh.raster import (
    CogResult,
    band_statistics,
    inspect,
    is_remote,
    sanitize_source,
    write_cog,
)
from geomesh.stac import build_item, is_safe_item_id, item_id_for, item_to_dict
from geomesh.storage import TMP_PREFIX, ObjectStore, object_key
from geomesh.workspace import Workspace

Status = Literal["staged", "exists", "would-stage", "failed"]


@dataclass
class SourceMeta:
    """Where a tile came from when it was found in a STAC API (set by geomesh.sources)."""

    #: "<stac item id>/<asset key>": with source_etag, what makes a re-run skip the asset
    source_item_id: str
    source_etag: str | None
    #: self href of the source STAC item (the new item's `derived_from` link)
    derived_from: str | None = None
    #: source item properties to carry (checked against their extension schemas)
    properties: dict[str, Any] = field(default_factory=dict)
    stac_extensions: list[str] = field(default_factory=list)


@dataclass
class PreparedTile:
    """The result of the file work for one source (picklable, for worker processes)."""

    source: str
    source_name: str
    source_key: str
    source_digest: str | None
    cog_path: Path
    hexdigest: str
    size: int
    acquired: datetime | None
    info_json: dict[str, Any]
    statistics: list[dict[str, float] | None]
    cog_valid: bool
    cog_errors: list[str]
    cog_warnings: list[str]
    clipped: bool
    source_meta: SourceMeta | None = None


@dataclass
class TileResult:
    source: str
    status: Status
    item_id: str | None = None
    digest: str | None = None
    size: int | None = None
    object_key: str | None = None
    stac_key: str | None = None
    state: str | None = None
    route: str | None = None
    findings: dict[str, int] = field(default_factory=dict)
    cog_warnings: list[str] = field(default_factory=list)
    cog_errors: list[str] = field(default_factory=list)
    error: str | None = None
    item: dict[str, Any] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("item")
        return d


@dataclass
class IngestReport:
    product_id: str
    run_id: str
    dry_run: bool
    results: list[TileResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status != "failed" for r in self.results)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "ok": self.ok,
            "counts": self.counts(),
            "results": [r.to_json() for r in self.results],
        }


#: called after a tile is staged (validation + routing); set by geomesh.services.pipeline
PostStage = Callable[
    [Workspace, ProductConfig, str, str], tuple[str | None, str | None, dict[str, int]]
]


# ------------------------------------------------------------------ helpers


def source_key_for(source: str) -> str:
    """Stable key of "the same tile": the sanitized source location."""
    return hashlib.sha256(sanitize_source(source).encode()).hexdigest()[:32]


def _options_digest(config: ProductConfig) -> str:
    opts = {
        "ingestion": config.ingestion.model_dump(mode="json", exclude={"datetime"}),
        "domain": config.spatial_contract() if config.ingestion.clip else None,
    }
    return json.dumps(opts, sort_keys=True)


def source_digest_for(source: str, config: ProductConfig) -> str | None:
    """SHA-256 of a local source's bytes + the options that shape the output (None if remote)."""
    if is_remote(source):
        return None
    p = Path(source)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    h.update(_options_digest(config).encode())
    return h.hexdigest()


def stac_key_for(product_id: str, item_id: str) -> str:
    return f"items/{product_id}/{item_id}.json"


def object_href(store: ObjectStore, area: Literal["staging"], key: str) -> str:
    return store.url(area, key)


# ------------------------------------------------------------------ file work


def prepare_tile(
    config: ProductConfig,
    source: str,
    workdir: Path,
    *,
    acquired: datetime | None = None,
    source_digest: str | None = None,
) -> PreparedTile:
    """Inspect, (warp/clip), write the COG, hash it and read statistics. No catalog access."""
    name = sanitize_source(source)
    src_info = inspect(source, domain_crs=config.spatial_domain.crs)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".tif", dir=workdir)
    import os

    os.close(fd)
    cog_path = Path(tmp)
    cog: CogResult = write_cog(source, cog_path, config)
    hexdigest, size = sha256_file(cog_path)
    cog_info = inspect(cog_path, domain_crs=config.spatial_domain.crs)
    when = acquired or src_info.datetime or config.ingestion.datetime
    return PreparedTile(
        source=source,
        source_name=name,
        source_key=source_key_for(source),
        source_digest=source_digest,
        cog_path=cog_path,
        hexdigest=hexdigest,
        size=size,
        acquired=when,
        info_json={"source": src_info.to_json(), "cog": cog_info.to_json()},
        statistics=band_statistics(cog_path),
        cog_valid=cog.is_valid,
        cog_errors=cog.errors,
        cog_warnings=cog.warnings,
        clipped=cog.clipped,
    )


def build_stac(
    config: ProductConfig,
    prepared: PreparedTile,
    *,
    asset_href: str,
    item_version: int = 1,
    predecessor_href: str | None = None,
) -> dict[str, Any]:
    info = inspect(prepared.cog_path, domain_crs=config.spatial_domain.crs)
    meta = prepared.source_meta
    item = build_item(
        config=config,
        info=info,
        hexdigest=prepared.hexdigest,
        size=prepared.size,
        asset_href=asset_href,
        acquired=prepared.acquired,
        statistics=prepared.statistics,
        item_version=item_version,
        predecessor_href=predecessor_href,
        source_href=(meta.derived_from if meta and meta.derived_from else prepared.source_name),
        extra_properties=meta.properties if meta else None,
        extra_extensions=meta.stac_extensions if meta else None,
    )
    return item_to_dict(item)


# ------------------------------------------------------------------ catalog work


def register_product(session: Session, config: ProductConfig, *, actor: str) -> Product:
    """Create the product row, or record a new config version (audited)."""
    digest = config.digest()
    product = session.get(Product, config.product_id)
    if product is None:
        product = Product(
            id=config.product_id, config_json=config.to_json_dict(), config_digest=digest
        )
        session.add(product)
        session.flush()
        audit.append(
            session,
            actor=actor,
            action="product.register",
            target=product.id,
            product_id=product.id,
            digest=digest,
        )
    elif product.config_digest != digest:
        before = product.config_digest
        product.config_json = config.to_json_dict()
        product.config_digest = digest
        product.updated_at = utcnow()
        session.add(product)
        audit.append(
            session,
            actor=actor,
            action="product.config",
            target=product.id,
            product_id=product.id,
            digest=digest,
            details={"previous_digest": before},
        )
    return product


def _previous_version(session: Session, product_id: str, source_key: str) -> Item | None:
    return session.exec(
        select(Item)
        .where(Item.product_id == product_id, Item.source_key == source_key)
        .where(col(Item.state) != ItemState.discarded)
        .order_by(col(Item.created_at).desc())
        .limit(1)
    ).first()


def _version_number(session: Session, product_id: str, source_key: str) -> int:
    rows = session.exec(
        select(Item.id).where(Item.product_id == product_id, Item.source_key == source_key)
    ).all()
    return len(rows) + 1


def stage_tile(
    ws: Workspace, config: ProductConfig, prepared: PreparedTile, *, actor: str
) -> TileResult:
    """Store object + item JSON, then insert the row and its audit event in one transaction."""
    product_id = config.product_id
    item_id = item_id_for(product_id, prepared.hexdigest)
    if not is_safe_item_id(item_id):
        raise StorageError(f"product id {product_id!r} makes an unsafe item id {item_id!r}")
    okey = object_key(prepared.hexdigest)
    skey = stac_key_for(product_id, item_id)
    result = TileResult(
        source=prepared.source_name,
        status="staged",
        item_id=item_id,
        digest=prepared.hexdigest,
        size=prepared.size,
        object_key=okey,
        stac_key=skey,
        cog_warnings=prepared.cog_warnings,
        cog_errors=prepared.cog_errors,
    )
    with ws.read() as session:
        existing = session.get(Item, item_id)
        if existing is not None:
            result.status, result.state, result.item = "exists", existing.state.value, existing.stac
            return result
        previous = _previous_version(session, product_id, prepared.source_key)
        version = _version_number(session, product_id, prepared.source_key)
    predecessor = (
        object_href(ws.store, "staging", stac_key_for(product_id, previous.id))
        if previous is not None
        else None
    )
    stac = build_stac(
        config,
        prepared,
        asset_href=object_href(ws.store, "staging", okey),
        item_version=version,
        predecessor_href=predecessor,
    )
    ws.store.put_file("staging", okey, prepared.cog_path)
    payload = json.dumps(stac, indent=2, sort_keys=True).encode()
    ws.store.put_bytes("staging", skey, payload)
    faults.point("ingest.files_stored")

    with ws.transaction() as session:
        auth.require(session, actor, "ingest")
        register_product(session, config, actor=actor)
        if session.get(Item, item_id) is not None:  # a concurrent run staged it first
            result.status = "exists"
            return result
        prev = session.get(Item, previous.id) if previous is not None else None
        item = Item(
            id=item_id,
            product_id=product_id,
            source=prepared.source_name,
            source_key=prepared.source_key,
            source_digest=prepared.source_digest,
            content_digest=prepared.hexdigest,
            size=prepared.size,
            object_key=okey,
            stac_key=skey,
            stac=stac,
            state=ItemState.staging,
            submitted_by=actor,
            supersedes=prev.id if prev is not None else None,
            source_item_id=prepared.source_meta.source_item_id if prepared.source_meta else None,
            source_etag=prepared.source_meta.source_etag if prepared.source_meta else None,
        )
        session.add(item)
        session.flush()
        audit.append(
            session,
            actor=actor,
            action="ingest",
            target=item_id,
            product_id=product_id,
            state_after=ItemState.staging.value,
            digest=prepared.hexdigest,
            details={
                "source": prepared.source_name,
                "size": prepared.size,
                "supersedes": item.supersedes,
                "clipped": prepared.clipped,
            },
        )
        if prev is not None and prev.state in (ItemState.staging, ItemState.validation):
            lifecycle.transition(
                session,
                prev,
                ItemState.superseded,
                actor=actor,
                action="supersede",
                details={"by": item_id},
            )
    result.state = ItemState.staging.value
    result.item = stac
    return result


def _find_by_source_digest(ws: Workspace, product_id: str, digest: str | None) -> Item | None:
    if digest is None:
        return None
    with ws.read() as session:
        return session.exec(
            select(Item).where(Item.product_id == product_id, Item.source_digest == digest)
        ).first()


def _check_can_ingest(ws: Workspace, actor: str) -> None:
    with ws.read() as session:
        auth.require(session, actor, "ingest")


def iter_prepared(
    config: ProductConfig,
    tasks: Sequence[tuple[str, str | None]],
    workdir: Path,
    *,
    acquired: datetime | None,
    workers: int = 1,
    scheduler: str | None = None,
) -> Iterator[tuple[str, PreparedTile | GeomeshError]]:
    """Run :func:`prepare_tile` for each (source, source_digest), serially or in parallel.

    Results come back in input order. A GeomeshError for one tile is returned, not raised.
    """
    if scheduler or workers > 1:
        from geomesh.parallel import map_prepare  # process pool / dask

        yield from map_prepare(
            config, tasks, workdir, acquired=acquired, workers=workers, scheduler=scheduler
        )
        return
    for source, sdigest in tasks:
        try:
            yield (
                source,
                prepare_tile(config, source, workdir, acquired=acquired, source_digest=sdigest),
            )
        except GeomeshError as exc:
            yield source, exc


def ingest_rasters(
    ws: Workspace,
    config: ProductConfig,
    sources: Iterable[str | Path],
    *,
    actor: str,
    dry_run: bool = False,
    acquired: datetime | None = None,
    progress: Callable[[TileResult], None] | None = None,
    post_stage: PostStage | None = None,
    workers: int = 1,
    scheduler: str | None = None,
) -> IngestReport:
    """Ingest rasters into the product's staging area. Idempotent per content.

    ``post_stage`` (validation + routing) runs after each tile is staged; the default is
    :func:`geomesh.services.pipeline.default_post_stage`.
    """
    srcs = [str(s) for s in sources]
    _check_can_ingest(ws, actor)
    log = (
        None
        if dry_run
        else RunLog(ws.root, product_id=config.product_id, stderr=ws.settings.log_stderr)
    )
    report = IngestReport(
        product_id=config.product_id, run_id=log.run_id if log else "dry-run", dry_run=dry_run
    )
    if post_stage is None and not dry_run:
        from geomesh.services.pipeline import default_post_stage

        post_stage = default_post_stage

    # skip the file work for local sources already ingested with the same options
    tasks: list[tuple[str, str | None]] = []
    done: dict[str, TileResult] = {}
    for s in srcs:
        sdigest = source_digest_for(s, config)
        hit = _find_by_source_digest(ws, config.product_id, sdigest)
        if hit is not None:
            done[s] = TileResult(
                source=hit.source,
                status="exists",
                item_id=hit.id,
                digest=hit.content_digest,
                size=hit.size,
                object_key=hit.object_key,
                stac_key=hit.stac_key,
                state=hit.state.value,
                item=hit.stac,
            )
        else:
            tasks.append((s, sdigest))

    base = Path(tempfile.gettempdir()) if dry_run else ws.root
    workdir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}ingest-", dir=base))
    try:
        prepared_iter = iter_prepared(
            config, tasks, workdir, acquired=acquired, workers=workers, scheduler=scheduler
        )
        prepared_by_source: dict[str, PreparedTile | GeomeshError] = {}
        pending = iter(prepared_iter)
        for s in srcs:
            if s in done:
                res = done[s]
                try:
                    _run_post_stage(ws, config, res, actor=actor, post_stage=post_stage, log=log)
                except GeomeshError as exc:
                    res.status, res.error = "failed", str(exc)
            else:
                if s not in prepared_by_source:
                    for src, value in pending:
                        prepared_by_source[src] = value
                        if src == s:
                            break
                res = _finish_one(
                    ws,
                    config,
                    s,
                    prepared_by_source.pop(s),
                    actor=actor,
                    dry_run=dry_run,
                    post_stage=post_stage,
                    log=log,
                )
            report.results.append(res)
            if progress is not None:
                progress(res)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def _finish_one(
    ws: Workspace,
    config: ProductConfig,
    source: str,
    prepared: PreparedTile | GeomeshError,
    *,
    actor: str,
    dry_run: bool,
    post_stage: PostStage | None,
    log: RunLog | None,
) -> TileResult:
    name = sanitize_source(source)
    if isinstance(prepared, GeomeshError):
        if log:
            log.write(step="prepare", outcome="error", source=name, error=str(prepared))
        return TileResult(source=name, status="failed", error=str(prepared))
    if log:
        log.write(
            step="prepare",
            outcome="ok",
            item_id=item_id_for(config.product_id, prepared.hexdigest),
            source=name,
            size=prepared.size,
        )
    if dry_run:
        return _dry_run_result(ws, config, prepared)
    try:
        assert log is not None
        with log.step("stage", item_id=item_id_for(config.product_id, prepared.hexdigest)):
            res = stage_tile(ws, config, prepared, actor=actor)
        _run_post_stage(ws, config, res, actor=actor, post_stage=post_stage, log=log)
    except GeomeshError as exc:
        return TileResult(
            source=name,
            status="failed",
            error=str(exc),
            item_id=item_id_for(config.product_id, prepared.hexdigest),
        )
    return res


def _run_post_stage(
    ws: Workspace,
    config: ProductConfig,
    res: TileResult,
    *,
    actor: str,
    post_stage: PostStage | None,
    log: RunLog | None,
) -> None:
    """Validate + route a newly staged item, or one a crash left in staging unrouted."""
    if post_stage is None or log is None or res.item_id is None:
        return
    if not (res.status == "staged" or (res.status == "exists" and res.state == "staging")):
        return
    with log.step("validate+route", item_id=res.item_id) as info:
        res.state, res.route, res.findings = post_stage(ws, config, res.item_id, actor)
        info["outcome"] = res.route or "ok"


def _dry_run_result(ws: Workspace, config: ProductConfig, prepared: PreparedTile) -> TileResult:
    item_id = item_id_for(config.product_id, prepared.hexdigest)
    okey = object_key(prepared.hexdigest)
    with ws.read() as session:
        exists = session.get(Item, item_id) is not None
    stac = build_stac(config, prepared, asset_href=object_href(ws.store, "staging", okey))
    res = TileResult(
        source=prepared.source_name,
        status="exists" if exists else "would-stage",
        item_id=item_id,
        digest=prepared.hexdigest,
        size=prepared.size,
        object_key=okey,
        stac_key=stac_key_for(config.product_id, item_id),
        cog_warnings=prepared.cog_warnings,
        cog_errors=prepared.cog_errors,
        item=stac,
    )
    from geomesh.services.pipeline import dry_run_findings

    res.findings, res.route = dry_run_findings(ws, config, stac, prepared.cog_path)
    return res
