"""Release manifests, semantic version bumps, materialized catalogs and history."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import governance_support as gs
import pystac
import pytest
from click.testing import CliRunner
from identity_support import token_env
from policy_support import change_policy
from pystac.validation.stac_validator import JsonSchemaSTACValidator

from geomesh import releases
from geomesh.config import ProductConfig, load_config
from geomesh.errors import ChecksumMismatch, ConcurrentUpdate, NotFound
from geomesh.models import Product
from geomesh.releases import Bump, Delta, Manifest, ManifestItem
from geomesh.services import history, promotion, rollback
from geomesh.services.publication import _move_pointer
from geomesh.storage import LocalStore
from geomesh.workspace import Workspace

PID = "sentinel2-msi-l2a-v2.1"


@pytest.fixture
def ws(workspace: Workspace) -> Workspace:
    gs.add_users(workspace)
    return workspace


@pytest.fixture
def tile(make_raster: Callable[..., Path]) -> Callable[..., Path]:
    return gs.tile_factory(make_raster)


def release(ws: Workspace, config: ProductConfig, paths: list[Path]) -> str:
    """Ingest, approve and promote; return the new version."""
    ids = gs.ingest(ws, config, paths)
    gs.approve(ws, config, ids, n=config.governance.approvals_required)
    result = promotion.promote(ws, config, actor="alice")
    assert result.release is not None
    return result.release.version


# ------------------------------------------------------------------ pure functions


def _mi(i: str, source: str | None = None) -> ManifestItem:
    return ManifestItem(
        id=i,
        digest=i * 4,
        stac_key=f"items/p/{i}.json",
        object_key=f"o/{i}",
        source_key=source or i,
    )


def _manifest(items: list[ManifestItem], **kw: Any) -> Manifest:
    base: dict[str, Any] = {
        "product_id": "p",
        "version": "1.0.0",
        "parent_id": None,
        "actor": "alice",
        "created_at": "2024-01-01T00:00:00.000000Z",
        "kind": "promote",
        "spatial_contract": {"crs": "EPSG:4326", "boundary_wkt": "POLYGON((0 0,1 0,1 1,0 0))"},
        "product_metadata": {"title": "t"},
    }
    base.update(kw)
    return Manifest.build(items=items, **base)


def test_compute_delta_pairs_versions_of_the_same_source() -> None:
    old = [_mi("a"), _mi("b"), _mi("c1", "c")]
    new = [_mi("a"), _mi("c2", "c"), _mi("d")]
    delta = releases.compute_delta(old, new)
    assert delta.added == ("d",)
    assert delta.removed == ("b",)
    assert [(c.source_key, c.from_id, c.to_id) for c in delta.changed] == [("c", "c1", "c2")]
    assert Delta.from_dict(delta.to_dict()) == delta


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"added": ("x",)}, Bump.minor),
        ({"removed": ("x",)}, Bump.major),
        ({"changed": (releases.Change("s", "a", "b"),)}, Bump.patch),
        ({}, None),
    ],
)
def test_bump_for_items(change: dict[str, Any], expected: Bump | None) -> None:
    parent = _manifest([_mi("a")])
    got = releases.bump_for(
        parent,
        spatial_contract=parent.spatial_contract,
        product_metadata=parent.product_metadata,
        delta=Delta(**change),
    )
    assert got == expected


def test_bump_for_contract_and_metadata() -> None:
    parent = _manifest([_mi("a")])
    patch = Delta(changed=(releases.Change("s", "a", "b"),))
    moved = {"crs": "EPSG:32610", "boundary_wkt": parent.spatial_contract["boundary_wkt"]}
    assert (
        releases.bump_for(
            parent, spatial_contract=moved, product_metadata=parent.product_metadata, delta=patch
        )
        == Bump.major
    )
    assert (
        releases.bump_for(
            parent,
            spatial_contract=parent.spatial_contract,
            product_metadata={"title": "new title"},
            delta=patch,
        )
        == Bump.minor
    )


def test_next_version_never_repeats_a_version() -> None:
    assert releases.next_version(None, Bump.patch) == "1.0.0"
    assert releases.next_version("1.2.3", Bump.major) == "2.0.0"
    assert releases.next_version("1.2.3", Bump.minor) == "1.3.0"
    assert releases.next_version("1.2.3", Bump.patch) == "1.2.4"
    assert releases.highest_version(["1.9.0", "1.10.0", "1.2.0"]) == "1.10.0"


def test_manifest_id_is_sha256_of_canonical_json() -> None:
    m = _manifest([_mi("b"), _mi("a")])
    assert m.id == hashlib.sha256(m.canonical_json()).hexdigest()
    # order of items does not change the content address
    assert _manifest([_mi("a"), _mi("b")]).id == m.id
    assert Manifest.from_dict(json.loads(m.canonical_json())).id == m.id
    # the root commits to every item through its parts' content addresses
    assert _manifest([_mi("a"), _mi("c")]).id != m.id
    doc = json.loads(m.canonical_json())
    assert doc["manifest_version"] == 2 and doc["item_count"] == 2
    for b, ref in doc["parts"].items():
        assert (
            ref["id"] == m.inline[b].id == hashlib.sha256(m.inline[b].canonical_json()).hexdigest()
        )


def test_diff_json_lists_changed_paths() -> None:
    a = {"id": "x", "properties": {"datetime": "1", "k": 1}, "links": [1]}
    b = {"id": "y", "properties": {"datetime": "2", "n": 2}, "links": [2]}
    assert releases.diff_json(a, b) == {
        "properties.datetime": {"from": "1", "to": "2"},
        "properties.k": {"from": 1, "to": None},
        "properties.n": {"from": None, "to": 2},
    }


# ------------------------------------------------------------------ promote → release


def test_first_release_is_1_0_0_and_stores_a_content_addressed_manifest(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    assert release(ws, config, [tile("a", 1), tile("b", 2)]) == "1.0.0"
    [info] = history.list_releases(ws, PID)
    assert info.current and info.parent_id is None and info.item_count == 2
    data = ws.store.get_bytes("production", info.manifest_key)
    assert hashlib.sha256(data).hexdigest() == info.id
    manifest = json.loads(data)
    assert manifest["version"] == "1.0.0"
    assert manifest["product_id"] == PID
    assert manifest["spatial_contract"] == config.spatial_contract()
    assert manifest["actor"] == "alice"
    assert manifest["item_count"] == 2
    items = []
    for ref in manifest["parts"].values():  # content-addressed parts, stored beside it
        part = ws.store.get_bytes("production", releases.part_key(PID, ref["id"]))
        assert hashlib.sha256(part).hexdigest() == ref["id"]
        items += json.loads(part)["items"]
    assert all({"id", "digest", "stac_key"} <= set(i) for i in items)
    # the promoted objects and item JSON were copied to production
    for i in items:
        assert ws.store.exists("production", i["object_key"])
        assert ws.store.exists("production", i["stac_key"])
    assert gs.production_ids(ws, PID) == {i["id"] for i in items}


def test_version_bumps_minor_patch_major(
    ws: Workspace,
    config: ProductConfig,
    tile: Callable[..., Path],
    write_config: Callable[..., Path],
) -> None:
    assert release(ws, config, [tile("a", 1)]) == "1.0.0"
    # a new tile: MINOR
    assert release(ws, config, [tile("b", 2)]) == "1.1.0"
    # the same source tile reprocessed (changed bytes): PATCH, the old version superseded
    old = gs.manifest_ids(ws, PID)
    plan_before = promotion.plan_promotion(ws, config)
    assert plan_before.items == ()
    assert release(ws, config, [tile("a", 3)]) == "1.1.1"
    new = gs.manifest_ids(ws, PID)
    [gone] = old - new
    assert gs.states(ws, PID)[gone] == "superseded"
    # the spatial contract changes: MAJOR
    moved = load_config(
        write_config(
            {
                "spatial_domain": {
                    "crs": "EPSG:4326",
                    "boundary_wkt": "POLYGON((-122.6 37.6, -122.2 37.6, -122.2 38.0, "
                    "-122.6 38.0, -122.6 37.6))",
                }
            },
            name="moved.yaml",
        )
    )
    change_policy(ws, moved)  # the registered spatial contract changes (audited)
    ids = gs.ingest(ws, moved, [tile("c", 4)])
    gs.approve(ws, moved, ids)
    plan = promotion.plan_promotion(ws, moved)
    assert plan.spatial_contract_changed and plan.bump == Bump.major
    assert plan.next_version == "2.0.0"
    assert promotion.promote(ws, moved, actor="bob").release.version == "2.0.0"  # type: ignore[union-attr]


def test_metadata_change_alone_is_minor(
    ws: Workspace,
    config: ProductConfig,
    tile: Callable[..., Path],
    write_config: Callable[..., Path],
) -> None:
    release(ws, config, [tile("a", 1)])
    retitled = load_config(
        write_config({"product_metadata": {"title": "SF mosaic"}}, name="t.yaml")
    )
    change_policy(ws, retitled)  # the registered metadata changes (audited)
    ids = gs.ingest(ws, retitled, [tile("a", 2)])  # a reprocessed tile would be PATCH
    gs.approve(ws, retitled, ids)
    assert promotion.plan_promotion(ws, retitled).next_version == "1.1.0"


def test_promote_twice_with_ids_is_a_no_op(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    ids = gs.ingest(ws, config, [tile("a", 1)])
    gs.approve(ws, config, ids)
    first = promotion.promote(ws, config, ids, actor="alice")
    again = promotion.promote(ws, config, ids, actor="alice")
    assert not first.already and again.already
    assert again.release is not None and again.release.id == first.release.id  # type: ignore[union-attr]
    assert len(history.list_releases(ws, PID)) == 1
    # without ids and nothing waiting: a no-op, no new release
    assert promotion.promote(ws, config, actor="alice").already


def test_manifest_tampering_is_detected(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    release(ws, config, [tile("a", 1)])
    [info] = history.list_releases(ws, PID)
    gs.tamper(ws, "production", info.manifest_key, lambda b: b.replace(b'"alice"', b'"mallory"'))
    with pytest.raises(ChecksumMismatch, match=info.id):
        history.show_release(ws, PID, info.id)


def test_stale_pointer_move_raises_concurrent_update() -> None:
    product = Product(id="p", config_json={}, config_digest="d", current_release_id="r1")
    product.version_counter = 3
    with pytest.raises(ConcurrentUpdate, match="changed while"):
        _move_pointer(product, expected_current="r1", expected_counter=2, new_id="r2")
    with pytest.raises(ConcurrentUpdate):
        _move_pointer(product, expected_current="r0", expected_counter=3, new_id="r2")
    _move_pointer(product, expected_current="r1", expected_counter=3, new_id="r2")
    assert (product.current_release_id, product.version_counter) == ("r2", 4)


# ------------------------------------------------------------------ the published catalog


def _offline_validator(schema_dir: Path) -> JsonSchemaSTACValidator:
    validator = JsonSchemaSTACValidator()
    validator.schema_cache.update(gs.load_schema_cache(schema_dir))
    return validator


def test_catalog_round_trips_through_pystac_and_validates_offline(
    ws: Workspace,
    config: ProductConfig,
    tile: Callable[..., Path],
    schema_dir: Path,
    tmp_path: Path,
) -> None:
    release(ws, config, [tile("a", 1), tile("b", 2)])
    release(ws, config, [tile("c", 3)])
    at = history.catalog_at(ws, PID, "1.1.0")
    # a local path only where the store is a local directory
    assert (at.path is not None) == isinstance(ws.store, LocalStore)
    published = gs.mirror(ws, "production", tmp_path / "published")
    root = pystac.Catalog.from_file(str(published / at.key))
    validator = _offline_validator(schema_dir)
    previous = pystac.validation.RegisteredValidator.get_validator()
    pystac.validation.RegisteredValidator.set_validator(validator)
    try:
        objects = [root, *root.get_children(), *root.get_items(recursive=True)]
        assert len(objects) == 5  # catalog, collection, 3 items
        for obj in objects:
            for ext in obj.stac_extensions:
                assert ext in validator.schema_cache, f"{ext} missing from the offline store"
            # core schema + one per extension, each validated (raises STACValidationError)
            assert len(obj.validate()) == 1 + len(obj.stac_extensions)
        assert root.validate_all() == 3  # pystac counts the items it validated
    finally:
        pystac.validation.RegisteredValidator.set_validator(previous)
    items = list(root.get_items(recursive=True))
    assert {i.id for i in items} == gs.manifest_ids(ws, PID, "1.1.0")
    for item in items:
        # asset hrefs are relative and resolve to the released object with its checksum
        href = item.assets["data"].href
        assert not href.startswith("/")
        target = Path(item.assets["data"].get_absolute_href() or "")
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        assert item.assets["data"].extra_fields["file:checksum"] == "1220" + digest
    [collection] = list(root.get_children())
    assert collection.extra_fields["version"] == "1.1.0"
    assert collection.extra_fields["deprecated"] is False
    assert root.extra_fields["version"] == "1.1.0"
    pred = root.get_single_link("predecessor-version")
    assert pred is not None
    older = pystac.Catalog.from_file(pred.get_absolute_href() or "")
    assert older.extra_fields["version"] == "1.0.0"
    assert older.get_single_link("predecessor-version") is None


@pytest.mark.filterwarnings("ignore::pystac_client.warnings.NoConformsTo")
@pytest.mark.filterwarnings("ignore::pystac_client.warnings.FallbackToPystac")
def test_catalog_opens_with_pystac_client(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path], tmp_path: Path
) -> None:
    from pystac_client import Client

    release(ws, config, [tile("a", 1), tile("b", 2)])
    at = history.catalog_at(ws, PID)
    published = gs.mirror(ws, "production", tmp_path / "published")
    client = Client.open(str(published / at.key))
    items = list(client.get_items(recursive=True))
    assert {i.id for i in items} == gs.manifest_ids(ws, PID)


def test_index_tracks_latest_successor_and_rollback(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    release(ws, config, [tile("a", 1)])
    release(ws, config, [tile("b", 2)])
    key = releases.index_key(PID)
    index = json.loads(ws.store.get_bytes("production", key))
    by_v = {r["version"]: r for r in index["geomesh:releases"]}
    assert by_v["1.0.0"]["successor-version"] == "1.1.0"
    assert by_v["1.1.0"]["predecessor-version"] == "1.0.0"
    assert index["links"] == [
        {
            "rel": "latest-version",
            "href": "./1.1.0/catalog.json",
            "type": "application/json",
            "title": "1.1.0",
        }
    ]
    rollback.rollback_release(ws, config, actor="alice")
    index = json.loads(ws.store.get_bytes("production", key))
    assert index["geomesh:current"]["version"] == "1.0.0"
    assert {r["version"]: r["deprecated"] for r in index["geomesh:releases"]} == {
        "1.0.0": False,
        "1.1.0": True,
    }
    # the index is itself a readable STAC catalog
    assert pystac.Catalog.from_dict(index).id == f"{PID}-releases"


def test_published_catalogs_are_immutable(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    release(ws, config, [tile("a", 1)])
    first = history.catalog_at(ws, PID, "1.0.0")
    index = releases.index_key(PID)
    before = gs.stored_files(ws, "production", f"catalogs/{PID}/")
    before.pop(index)  # the release index is the one rewritten file
    # catalog, collection (per release), a partition and an item (shared)
    assert first.key in before and len(before) >= 4
    release(ws, config, [tile("b", 2)])
    rollback.rollback_release(ws, config, actor="alice")
    release(ws, config, [tile("a", 3)])  # a new version of the same tile
    after = gs.stored_files(ws, "production", f"catalogs/{PID}/")
    assert {k: after[k] for k in before} == before  # nothing published was changed
    assert len(after) > len(before) + 1


# ------------------------------------------------------------------ history


def test_list_show_diff_and_catalog_at(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path], tmp_path: Path
) -> None:
    release(ws, config, [tile("a", 1), tile("b", 2)])
    v1 = gs.manifest_ids(ws, PID)
    release(ws, config, [tile("a", 5), tile("c", 3)])
    versions = [r.version for r in history.list_releases(ws, PID)]
    assert versions == ["1.0.0", "1.1.0"]
    shown = history.show_release(ws, PID, "1.0.0")
    assert shown["version"] == "1.0.0" and not shown["current"]
    diff = history.diff_releases(ws, PID, "1.0.0", "1.1.0")
    assert len(diff.added) == 1 and diff.removed == ()
    [changed] = diff.changed
    assert changed.from_id in v1
    assert "assets.data.file:checksum" in changed.fields
    old = history.catalog_at(ws, PID, "1.0.0")
    assert old.version == "1.0.0"
    published = gs.mirror(ws, "production", tmp_path / "published")
    old_root = pystac.Catalog.from_file(str(published / old.key))
    assert {i.id for i in old_root.get_items(recursive=True)} == v1
    with pytest.raises(NotFound, match="9.9.9"):
        history.catalog_at(ws, PID, "9.9.9")


def test_cli_promote_releases_and_diff(
    ws: Workspace, config: ProductConfig, config_path: Path, tile: Callable[..., Path]
) -> None:
    from geomesh.cli import cli

    runner = CliRunner()
    ids = gs.ingest(ws, config, [tile("a", 1)])
    dry = runner.invoke(cli, ["promote", str(config_path), "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["blocked"][ids[0]][0].startswith("signoff:")
    denied = runner.invoke(
        cli,
        ["signoff", str(config_path), ids[0], "--approve", "--actor", "ana"],
        env=token_env(ws, "ana"),
    )
    assert denied.exit_code == 2 and "analyst" in denied.output
    ok = runner.invoke(
        cli,
        ["signoff", str(config_path), ids[0], "--approve", "--actor", "bob"],
        env=token_env(ws, "bob"),
    )
    assert ok.exit_code == 0, ok.output
    out = runner.invoke(
        cli, ["promote", str(config_path), "--actor", "alice"], env=token_env(ws, "alice")
    )
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines()[0] == "1.0.0"
    listed = runner.invoke(cli, ["releases", "list", str(config_path), "--json"])
    assert [r["version"] for r in json.loads(listed.output)] == ["1.0.0"]
    shown = runner.invoke(cli, ["releases", "show", str(config_path), "1.0.0", "--json"])
    assert json.loads(shown.output)["manifest"]["items"][0]["id"] == ids[0]
    diff = runner.invoke(cli, ["releases", "diff", str(config_path), "1.0.0", "current", "--json"])
    assert json.loads(diff.output)["added"] == []


def test_a_lost_catalog_is_rematerialized_identically_from_its_manifest(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    release(ws, config, [tile("a", 1)])
    release(ws, config, [tile("b", 2)])
    at = history.catalog_at(ws, PID, "1.1.0")
    prefix = at.key.rsplit("/", 1)[0] + "/"
    before = gs.stored_files(ws, "production", prefix)
    assert at.key in before
    for key in before:  # e.g. a crash after the release transaction, before publication
        ws.store.delete("production", key)
    assert gs.stored_files(ws, "production", prefix) == {}
    again = history.catalog_at(ws, PID, "1.1.0")
    assert again.key == at.key
    assert gs.stored_files(ws, "production", prefix) == before
