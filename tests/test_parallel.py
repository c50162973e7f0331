"""Parallel ingestion: a process pool and a Dask LocalCluster give the serial run's results."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from geomesh.config import ProductConfig
from geomesh.models import Item
from geomesh.services.pipeline import ingest_rasters
from geomesh.settings import Settings
from geomesh.workspace import Workspace

WHEN = datetime(2024, 6, 12, tzinfo=UTC)


def _snapshot(ws: Workspace) -> tuple[list[tuple[Any, ...]], list[str]]:
    with ws.read() as s:
        rows = [
            (i.id, i.content_digest, i.size, i.object_key, i.state.value, i.stac)
            for i in s.exec(select(Item).order_by(Item.id)).all()
        ]
    return rows, sorted(ws.store.list("staging"))


@pytest.fixture
def tiles(make_raster: Callable[..., Path]) -> list[Path]:
    return [
        make_raster(
            f"t{i}.tif", width=256, height=256, seed=i, origin=(545000.0 + 2560 * i, 4185000.0)
        )
        for i in range(4)
    ] + [make_raster("bad.tif", width=8, height=8, crs=None)]


def _run(
    tmp: Path,
    config: ProductConfig,
    sources: list[Path],
    settings: dict[str, Any] | None = None,
    **kw: Any,
) -> tuple[Any, Any]:
    ws = Workspace.open(Settings(storage_root=tmp, **(settings or {})))
    try:
        report = ingest_rasters(ws, config, sources, actor="system", acquired=WHEN, **kw)
        snap = _snapshot(ws)
    finally:
        ws.close()
    return [(r.status, r.item_id) for r in report.results], snap


def _strip_hrefs(snap: Any, root: Path) -> Any:
    import json

    rows, keys = snap
    return json.loads(json.dumps(rows, default=str).replace(str(root), "<root>")), keys


def test_process_pool_equals_serial(
    tmp_path: Path, config: ProductConfig, tiles: list[Path]
) -> None:
    serial = _run(tmp_path / "serial", config, tiles)
    pooled = _run(tmp_path / "pool", config, tiles, workers=2)
    assert serial[0] == pooled[0]
    assert [s for s, _ in serial[0]].count("staged") == 5
    assert _strip_hrefs(serial[1], tmp_path / "serial") == _strip_hrefs(
        pooled[1], tmp_path / "pool"
    )


def test_dask_local_cluster_equals_serial(
    tmp_path: Path, config: ProductConfig, tiles: list[Path]
) -> None:
    distributed = pytest.importorskip("distributed")
    serial = _run(tmp_path / "serial", config, tiles)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as cluster:
        before = cluster.scheduler.transition_counter
        # the deployment's setting (GEOMESH_SCHEDULER) when the caller names no scheduler
        clustered = _run(
            tmp_path / "dask", config, tiles, settings={"scheduler": cluster.scheduler_address}
        )
        assert cluster.scheduler.transition_counter > before  # the cluster did the file work
        again = _run(tmp_path / "dask", config, tiles, scheduler=cluster.scheduler_address)
    assert serial[0] == clustered[0]
    assert _strip_hrefs(serial[1], tmp_path / "serial") == _strip_hrefs(
        clustered[1], tmp_path / "dask"
    )
    # idempotent on the cluster too: the second batch stages nothing new
    assert {s for s, _ in again[0]} == {"exists"}
    assert again[1] == clustered[1]


# ------------------------------------------------------------------ the default (issue 19)


def test_auto_plan_uses_one_single_threaded_process_per_core_for_a_batch() -> None:
    from geomesh.errors import ConfigError
    from geomesh.parallel import ALL_CPUS, PARALLEL_MIN_BYTES, Plan, plan_remote, plan_workers

    big = PARALLEL_MIN_BYTES
    # auto (None or 0): a batch → min(cores, tiles) processes × 1 GDAL thread
    assert plan_workers(16, None, cores=2, total_bytes=big) == Plan(2, "1")
    assert plan_workers(16, 0, cores=8, total_bytes=big) == Plan(8, "1")
    assert plan_workers(3, None, cores=8, total_bytes=big) == Plan(3, "1")
    # a single tile, one core, or a batch too small to repay the pool: in-process, all cores
    assert plan_workers(1, None, cores=8, total_bytes=big) == Plan(1, ALL_CPUS)
    assert plan_workers(16, None, cores=1, total_bytes=big) == Plan(1, ALL_CPUS)
    assert plan_workers(16, None, cores=2, total_bytes=big - 1) == Plan(1, ALL_CPUS)
    # explicit: 1 = serial; N = N processes sharing the cores' GDAL threads
    assert plan_workers(16, 1, cores=8) == Plan(1, ALL_CPUS)
    assert plan_workers(16, 2, cores=8) == Plan(2, "4")
    assert plan_workers(16, 4, cores=2) == Plan(4, "1")
    assert plan_workers(1, 4, cores=2) == Plan(1, ALL_CPUS)
    with pytest.raises(ConfigError, match="workers"):
        plan_workers(4, -1)
    # remote reads are I/O bound: more threads than cores, never more than the assets
    assert plan_remote(8, None, cores=2) == 8
    assert plan_remote(64, None, cores=2) == 8
    assert plan_remote(1, None, cores=2) == 1
    assert plan_remote(8, 1, cores=2) == 1


def test_auto_pool_equals_serial_and_records_the_source_digest(
    tmp_path: Path, config: ProductConfig, tiles: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default on a batch large enough for a pool (the threshold lowered to these small
    tiles): the same results, rows and objects as a serial run; the digest each worker
    computed while writing the COG is the one a re-run skips by."""
    from geomesh import parallel
    from geomesh.tiles import source_digest_for

    serial = _run(tmp_path / "serial", config, tiles, workers=1)
    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 1)
    assert parallel.plan_workers(len(tiles), None, total_bytes=1).processes == min(
        parallel.default_workers(), len(tiles)
    )
    auto = _run(tmp_path / "auto", config, tiles)
    assert serial[0] == auto[0]
    assert _strip_hrefs(serial[1], tmp_path / "serial") == _strip_hrefs(auto[1], tmp_path / "auto")
    ws = Workspace.open(Settings(storage_root=tmp_path / "auto"))
    try:
        with ws.read() as s:
            digests = {i.source: i.source_digest for i in s.exec(select(Item)).all()}
        assert digests == {str(p.resolve()): source_digest_for(str(p), config) for p in tiles}
        again = ingest_rasters(ws, config, tiles, actor="system", acquired=WHEN)
    finally:
        ws.close()
    assert [r.status for r in again.results] == ["exists"] * len(tiles)


def test_a_batch_worker_starts_without_the_catalog_stac_or_http_libraries() -> None:
    """Issue 19: every worker process imports what ``prepare_tile`` needs (GDAL, rio-cogeo,
    the product config) and nothing the caller alone uses: the database layer, pystac,
    the HTTP client of the probes, the settings loader. Each of them cost every worker tens
    to hundreds of ms of CPU on cores the batch already fills."""
    code = "import json, sys\nimport geomesh.parallel\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    loaded = set(json.loads(out))
    assert {"rasterio", "rio_cogeo", "geomesh.tiles", "geomesh.config"} <= loaded
    caller_only = ("sqlmodel", "sqlalchemy", "pystac", "pydantic_settings", "httpcore2", "anyio")
    assert not [m for m in caller_only if m in loaded]
    # httpx2 is bound lazily for the probes: a placeholder, none of its modules run
    assert not [m for m in loaded if m.startswith("httpx2.")]
