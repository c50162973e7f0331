"""Publication at scale (issue 15): structural sharing, old layouts, snapshots, random use.

Every release is a self-contained static STAC catalog whose unchanged partitions and item
documents are shared with its parent's; these tests read what was published through pystac
(on a local mirror of the store, so they run on both backends) and through the store API.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import governance_support as gs
import pystac
import pytest
from sqlmodel import delete, select

from geomesh import releases
from geomesh.config import ProductConfig
from geomesh.doctor import run_doctor
from geomesh.errors import NotFound, NothingToRollBack, PermissionDenied
from geomesh.models import Item, Product, Release
from geomesh.releases import Manifest, ManifestItem
from geomesh.services import history, promotion, publication, rollback, snapshot
from geomesh.workspace import Workspace

PID = "sentinel2-msi-l2a-v2.1"
CATALOGS = f"catalogs/{PID}/"


@pytest.fixture
def ws(workspace: Workspace) -> Workspace:
    gs.add_users(workspace)
    return workspace


@pytest.fixture
def tile(make_raster: Callable[..., Path]) -> Callable[..., Path]:
    return gs.tile_factory(make_raster)


def release(ws: Workspace, config: ProductConfig, paths: list[Path]) -> history.ReleaseInfo:
    ids = gs.ingest(ws, config, paths)
    gs.approve(ws, config, ids)
    result = promotion.promote(ws, config, actor="alice")
    assert result.release is not None
    return result.release


def walk(root: Path, version: str) -> set[str]:
    """The item ids pystac finds walking the release's catalog from its catalog.json."""
    catalog = pystac.Catalog.from_file(str(root / releases.catalog_key(PID, version)))
    assert catalog.extra_fields["version"] == version
    ids = set()
    for item in catalog.get_items(recursive=True):
        data = item.assets["data"]
        target = Path(data.get_absolute_href() or "")
        assert target.is_file(), f"{item.id}: {data.href} does not resolve"
        ids.add(item.id)
    return ids


def partitions(ws: Workspace, version: str) -> dict[str, str]:
    """Partition → production key of the partition document, as a release links it."""
    key = releases.collection_key(PID, version)
    doc = json.loads(ws.store.get_bytes("production", key))
    out = {}
    for b, ln in releases.partition_links(doc).items():
        resolved = releases.resolve(key, ln["href"])
        assert resolved is not None
        out[b] = resolved
    return out


# ------------------------------------------------------------------ structural sharing


