"""The ingest pipeline, end to end: prepare → stage → validate → route, for a batch of tiles.

The orchestrator of the services below it: the file work (``geomesh.tiles``, in parallel
through ``geomesh.parallel``), staging (``services.ingest``), validation
(``services.validation``) and severity routing (``services.routing``). Each tile is staged
and routed in the calling process, one transaction per step, so a parallel batch leaves the
same rows as a serial one.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from geomesh.config import ProductConfig
from geomesh.errors import GeomeshError
from geomesh.logs import RunLog
from geomesh.models import Item
from geomesh.parallel import iter_prepared
from geomesh.raster import sanitize_source
from geomesh.services.ingest import (
    IngestReport,
    TileResult,
    check_can_ingest,
    find_by_source_digest,
    stage_tile,
)
from geomesh.services.routing import RouteOutcome, route_action, route_item
from geomesh.services.validation import validate_item
from geomesh.stac import item_id_for
from geomesh.storage import TMP_PREFIX, object_key
from geomesh.tiles import PreparedTile, build_stac, object_href, source_digest_for, stac_key_for
from geomesh.validation import count_by_severity, validate_document
from geomesh.workspace import Workspace

#: called after a tile is staged (validation + routing)
PostStage = Callable[
    [Workspace, ProductConfig, str, str], tuple[str | None, str | None, dict[str, int]]
]


def validate_and_route(
    ws: Workspace, config: ProductConfig, item_id: str, *, actor: str, strict: bool = False
) -> RouteOutcome:
    """Validate a staged item (findings persisted) and route it by its worst severity."""
    findings = validate_item(ws, config, item_id, actor=actor, strict=strict)
    return route_item(ws, config, item_id, findings, actor=actor)


def validate_and_route_staged(
    ws: Workspace, config: ProductConfig, item_id: str, actor: str
) -> tuple[str | None, str | None, dict[str, int]]:
    """The ingest pipeline hook: (state, route action, counts per severity)."""
    out = validate_and_route(ws, config, item_id, actor=actor)
    return out.state, out.action, out.counts


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
    workers: int = 1,
    scheduler: str | None = None,
) -> IngestReport:
    """Ingest rasters into the product's staging area. Idempotent per content.

    ``post_stage`` (validation + routing) runs after each tile is staged; the default is
    :func:`validate_and_route_staged`.
    """
    srcs = [str(s) for s in sources]
    check_can_ingest(ws, actor)
    log = (
        None
        if dry_run
        else RunLog(ws.root, product_id=config.product_id, stderr=ws.settings.log_stderr)
    )
    report = IngestReport(
        product_id=config.product_id, run_id=log.run_id if log else "dry-run", dry_run=dry_run
    )
    if post_stage is None and not dry_run:
        post_stage = validate_and_route_staged

    # skip the file work for local sources already ingested with the same options
    tasks: list[tuple[str, str | None]] = []
    done: dict[str, TileResult] = {}
    for s in srcs:
        sdigest = source_digest_for(s, config)
        hit = find_by_source_digest(ws, config.product_id, sdigest)
        if hit is not None:
            done[s] = TileResult.existing(hit)
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
    res.findings, res.route = dry_run_findings(ws, config, stac, prepared.cog_path)
    return res
