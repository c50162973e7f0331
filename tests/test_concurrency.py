"""Real processes racing on one database: each race ends as a serial run could have ended.

Run on SQLite (writers serialised by BEGIN IMMEDIATE) and on PostgreSQL (READ COMMITTED,
where two transactions can both find a row missing and both insert it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import governance_support as gs
import pytest
from _concurrency import hammer
from sqlmodel import col, select

from geomesh.config import load_config
from geomesh.models import AuditEvent, Item
from geomesh.services import history
from geomesh.services.pipeline import ingest_rasters
from geomesh.settings import Settings
from geomesh.workspace import Workspace

from conftest import SHARED

WORKERS = 3
TILES = 6


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """One storage root and one database that every worker process opens."""
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_env")["GEOMESH_DATABASE_URL"]
    schemas = SHARED / "stac-schemas"
    return Settings(
        storage_root=tmp_path / "root",
        database_url=url,
        schema_dir=schemas if schemas.is_dir() else None,
    )


def ingest_worker(
    index: int, settings: dict[str, Any], config_path: str, tiles: list[str]
) -> list[tuple[str, str | None, str | None]]:
    """Hammer worker: ingest every tile, each worker in another order (maximal overlap)."""
    ws = Workspace.open(Settings(**settings), migrate=False)
    try:
        order = tiles[index:] + tiles[:index]
        report = ingest_rasters(ws, load_config(config_path), order, actor="system")
        return [(r.status, r.item_id, r.error) for r in report.results]
    finally:
        ws.close()


def test_ingest_workers_on_overlapping_content_stage_each_tile_once(
    shared_settings: Settings, config_path: Path, make_raster: Callable[..., Path]
) -> None:
    tile = gs.tile_factory(make_raster)
    tiles = [str(tile(f"t{n}", n)) for n in range(TILES)]
    ws = Workspace.open(shared_settings)  # migrated once, audit key created once
    try:
        results = hammer(
            ingest_worker,
            WORKERS,
            shared_settings.model_dump(mode="python"),
            str(config_path),
            tiles,
        )
        flat = [r for per_worker in results for r in per_worker]
        assert [r for r in flat if r[0] not in ("staged", "exists")] == []
        staged = Counter(item_id for status, item_id, _ in flat if status == "staged")
        with ws.read() as s:
            items = s.exec(select(Item.id)).all()
            ingests = s.exec(
                select(AuditEvent.target).where(col(AuditEvent.action) == "ingest")
            ).all()
        assert len(items) == TILES  # no duplicate, none lost
        assert set(staged) == set(items) and set(staged.values()) == {1}  # staged once each
        assert sorted(ingests) == sorted(items)  # one ingest event per item
        assert history.verify_audit(ws) == []
    finally:
        ws.close()