def test_a_partition_is_shared_between_releases_that_differ_elsewhere(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    names = [chr(ord("a") + i) for i in range(6)]
    first = release(ws, config, [tile(n, i) for i, n in enumerate(names)])
    with ws.read() as s:
        by_name = {Path(str(i.source)).stem: i for i in s.exec(select(Item)).all()}
    touched = releases.partition_of(by_name["a"].source_key)
    assert len({releases.partition_of(i.source_key) for i in by_name.values()}) >= 2
    before_catalogs = set(ws.store.list("production", CATALOGS))
    before_parts = set(ws.store.list("production", f"releases/{PID}/parts/"))
    second = release(ws, config, [tile("a", 99)])  # a reprocessed tile: PATCH
    assert second.version == "1.0.1"
    one, two = partitions(ws, first.version), partitions(ws, second.version)
    assert one.keys() == two.keys()
    for b in one:
        if b == touched:
            assert one[b] != two[b]  # the one partition that changed was rewritten
        else:
            assert one[b] == two[b]  # every other one is the same stored object
    # what the new release wrote: its item document, one partition and its two small
    # documents (catalog.json, collection.json), plus the rewritten release index
    new = set(ws.store.list("production", CATALOGS)) - before_catalogs
    by_kind = sorted(k.removeprefix(CATALOGS).split("/", 1)[0] for k in new)
    assert by_kind == sorted(["items", "parts", "1.0.1", "1.0.1"]), new
    # and the manifest tree: one new part, the other parts referenced by both roots
    new_parts = set(ws.store.list("production", f"releases/{PID}/parts/")) - before_parts
    assert len(new_parts) == 1
    m1 = releases.load_manifest(ws.store, PID, first.id)
    m2 = releases.load_manifest(ws.store, PID, second.id)
    assert {b for b in m1.parts if m1.parts[b] != m2.parts[b]} == {touched}
    # both releases are complete catalogs that pystac walks
    with tempfile.TemporaryDirectory() as tmp:
        root = gs.mirror(ws, "production", Path(tmp))
        assert walk(root, first.version) == gs.manifest_ids(ws, PID, first.version)
        assert walk(root, second.version) == gs.manifest_ids(ws, PID, second.version)
    assert run_doctor(ws, deep=True).consistent


# ------------------------------------------------------------------ random use


def test_pystac_walks_every_release_after_50_random_steps(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    """50 random promote / reprocess / item-rollback / release-rollback (withdrawal
    included) steps; then pystac walks every release's catalog and finds exactly its
    manifest's items, and `doctor --deep` finds the shared structure intact."""
    rng = random.Random(15)
    names: list[str] = []
    steps: list[str] = []
    for seed in range(1, 51):
        released = sorted(gs.production_ids(ws, PID))
        choice = rng.choice(["new", "new", "reprocess", "item", "release"])
        if choice == "reprocess" and not names:
            choice = "new"
        if choice in ("item", "release") and not released:
            choice = "new"
        if choice == "new":
            names.append(f"t{len(names)}")
            release(ws, config, [tile(names[-1], seed)])
        elif choice == "reprocess":
            release(ws, config, [tile(rng.choice(names), seed)])
        elif choice == "item":
            rollback.rollback_item(ws, config, rng.choice(released), actor="bob")
        else:
            rollback.rollback_release(ws, config, actor="bob")
        steps.append(choice)
    assert len(set(steps)) == 4, steps
    infos = history.list_releases(ws, PID)
    assert len(infos) >= 30
    with tempfile.TemporaryDirectory() as tmp:
        root = gs.mirror(ws, "production", Path(tmp))
        for info in infos:
            assert walk(root, info.version) == gs.manifest_ids(ws, PID, info.id), info.version
        index = json.loads((root / releases.index_key(PID)).read_text())
    current = next((i for i in infos if i.current), None)
    assert (index["geomesh:current"] or {}).get("version") == (current.version if current else None)
    assert gs.production_ids(ws, PID) == (gs.manifest_ids(ws, PID) if current else set())
    report = run_doctor(ws, deep=True)
    assert report.consistent, report.to_json()
    # structural sharing: far fewer partitions than releases × partitions per release
    assert report.checked["catalog_partitions"] < sum(len(partitions(ws, i.version)) for i in infos)


# ------------------------------------------------------------------ the old layout


def _legacy_catalog(ws: Workspace, manifest: Manifest, items: list[ManifestItem]) -> None:
    """Publish ``manifest`` the way geomesh did before issue 15: pystac's self-contained
    layout under catalogs/<product>/<version>/ (catalog, <product>/collection.json,
    <product>/<item>/<item>.json with asset hrefs to the released objects)."""
    from pystac.extensions.version import VersionExtension

    prefix = releases.catalog_prefix(PID, manifest.version)
    with tempfile.TemporaryDirectory() as tmp:
        catalog = pystac.Catalog(id=PID, description="legacy", title=f"{PID} {manifest.version}")
        stac_items = []
        for m in items:
            d = releases.load_item_json(ws.store, m)
            d["links"] = []
            d.pop("collection", None)
            stac_items.append(pystac.Item.from_dict(d, preserve_dict=True))
        collection = pystac.Collection(
            id=PID,
            description="legacy",
            extent=pystac.Extent.from_items(stac_items),
            extra_fields={"geomesh:release_id": manifest.id},
        )
        for obj in (catalog, collection):
            VersionExtension.ext(obj, add_if_missing=True).apply(version=manifest.version)
        catalog.add_child(collection)
        for item in stac_items:
            collection.add_item(item)
        catalog.normalize_hrefs(tmp)
        by_id = {m.id: m for m in items}
        for item in stac_items:
            rel = Path(item.get_self_href() or "").relative_to(tmp).as_posix()
            item.assets["data"].href = str(
                Path(*[".."] * (rel.count("/") + 3)) / by_id[item.id].object_key
            )
        catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
        files = sorted(p for p in Path(tmp).rglob("*.json"))
        for p in [f for f in files if f.name != "catalog.json"] + [Path(tmp) / "catalog.json"]:
            key = f"{prefix}/{p.relative_to(tmp).as_posix()}"
            ws.store.put_bytes("production", key, p.read_bytes(), overwrite=True)


def make_legacy(ws: Workspace, info: history.ReleaseInfo) -> str:
    """Turn a first release into what a pre-issue-15 geomesh left: a format-1 manifest
    and a layout-1 catalog (the release row re-keyed to the format-1 manifest's id)."""
    current = releases.load_manifest(ws.store, PID, info.id)
    items = list(releases.iter_items(ws.store, current))
    doc = {"manifest_version": 1, **current.head_dict()} | {
        "items": [m.to_dict() for m in sorted(items, key=lambda m: m.id)]
    }
    legacy = Manifest.from_dict(doc)
    assert legacy.legacy_items is not None and legacy.id != info.id
    ws.store.put_bytes("production", releases.manifest_key(PID, legacy.id), legacy.canonical_json())
    for key in gs.stored_files(ws, "production", CATALOGS):  # nothing published yet
        ws.store.delete("production", key)
    with ws.transaction() as s:
        row = s.get(Release, info.id)
        assert row is not None
        data = row.model_dump()
        s.exec(delete(Release).where(Release.id == info.id))  # type: ignore[call-overload]
        s.flush()
        data |= {"id": legacy.id, "manifest_key": releases.manifest_key(PID, legacy.id)}
        s.add(Release(**data))
        product = s.get(Product, PID)
        assert product is not None
        product.current_release_id = legacy.id
        s.add(product)
    _legacy_catalog(ws, legacy, items)
    return legacy.id


def test_releases_published_in_the_old_layout_stay_readable(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path], tmp_path: Path
) -> None:
    first = release(ws, config, [tile("a", 1), tile("b", 2), tile("c", 3)])
    legacy_id = make_legacy(ws, first)
    publication.refresh_index(ws, PID)
    report = run_doctor(ws, deep=True)
    assert report.consistent, report.to_json()
    assert report.checked["catalogs_layout_1"] == 1
    assert releases.layout_of(ws.store, PID, "1.0.0") == 1
    assert history.catalog_at(ws, PID, "1.0.0").release_id == legacy_id
    v1_ids = gs.manifest_ids(ws, PID, "1.0.0")
    # a release on top of it is published in the new layout (every part stored once)
    second = release(ws, config, [tile("d", 4)])
    assert releases.layout_of(ws.store, PID, second.version) == releases.LAYOUT
    m2 = releases.load_manifest(ws.store, PID, second.id)
    for ref in m2.parts.values():
        assert ws.store.exists("production", releases.part_key(PID, ref.id))
    diff = history.diff_releases(ws, PID, "1.0.0", second.version)
    assert len(diff.added) == 1 and not diff.removed and not diff.changed
    root = gs.mirror(ws, "production", tmp_path / "published")
    assert walk(root, "1.0.0") == v1_ids
    assert walk(root, second.version) == v1_ids | set(diff.added)
    # the new catalog's predecessor link still reaches the old one
    newer = pystac.Catalog.from_file(str(root / releases.catalog_key(PID, second.version)))
    pred = newer.get_single_link("predecessor-version")
    assert pred is not None
    assert pystac.Catalog.from_file(pred.get_absolute_href() or "").extra_fields["version"] == (
        "1.0.0"
    )
    # an item rollback and a release rollback across the layouts
    rollback.rollback_item(ws, config, sorted(v1_ids)[0], actor="bob")
    rollback.rollback_release(ws, config, actor="bob")
    report = run_doctor(ws, deep=True)
    assert report.consistent, report.to_json()
    # and doctor --deep notices a corrupt shared partition (it hashes to its name)
    part = next(iter(partitions(ws, second.version).values()))
    gs.tamper(ws, "production", part, lambda b: b.replace(b'"Catalog"', b'"Catalog" '))
    assert "checksum-mismatch" in run_doctor(ws, deep=True).kinds("error")


# ------------------------------------------------------------------ the columnar snapshot


def test_snapshot_is_stac_geoparquet_that_duckdb_geopandas_and_rustac_read(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path], tmp_path: Path
) -> None:
    import duckdb
    import geopandas
    import rustac

    info = release(ws, config, [tile("a", 1), tile("b", 2), tile("c", 3)])
    ids = gs.manifest_ids(ws, PID)
    with pytest.raises(PermissionDenied):
        snapshot.snapshot_release(ws, PID, actor="vic")
    done = snapshot.snapshot_release(ws, PID, actor="alice")
    assert not done.already and done.key == f"{CATALOGS}{info.version}/items.parquet"
    again = snapshot.snapshot_release(ws, PID, info.version, actor="alice")
    assert again.already and again.key == done.key
    [row] = history.list_releases(ws, PID)
    assert row.snapshot_key == done.key
    index = json.loads(ws.store.get_bytes("production", releases.index_key(PID)))
    [entry] = index["geomesh:releases"]
    assert entry["links"] == [
        {
            "rel": "alternate",
            "href": f"./{info.version}/items.parquet",
            "type": "application/vnd.apache.parquet",
            "title": f"stac-geoparquet snapshot of {info.version}",
        }
    ]
    root = gs.mirror(ws, "production", tmp_path / "published")
    path = root / done.key
    got = rustac.read_sync(str(path))
    assert {f["id"] for f in got["features"]} == ids
    frame = geopandas.read_parquet(path)
    assert set(frame["id"]) == ids and frame.geometry.notna().all()
    assert {r[0] for r in duckdb.sql(f"select id from read_parquet('{path}')").fetchall()} == ids
    # asset hrefs stay relative and resolve from the snapshot's folder to the objects
    for feature in got["features"]:
        href = feature["assets"]["data"]["href"]
        target = (path.parent / href).resolve()
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        assert feature["assets"]["data"]["file:checksum"] == "1220" + digest
    assert run_doctor(ws, deep=True).consistent
    shutil.rmtree(root)


def test_withdrawn_product_has_no_current_release_anywhere(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    from geomesh.services import queries

    release(ws, config, [tile("a", 1)])
    rollback.rollback_release(ws, config, actor="bob")
    assert queries.list_products(ws)[0]["current_version"] is None
    assert queries.released_item_ids(ws, PID) == {"total": 0, "ids": []}
    with pytest.raises(NothingToRollBack):
        queries.rollback_impact(ws, PID, kind="release")
    with pytest.raises(NotFound, match="no current release"):
        history.show_release(ws, PID, "current")
