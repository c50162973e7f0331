"""Parallel ingestion: a process pool and a Dask LocalCluster give the serial run's results."""

from __future__ import annotations

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


def _run(tmp: Path, config: ProductConfig, sources: list[Path], **kw: Any) -> tuple[Any, Any]:
    ws = Workspace.open(Settings(storage_root=tmp))
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
        clustered = _run(tmp_path / "dask", config, tiles, scheduler=cluster.scheduler_address)
        again = _run(tmp_path / "dask", config, tiles, scheduler=cluster.scheduler_address)
    assert serial[0] == clustered[0]
    assert _strip_hrefs(serial[1], tmp_path / "serial") == _strip_hrefs(
        clustered[1], tmp_path / "dask"
    )
    # idempotent on the cluster too: the second batch stages nothing new
    assert {s for s, _ in again[0]} == {"exists"}
    assert again[1] == clustered[1]
