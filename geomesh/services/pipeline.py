"""The ingest pipeline, end to end: prepare → stage → validate → route, for a batch of tiles.

The orchestrator of the services below it: the file work (``geomesh.tiles``, in parallel
through ``geomesh.parallel``), then, by default, admission (``services.admission``: staging,
validation and severity routing in one transaction). A caller's own post-stage hook runs
after staging (``services.ingest``) commits instead. Each tile is admitted in the calling
process, so a parallel batch leaves the same rows as a serial one.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from geomesh.config import ProductConfig
from geomesh.db import chunks
from geomesh.errors import GeomeshError
from geomesh.logs import RunLog
from geomesh.models import Item
from geomesh.opening import OpeningPolicy
from geomesh.parallel import iter_prepared
from geomesh.raster import sanitize_source
from geomesh.redact import redact
from geomesh.services.admission import admit_tile
from geomesh.services.ingest import (
    IngestReport,
    TileResult,
    find_by_source_digest,
    ingest_policy,
    stage_tile,
)
from geomesh.services.routing import RouteOutcome, route_action, route_item
from geomesh.services.validation import validate_item
from geomesh.stac import build_stac, item_id_for
from geomesh.storage import TMP_PREFIX, object_key
from geomesh.tiles import (
    PreparedTile,
    object_href,
    source_digest_for,
    source_key_for,
    stac_key_for,
)
from geomesh.validation.engine import validate_document
from geomesh.validation.findings import count_by_severity
from geomesh.validation.rules import KnownRaster
from geomesh.workspace import Workspace

#: called after a tile is staged (validation + routing)
PostStage = Callable[
    [Workspace, ProductConfig, str, str], tuple[str | None, str | None, dict[str, int]]
]


def validate_and_route(
    ws: Workspace,
    config: ProductConfig,
    item_id: str,
    *,
    actor: str,
    strict: bool = False,
    known: KnownRaster | None = None,
) -> RouteOutcome:
    """Validate a staged item (findings persisted) and route it by its worst severity."""
    findings = validate_item(ws, config, item_id, actor=actor, strict=strict, known=known)
    return route_item(ws, config, item_id, findings, actor=actor)


def validate_and_route_staged(
    ws: Workspace, config: ProductConfig, item_id: str, actor: str
) -> tuple[str | None, str | None, dict[str, int]]:
    """The ingest pipeline hook: (state, route action, counts per severity)."""
    out = validate_and_route(ws, config, item_id, actor=actor)
    return out.state, out.action, out.counts


def post_stage_hook(
    ws: Workspace,
    config: ProductConfig,
    item_id: str,
    actor: str,
    post_stage: PostStage | None,
) -> tuple[str | None, str | None, dict[str, int]]:
    """Run ``post_stage`` on a staged item, or the default (validation + routing) when it
    is None; a caller's own hook is called as ``post_stage(ws, config, item_id, actor)``."""
    if post_stage is None:
        return validate_and_route_staged(ws, config, item_id, actor)
    return post_stage(ws, config, item_id, actor)


def stage_and_check(
    ws: Workspace,
    config: ProductConfig,
    prepared: PreparedTile,
    *,
    actor: str,
    post_stage: PostStage | None,
    log: RunLog,
    **log_extra: Any,
) -> TileResult:
    """Stage a prepared tile and validate + route it: by default in ONE transaction
    (:func:`~geomesh.services.admission.admit_tile`, logged as step ``admit``); with a
    caller's ``post_stage``, that hook runs after the staging transaction commits."""
    item_id = item_id_for(config.product_id, prepared.hexdigest)
    if post_stage is None:
        with log.step("admit", item_id=item_id, **log_extra) as info:
            res = admit_tile(ws, config, prepared, actor=actor)
            info["outcome"] = res.route or res.status
        return res
    with log.step("stage", item_id=item_id, **log_extra):
        res = stage_tile(ws, config, prepared, actor=actor)
    if res.status == "staged":
        _run_post_stage(ws, config, res, actor=actor, post_stage=post_stage, log=log)
    return res


def held_source_keys(session: Session, product_id: str, keys: list[str]) -> set[str]:
    """Which of ``keys`` (``source_key_for``) the product holds an item of."""
    held: set[str] = set()
    for chunk in chunks(sorted(set(keys))):
        held.update(
            session.exec(
                select(Item.source_key)
                .where(Item.product_id == product_id)
                .where(col(Item.source_key).in_(chunk))
                .distinct()
            ).all()
        )
    return held


