"""Crash safety: SIGKILL the CLI at every write step; the catalog stays consistent and converges.

For each scenario the harness (1) runs the operation once with GEOMESH_FAULT_TRACE to list
every crash point it reaches, (2) keeps that run's end state as the reference, then (3) for
each point copies the pre-operation catalog, runs the operation with GEOMESH_CRASH_AT=<point>
(the process is SIGKILLed there), checks `geomesh doctor` finds the catalog consistent and
nothing visible half-written, re-runs the operation and checks it converges to the reference.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from geomesh.catalog import Catalog
from geomesh.doctor import run_doctor
from geomesh.models import AuditEvent, Item, Product, Release
from geomesh.settings import Settings

from conftest import BACKEND, SHARED

pytestmark = pytest.mark.skipif(
    BACKEND != "sqlite-local", reason="crash injection copies the catalog directory (local backend)"
)
GEOMESH = str(Path(sys.executable).parent / "geomesh")


@dataclass
class Scenario:
    name: str
    setup: Callable[[Path, Path], None]  # (storage root, workdir) -> pre-operation catalog
    argv: Callable[[Path], list[str]]  # workdir -> CLI arguments of the operation


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOMESH_")}
    env["GEOMESH_STORAGE_ROOT"] = str(root)
    schemas = SHARED / "stac-schemas"
    if schemas.is_dir():
        env["GEOMESH_SCHEMA_DIR"] = str(schemas)
    env.update(extra)
    return env


def run_cli(root: Path, argv: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GEOMESH, *argv],
        env=_env(root, **extra),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def snapshot(root: Path) -> dict[str, Any]:
    """Everything a user can see: items and states, releases, pointers, the audit story."""
    cat = Catalog.open(Settings(storage_root=root))
    try:
        with cat.read() as s:
            items = sorted((i.id, i.state.value, i.content_digest) for i in s.exec(select(Item)))
            releases = sorted(
                (r.product_id, r.version, r.item_count) for r in s.exec(select(Release))
            )
            current = sorted((p.id, p.current_release_id) for p in s.exec(select(Product)))
            story = [
                (e.actor, e.action, e.target, e.state_before, e.state_after)
                for e in s.exec(select(AuditEvent).order_by(AuditEvent.seq))
            ]
        objects = sorted(cat.store.list("staging", "sha256/"))
    finally:
        cat.close()
    return {
        "items": items,
        "releases": releases,
        "current": current,
        "audit": story,
        "objects": objects,
    }


def assert_consistent(root: Path) -> None:
    cat = Catalog.open(Settings(storage_root=root))
    try:
        report = run_doctor(cat, deep=True)
        assert report.consistent, report.to_json()
        # nothing visible is half-written: every content-addressed object hashes to its key
        for key in cat.store.list("staging", "sha256/"):
            with cat.store.open_local("staging", key) as p:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            assert key.endswith(f"{digest[2:]}.tif"), f"{key} is not its content"
    finally:
        cat.close()


def crash_points(template: Path, work: Path, argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    root = work / "trace-root"
    shutil.copytree(template, root)
    trace = work / "trace.txt"
    res = run_cli(root, argv, GEOMESH_FAULT_TRACE=str(trace))
    assert res.returncode in (0, 1), res.stderr
    points = trace.read_text().split() if trace.exists() else []
    return points, snapshot(root)


def check_scenario(scenario: Scenario, tmp_path: Path) -> int:
    template = tmp_path / "template"
    scenario.setup(template, tmp_path)
    argv = scenario.argv(tmp_path)
    points, reference = crash_points(template, tmp_path, argv)
    assert points, f"{scenario.name}: no crash points reached"
    for i, point in enumerate(points):
        root = tmp_path / f"crash-{i}"
        shutil.copytree(template, root)
        res = run_cli(root, argv, GEOMESH_CRASH_AT=point)
        assert res.returncode == -signal.SIGKILL, (point, res.returncode, res.stderr[-2000:])
        assert_consistent(root)
        rerun = run_cli(root, argv)
        assert rerun.returncode in (0, 1), (point, rerun.stderr[-2000:])
        assert_consistent(root)
        assert snapshot(root) == reference, (
            f"{scenario.name}: no convergence after crash at {point}"
        )
        shutil.rmtree(root)
    return len(points)


# ------------------------------------------------------------------ scenarios


def _write_config(work: Path) -> Path:
    from conftest import EXAMPLE_CONFIG

    cfg = work / "product.yaml"
    cfg.write_text(EXAMPLE_CONFIG)
    return cfg


def _tile(work: Path, name: str, seed: int) -> Path:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    path = work / name
    if not path.exists():
        data = np.random.default_rng(seed).integers(1, 10000, (2, 128, 128)).astype("uint16")
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=128,
            height=128,
            count=2,
            dtype="uint16",
            crs="EPSG:32610",
            nodata=0,
            transform=from_origin(545000.0, 4185000.0, 10, 10),
        ) as ds:
            ds.write(data)
            ds.update_tags(TIFFTAG_DATETIME="2024:06:12 19:03:21")
    return path


def _empty_catalog(root: Path, work: Path) -> None:
    _write_config(work)
    Catalog.open(Settings(storage_root=root)).close()


INGEST = Scenario(
    name="ingest",
    setup=_empty_catalog,
    argv=lambda work: ["ingest", str(_write_config(work)), str(_tile(work, "a.tif", 1))],
)


def test_crash_during_ingest(tmp_path: Path) -> None:
    n = check_scenario(INGEST, tmp_path)
    assert n >= 5
