"""Shared helpers for the governance tests (sign-off, releases, rollback, audit, stateful).

Items come in through the real pipeline: ``ingest_rasters`` (real COGs, real object
store) followed by ``pipeline.validate_and_route_staged`` (real validation, findings persisted, severity
routing: a clean tile moves staging → validation).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import identity_support
from sqlmodel import select

from geomesh.config import ProductConfig
from geomesh.models import FindingRecord, Item, Severity, ValidationRun
from geomesh.services import history, pipeline, signoff
from geomesh.services.pipeline import ingest_rasters
from geomesh.storage import Area
from geomesh.workspace import Workspace

SUBMITTER = "ingester"  # a steward who ingests (and so may not approve)
STEWARDS = ("alice", "bob")
ROLES = {
    SUBMITTER: "steward",
    "alice": "steward",
    "bob": "steward",
    "root": "admin",
    "ana": "analyst",
    "vic": "viewer",
}


def add_users(ws: Workspace) -> None:
    """Every user of ``ROLES``: ``root`` bootstrapped as the first admin, the rest by it."""
    identity_support.add_users(ws, ROLES, admin="root")


def stay_in_staging(
    ws: Workspace, config: ProductConfig, item_id: str, actor: str
) -> tuple[str | None, str | None, dict[str, int]]:
    """Post-stage that does nothing: the item stays in 'staging', never validated."""
    del ws, config, item_id, actor
    return "staging", None, {}


def ingest(
    ws: Workspace,
    config: ProductConfig,
    paths: Iterable[Path],
    *,
    actor: str = SUBMITTER,
    post_stage: Callable[..., Any] = pipeline.validate_and_route_staged,
) -> list[str]:
    report = ingest_rasters(ws, config, [str(p) for p in paths], actor=actor, post_stage=post_stage)
    assert report.ok, report.to_json()
    return [r.item_id for r in report.results if r.item_id]


def add_finding(ws: Workspace, item_id: str, severity: str = "P2", *, passed: bool = False) -> None:
    """Record a later validation run with one open finding (rows as validation writes them),
    e.g. a re-validation under a stricter rule set after the item reached 'validation'."""
    with ws.transaction() as session:
        item = session.get(Item, item_id)
        assert item is not None
        run = ValidationRun(
            item_id=item.id,
            content_digest=item.content_digest,
            passed=passed,
            worst_severity=Severity(severity),
            actor="system",
        )
        session.add(run)
        session.flush()
        assert run.id is not None
        session.add(
            FindingRecord(
                run_id=run.id,
                item_id=item.id,
                product_id=item.product_id,
                rule_id="GM-TEST",
                severity=Severity(severity),
                path="assets.data",
                message="test finding",
                remediation="fix it",
            )
        )


def approve(ws: Workspace, config: ProductConfig, item_ids: Iterable[str], n: int = 1) -> None:
    for item_id in item_ids:
        for steward in STEWARDS[:n]:
            signoff.sign_off(ws, config, item_id, actor=steward, approve=True)


def states(ws: Workspace, product_id: str) -> dict[str, str]:
    with ws.read() as session:
        rows = session.exec(select(Item).where(Item.product_id == product_id)).all()
        return {r.id: r.state.value for r in rows}


def production_ids(ws: Workspace, product_id: str) -> set[str]:
    return {i for i, s in states(ws, product_id).items() if s == "production"}


def manifest_ids(ws: Workspace, product_id: str, ref: str = "current") -> set[str]:
    shown = history.show_release(ws, product_id, ref)
    return {i["id"] for i in shown["manifest"]["items"]}


def load_schema_cache(schema_dir: Path) -> dict[str, dict[str, Any]]:
    """URL → schema JSON for every file of the offline store (<dir>/<host>/<path>)."""
    return {
        "https://" + f.relative_to(schema_dir).as_posix(): json.loads(f.read_text())
        for f in schema_dir.rglob("*.json")
    }


def tile_factory(make_raster: Callable[..., Path]) -> Callable[..., Path]:
    """Small Sentinel-2-like tiles inside the example domain; same name = same source tile."""

    def make(name: str = "tile", seed: int = 0) -> Path:
        return make_raster(
            f"{name}.tif",
            width=256,
            height=256,
            seed=seed,
            tags={"TIFFTAG_DATETIME": "2024:06:12 19:03:21"},
        )

    return make


# ---- the object store, whatever the backend ------------------------------------------------
# The same assertions run on a local directory and on S3: they go through the store's own
# API (list/get/put/delete), never through local paths.


def stored_files(ws: Workspace, area: Area, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` in ``area`` with its bytes."""
    return {key: ws.store.get_bytes(area, key) for key in ws.store.list(area, prefix)}


def tamper(ws: Workspace, area: Area, key: str, change: Callable[[bytes], bytes]) -> None:
    """Overwrite a stored object behind geomesh's back (bit rot, an operator's edit)."""
    data = ws.store.get_bytes(area, key)
    changed = change(data)
    assert changed != data, f"tampering left {area}/{key} unchanged"
    ws.store.put_bytes(area, key, changed, overwrite=True)


def mirror(ws: Workspace, area: Area, dest: Path) -> Path:
    """Download every object of ``area`` into ``dest`` (same relative layout), so that
    pystac and pystac-client can open a published catalog from disk on any backend."""
    for key in ws.store.list(area):
        target = dest / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(ws.store.get_bytes(area, key))
    return dest