def dry_run_findings(
    ws: Workspace, config: ProductConfig, stac: dict[str, Any], cog_path: Path
) -> tuple[dict[str, int], str | None]:
    """The counts and route a tile would get, without writing anything."""
    findings = validate_document(
        stac, config=config, schema_dir=ws.schema_dir, raster_path=cog_path
    )
    return count_by_severity(findings), route_action(config, findings)


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
    workers: int | None = None,
    scheduler: str | None = None,
    policy: OpeningPolicy | None = None,
) -> IngestReport:
    """Ingest rasters into the product's staging area. Idempotent per content.

    ``post_stage`` runs after each tile is staged; the default (None) admits each new tile
    (staged, validated with the digest the file work computed, and routed) in one
    transaction, :func:`~geomesh.services.admission.admit_tile`.
    ``policy`` says what may be opened (default: the operator's,
    :meth:`OpeningPolicy.operator`); the app passes an untrusted one. A source it refuses
    fails before a byte of it is read. ``workers``: None = the setting ``GEOMESH_WORKERS``;
    unset or 0 = automatic (:func:`geomesh.parallel.plan_workers`: a batch in one
    single-threaded process per core, a single tile in-process with every GDAL thread),
    1 = serial, N = N processes. ``scheduler``: None = ``GEOMESH_SCHEDULER``.

    A local source is hashed up front only when the product already holds an item from
    the same location (a re-run: the same bytes and options skip the file work); any other
    source is hashed while its COG is written, and the digest recorded on its item.
    """
    srcs = [str(s) for s in sources]
    with ws.read() as session:
        config = ingest_policy(session, config, actor=actor)
        # the locations the product holds an item of (a refused source's key is not used)
        held = held_source_keys(session, config.product_id, [source_key_for(s) for s in srcs])
    if policy is None:
        policy = OpeningPolicy.operator(ws.settings, config)
    log = (
        None
        if dry_run
        else RunLog(ws.root, product_id=config.product_id, stderr=ws.settings.log_stderr)
    )
    report = IngestReport(
        product_id=config.product_id, run_id=log.run_id if log else "dry-run", dry_run=dry_run
    )
    # skip the file work for local sources already ingested with the same options
    tasks: list[tuple[str, str | None]] = []
    done: dict[str, TileResult] = {}
    allowed: list[str] = []
    for s in srcs:
        try:
            policy.check(s, probe=False)  # refused: fails before the source is hashed
        except GeomeshError as exc:
            done[s] = _refused(s, exc, log)
            continue
        allowed.append(s)
    for s in allowed:
        # a location the product holds: hash now, a re-run of the same bytes skips the work
        sdigest = source_digest_for(s, config) if source_key_for(s) in held else None
        hit = find_by_source_digest(ws, config.product_id, sdigest)
        if hit is not None:
            done[s] = TileResult.existing(hit)
        else:
            tasks.append((s, sdigest))

    base = Path(tempfile.gettempdir()) if dry_run else ws.root
    workdir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}ingest-", dir=base))
    try:
        prepared_iter = iter_prepared(
            config,
            tasks,
            workdir,
            acquired=acquired,
            workers=ws.settings.workers if workers is None else workers,
            scheduler=scheduler or ws.settings.scheduler,
            policy=policy,
            flush=ws.store.adopts_files and not dry_run,
        )
        prepared_by_source: dict[str, PreparedTile | GeomeshError] = {}
        pending = iter(prepared_iter)
        for s in srcs:
            if s in done:
                res = done[s]
                try:
                    _run_post_stage(ws, config, res, actor=actor, post_stage=post_stage, log=log)
                except GeomeshError as exc:
                    res.status, res.error = "failed", redact(str(exc), s)
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


def _refused(source: str, exc: GeomeshError, log: RunLog | None) -> TileResult:
    name = sanitize_source(source)
    error = redact(str(exc), source)
    if log:
        log.write(step="prepare", outcome="refused", source=name, error=error)
    return TileResult(source=name, status="failed", error=error)


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
        error = redact(str(prepared), source)
        if log:
            log.write(step="prepare", outcome="error", source=name, error=error)
        return TileResult(source=name, status="failed", error=error)
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
        res = stage_and_check(ws, config, prepared, actor=actor, post_stage=post_stage, log=log)
        if res.status == "exists":  # an item a crash left in staging is routed now
            _run_post_stage(ws, config, res, actor=actor, post_stage=post_stage, log=log)
    except GeomeshError as exc:
        return TileResult(
            source=name,
            status="failed",
            error=redact(str(exc), source),
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
    """Validate + route a newly staged item, or one a crash left in staging unrouted.

    No ``log``: a dry run, nothing is validated or routed.
    """
    if log is None or res.item_id is None:
        return
    if not (res.status == "staged" or (res.status == "exists" and res.state == "staging")):
        return
    with log.step("validate+route", item_id=res.item_id) as info:
        res.state, res.route, res.findings = post_stage_hook(
            ws, config, res.item_id, actor, post_stage
        )
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
    res.findings, res.route = dry_run_findings(ws, config, stac, prepared.cog_path)
    return res
