"""Ingestion core: rasters in many CRSs and dtypes → COG → content-addressed object → STAC item."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import governance_support as gs
import pystac
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import box, shape
from sqlmodel import select

from geomesh import parallel as parallel_mod
from geomesh.config import ProductConfig, load_config
from geomesh.errors import PermissionDenied
from geomesh.hashing import sha256_file, sha256_mapped
from geomesh.models import AuditEvent, FindingRecord, Item, ItemState
from geomesh.raster import inspect
from geomesh.services import history
from geomesh.services.admission import header_facts
from geomesh.services.ingest import IngestReport
from geomesh.services.pipeline import ingest_rasters
from geomesh.services.validation import run_rules
from geomesh.validation.rules import RasterFacts, crs_label, read_raster_facts
from geomesh.workspace import Workspace

SYSTEM = "system"


def _ingest(ws: Workspace, cfg: ProductConfig, *sources: Any, **kw: Any) -> IngestReport:
    return ingest_rasters(ws, cfg, list(sources), actor=kw.pop("actor", SYSTEM), **kw)


def _items(ws: Workspace) -> list[Item]:
    with ws.read() as s:
        return list(s.exec(select(Item)).all())


def _validate_offline(item_dict: dict[str, Any]) -> list[str]:
    return pystac.validation.validate_dict(item_dict)


# real third-party rasters covering CRSs, dtypes, nodata and layouts
REAL = [
    ("rasterio__RGB.byte.tif", "EPSG:32618", "uint8", 3),  # UTM, striped, nodata 0
    ("rasterio__shade.tif", "EPSG:3857", "uint8", 1),  # web mercator, tiled non-COG
    ("rio-tiler__cog.tif", "EPSG:32621", "uint16", 1),  # COG input, no nodata
    ("rio-tiler__cog_gradient.tif", "EPSG:4326", "float32", 1),  # geographic
    ("clj-gdal-test-data__landsat_8_sr_band_2_san_francisco.tif", None, "int16", 1),  # WKT-only CRS
    ("rio-tiler__nocog.tif", "EPSG:32621", "uint16", 1),  # striped deflate
]


@pytest.mark.parametrize(("name", "code", "dtype", "bands"), REAL, ids=[r[0] for r in REAL])
def test_ingest_real_rasters(
    workspace: Workspace,
    config: ProductConfig,
    shared_raster: Callable[[str], Path],
    pystac_offline: Any,
    name: str,
    code: str | None,
    dtype: str,
    bands: int,
) -> None:
    src = shared_raster(name)
    report = _ingest(workspace, config, src, acquired=datetime(2024, 6, 1, tzinfo=UTC))
    assert report.ok, report.to_json()
    (res,) = report.results
    assert res.status == "staged"
    item = res.item
    assert item is not None
    props = item["properties"]
    # projection v2: proj:code when an authority code exists, WKT2 + PROJJSON otherwise
    if code:
        assert props["proj:code"] == code
    else:
        assert "proj:code" not in props and props["proj:wkt2"].startswith("PROJCRS")
    with rasterio.open(src) as ds:
        assert props["proj:shape"] == [ds.height, ds.width]
        assert props["proj:transform"] == pytest.approx(list(ds.transform)[:6])
    asset = item["assets"]["data"]
    with workspace.store.open_local("staging", res.object_key or "") as obj:
        digest, size = sha256_file(obj)
        ok, errors, _ = cog_validate(str(obj), quiet=True)
        assert ok, errors
        with rasterio.open(obj) as cog:
            assert cog.block_shapes[0] == (256, 256) or min(cog.width, cog.height) < 256
            assert cog.dtypes[0] == dtype and cog.count == bands
            assert cog.crs is not None  # the CRS stays embedded in the output
    assert asset["file:checksum"] == "1220" + digest
    assert asset["file:size"] == size
    assert [b["data_type"] for b in asset["raster:bands"]] == [dtype] * bands
    assert _validate_offline(item)  # returns the schema URIs it validated against
    # the admission's findings (from the file work's digest, verdict and header) are those
    # of a full validation that hashes, cog-validates and opens the stored object again
    (row,) = _items(workspace)
    assert _recorded(workspace, row.id) == sorted(
        (f.rule_id, f.path, f.message) for f in run_rules(workspace, config, row)
    )


def _recorded(ws: Workspace, item_id: str) -> list[tuple[str, str | None, str]]:
    with ws.read() as s:
        rows = s.exec(select(FindingRecord).where(FindingRecord.item_id == item_id)).all()
    return sorted((r.rule_id, r.path, r.message) for r in rows)


@pytest.mark.parametrize(
    "name",
    [r[0] for r in REAL] + ["rio-stac__dataset_nocrs.tif", "rasterio__float32.tif"],
)
def test_the_header_the_inspection_read_is_the_one_the_rules_read(
    shared_raster: Callable[[str], Path], name: str
) -> None:
    """Issue 19: the admission hands the rules the header of the COG's one inspection
    instead of opening it again; it is what they would read themselves, CRS included
    (from WKT2 for a CRS with no authority code, none for a raster without one)."""
    path = shared_raster(name)
    given = header_facts(inspect(path), path)
    read = read_raster_facts(path)
    assert given is not None

    def shape(f: RasterFacts) -> tuple[Any, ...]:
        return (f.path, f.transform, f.height, f.width, f.georeferenced, f.block_shape)

    assert shape(given) == shape(read)
    if read.crs is None:
        assert given.crs is None
    else:
        assert given.crs is not None and given.crs.equals(read.crs)
        assert crs_label(given.crs) == crs_label(read.crs)


def test_s2_like_tile_item_is_complete(
    workspace: Workspace, write_config: Callable[..., Path], s2_tile: Path, pystac_offline: Any
) -> None:
    cfg = load_config(
        write_config(
            {
                "product_metadata": {
                    "product_id": "sentinel2-msi-l2a-v2.1",
                    "platform": "sentinel-2b",
                    "instruments": ["msi"],
                    "processing_level": "L2A",
                }
            }
        )
    )
    report = _ingest(workspace, cfg, s2_tile)
    (res,) = report.results
    item = res.item
    assert item is not None
    # deterministic id from product id + content hash, no ':' or '/'
    assert res.item_id == f"sentinel2-msi-l2a-v2.1-{res.digest[:20]}"  # type: ignore[index]
    assert ":" not in item["id"] and "/" not in item["id"]
    # the acquisition datetime comes from the raster's TIFF tag, not a hard-coded value
    assert item["properties"]["datetime"] == "2024-06-12T19:03:21Z"
    assert item["properties"]["platform"] == "sentinel-2b"
    assert item["properties"]["instruments"] == ["msi"]
    assert item["properties"]["processing:level"] == "L2A"
    assert item["properties"]["version"] == "1"
    # geometry = the real tile footprint (densified), not the domain boundary
    geom = shape(item["geometry"])
    assert len(item["geometry"]["coordinates"][0]) > 5
    assert geom.within(box(-122.5, 37.7, -122.3, 37.9))
    assert geom.area < box(-122.5, 37.7, -122.3, 37.9).area / 4
    assert item["bbox"] == pytest.approx(list(geom.bounds), abs=1e-6)
    bands = item["assets"]["data"]["raster:bands"]
    assert len(bands) == 4 and all(b["nodata"] == 0 for b in bands)
    assert all(b["statistics"]["minimum"] >= 1 for b in bands)
    validated = _validate_offline(item)
    assert any("projection/v2.0.0" in u for u in validated)
    assert any("file/v2.1.0" in u for u in validated)
    # the item JSON is stored immutably beside the object
    stored = json.loads(workspace.store.get_bytes("staging", res.stac_key or ""))
    assert stored == item


def test_datetime_explicit_or_missing(
    workspace: Workspace, config: ProductConfig, make_raster: Callable[..., Path]
) -> None:
    plain = make_raster("no-date.tif", width=128, height=128, acquired=None)
    rep = _ingest(workspace, config, plain, acquired=datetime(2023, 5, 4, 3, 2, 1, tzinfo=UTC))
    assert rep.results[0].item["properties"]["datetime"] == "2023-05-04T03:02:01Z"  # type: ignore[index]
    other = make_raster("no-date2.tif", width=128, height=128, seed=5, acquired=None)
    rep = _ingest(workspace, config, other)
    # no datetime anywhere: recorded as null (validation quarantines it), never invented
    assert rep.results[0].item["properties"]["datetime"] is None  # type: ignore[index]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@pytest.mark.parametrize("nodata", [None, 0])
def test_generated_dtypes_and_nodata(
    workspace: Workspace,
    config: ProductConfig,
    make_raster: Callable[..., Path],
    dtype: str,
    nodata: int | None,
) -> None:
    src = make_raster(width=300, height=200, count=2, dtype=dtype, nodata=nodata)
    (res,) = _ingest(workspace, config, src, acquired=datetime(2024, 1, 1, tzinfo=UTC)).results
    assert res.status == "staged", res.error
    bands = res.item["assets"]["data"]["raster:bands"]  # type: ignore[index]
    assert [b["data_type"] for b in bands] == [dtype, dtype]
    assert all(("nodata" in b) == (nodata is not None) for b in bands)


def test_clip_warps_to_domain_crs_and_envelope(
    workspace: Workspace, write_config: Callable[..., Path], make_raster: Callable[..., Path]
) -> None:
    cfg = load_config(
        write_config({"ingestion": {"clip": True, "tile_size": 256, "resampling": "bilinear"}})
    )
    # a UTM tile hanging over the domain's western edge (-122.5)
    src = make_raster("edge.tif", width=600, height=400, origin=(540000.0, 4185000.0), res=20.0)
    (res,) = _ingest(workspace, cfg, src, acquired=datetime(2024, 1, 1, tzinfo=UTC)).results
    assert res.status == "staged", res.error
    item = res.item
    assert item["properties"]["proj:code"] == "EPSG:4326"  # type: ignore[index]
    with (
        workspace.store.open_local("staging", res.object_key or "") as obj,
        rasterio.open(obj) as ds,
    ):
        assert ds.crs.to_epsg() == 4326
        assert ds.bounds.left >= -122.5 - 1e-9
        assert ds.block_shapes[0] == (256, 256)
    assert shape(item["geometry"]).bounds[0] >= -122.5 - 1e-6  # type: ignore[index]


def test_clip_off_keeps_native_crs(
    workspace: Workspace, config: ProductConfig, make_raster: Callable[..., Path]
) -> None:
    src = make_raster("edge.tif", width=600, height=400, origin=(540000.0, 4185000.0), res=20.0)
    (res,) = _ingest(workspace, config, src, acquired=datetime(2024, 1, 1, tzinfo=UTC)).results
    assert res.item["properties"]["proj:code"] == "EPSG:32610"  # type: ignore[index]
    assert shape(res.item["geometry"]).bounds[0] < -122.5  # type: ignore[index]


def test_clip_outside_domain_is_a_clear_error(
    workspace: Workspace, write_config: Callable[..., Path], make_raster: Callable[..., Path]
) -> None:
    cfg = load_config(write_config({"ingestion": {"clip": True}}))
    far = make_raster("far.tif", origin=(300000.0, 4000000.0), width=64, height=64)
    rep = _ingest(workspace, cfg, far)
    assert not rep.ok
    assert "does not intersect the domain envelope" in (rep.results[0].error or "")
    assert _items(workspace) == []


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_dry_run_changes_nothing(
    workspace: Workspace, config: ProductConfig, s2_tile: Path, make_raster: Callable[..., Path]
) -> None:
    _ingest(
        workspace, config, make_raster("first.tif", width=128, height=128)
    )  # a non-empty catalog
    workspace.engine.dispose()  # close pooled connections so WAL files are checkpointed away
    before = _tree(workspace.root)
    report = _ingest(workspace, config, s2_tile, dry_run=True)
    workspace.engine.dispose()
    (res,) = report.results
    assert res.status == "would-stage"
    assert res.object_key and res.stac_key and res.item is not None
    assert _tree(workspace.root) == before


def test_idempotent_same_bytes(
    workspace: Workspace, config: ProductConfig, s2_tile: Path, tmp_path: Path
) -> None:
    first = _ingest(workspace, config, s2_tile).results[0]
    again = _ingest(workspace, config, s2_tile).results[0]
    # the same bytes from another path: the COG work runs again, the content is the same
    copy = tmp_path / "copy.tif"
    copy.write_bytes(s2_tile.read_bytes())
    third = _ingest(workspace, config, copy).results[0]
    assert first.status == "staged" and again.status == "exists" and third.status == "exists"
    assert first.item_id == again.item_id == third.item_id
    assert len(_items(workspace)) == 1
    assert len(list(workspace.store.list("staging", "sha256/"))) == 1
    with workspace.read() as s:
        ingests = s.exec(select(AuditEvent).where(AuditEvent.action == "ingest")).all()
    assert len(ingests) == 1


def test_changed_bytes_make_a_new_version(
    workspace: Workspace, config: ProductConfig, make_raster: Callable[..., Path]
) -> None:
    v1 = _ingest(workspace, config, make_raster("tile.tif", seed=1)).results[0]
    stored_v1 = workspace.store.get_bytes("staging", v1.stac_key or "")
    v2 = _ingest(workspace, config, make_raster("tile.tif", seed=2)).results[0]  # same path
    assert v1.item_id != v2.item_id
    with workspace.read() as s:
        old, new = s.get(Item, v1.item_id), s.get(Item, v2.item_id)
    assert old is not None and new is not None
    assert new.supersedes == old.id
    assert old.state == ItemState.superseded
    assert new.stac["properties"]["version"] == "2"
    assert any(link["rel"] == "predecessor-version" for link in new.stac["links"])
    # the earlier item is never overwritten
    assert workspace.store.get_bytes("staging", v1.stac_key or "") == stored_v1


def test_crash_between_object_and_row_leaves_nothing_visible(
    workspace: Workspace, config: ProductConfig, s2_tile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Boom(Exception):
        pass

    real_put_bytes = workspace.store.put_bytes

    def crash_after_item_json(*args: Any, **kwargs: Any) -> None:
        real_put_bytes(*args, **kwargs)
        raise Boom("injected crash after the object and item JSON were written")

    monkeypatch.setattr(workspace.store, "put_bytes", crash_after_item_json)
    with pytest.raises(Boom):
        _ingest(workspace, config, s2_tile)
    assert _items(workspace) == []  # nothing half-staged is visible
    monkeypatch.undo()
    rerun = _ingest(workspace, config, s2_tile).results[0]
    assert rerun.status == "staged"
    # converges to the state of an uninterrupted run in a fresh catalog
    assert [i.id for i in _items(workspace)] == [rerun.item_id]
    assert len(list(workspace.store.list("staging", "sha256/"))) == 1
    assert not list(workspace.root.rglob(".tmp-*"))


def test_failures_do_not_stop_the_batch(
    workspace: Workspace, config: ProductConfig, s2_tile: Path, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.tif"
    junk.write_text("this is not a raster")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    rep = _ingest(workspace, config, junk, s2_tile, empty, tmp_path / "missing.tif")
    assert [r.status for r in rep.results] == ["failed", "staged", "failed", "failed"]
    assert "junk.tif: not a readable raster" in (rep.results[0].error or "")
    assert "empty.tif: file is empty" in (rep.results[2].error or "")
    assert "missing.tif: file not found" in (rep.results[3].error or "")
    assert not rep.ok


def test_unknown_actor_cannot_ingest(
    workspace: Workspace, config: ProductConfig, s2_tile: Path
) -> None:
    with pytest.raises(PermissionDenied, match="unknown user 'mallory'"):
        _ingest(workspace, config, s2_tile, actor="mallory")
    assert _items(workspace) == []


def test_run_log_lines(workspace: Workspace, config: ProductConfig, s2_tile: Path) -> None:
    rep = _ingest(workspace, config, s2_tile)
    lines = [
        json.loads(x)
        for f in (workspace.root / "logs").glob("*.jsonl")
        for x in f.read_text().splitlines()
    ]
    steps = {ln["step"] for ln in lines if ln["run_id"] == rep.run_id}
    assert {"prepare", "admit"} <= steps
    assert all(ln["product_id"] == config.product_id for ln in lines)
    admit = next(ln for ln in lines if ln["step"] == "admit")
    assert admit["item_id"] == rep.results[0].item_id and admit["outcome"] == rep.results[0].route
    assert admit["duration_s"] >= 0


def test_source_digest_shortcut_skips_cog_work(
    workspace: Workspace, config: ProductConfig, s2_tile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ingest(workspace, config, s2_tile)

    def must_not_run(*_: Any, **__: Any) -> None:
        raise AssertionError("prepare_tile ran for an already-ingested local source")

    monkeypatch.setattr(parallel_mod, "prepare_tile", must_not_run)
    assert _ingest(workspace, config, s2_tile).results[0].status == "exists"


def test_one_hash_and_one_inspect_per_tile(
    workspace: Workspace, config: ProductConfig, s2_tile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: the COG is hashed once (the admission's validation reuses that digest), the
    source once (while the COG is written, not before), the COG opened once for its
    inspection and statistics (the validation reuses its header too); a re-run of the same
    location hashes the source up front and skips the file work."""
    import geomesh.raster as raster_mod
    import geomesh.services.pipeline as pipeline_mod
    import geomesh.tiles as tiles_mod
    import geomesh.validation.rules as rules_mod

    calls: dict[str, int] = {}

    def count(module: Any, name: str, key: str) -> None:
        original = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[key] = calls.get(key, 0) + 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    count(tiles_mod, "sha256_mapped", "cog hash (prepare)")
    count(rules_mod, "sha256_file", "cog hash (validation)")
    count(rules_mod, "cog_validate", "cog_validate (validation)")
    count(rules_mod, "read_raster_facts", "header read (validation)")
    count(tiles_mod, "source_digest_for", "source hash (prepare)")
    count(pipeline_mod, "source_digest_for", "source hash (before prepare)")
    count(tiles_mod, "inspect_with_statistics", "inspect + statistics (COG)")
    count(raster_mod, "_inspect_open", "inspect of an open dataset")
    count(raster_mod, "open_raster", "open")
    count(workspace.store, "open_local", "store read")
    (res,) = _ingest(workspace, config, s2_tile).results
    assert res.status == "staged" and res.findings is not None
    assert calls == {
        "cog hash (prepare)": 1,
        "source hash (prepare)": 1,
        # the COG; the source is inspected from write_cog's open dataset
        "inspect + statistics (COG)": 1,
        "inspect of an open dataset": 2,
        "open": 2,  # the source (write_cog), the COG (inspect and statistics from one open)
        # no "store read": the rules take the file the object was stored from, and read
        # nothing back from the store (on S3, that was a download of every new object)
    }
    (row,) = _items(workspace)
    assert row.source_digest == tiles_mod.source_digest_for(str(s2_tile), config)
    # the findings are those of a full validation that hashes and cog-validates again
    full = run_rules(workspace, config, row)
    assert calls["cog hash (validation)"] == 1 and calls["cog_validate (validation)"] == 1
    assert calls["header read (validation)"] == 1 and calls["store read"] == 1
    assert _recorded(workspace, row.id) == sorted((f.rule_id, f.path, f.message) for f in full)

    calls.clear()
    assert _ingest(workspace, config, s2_tile).results[0].status == "exists"
    assert calls == {"source hash (before prepare)": 1}


def test_content_another_run_admits_meanwhile_is_found_not_staged_twice(
    workspace: Workspace,
    settings: Any,
    config: ProductConfig,
    s2_tile: Path,
    make_raster: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The admission reads once, before the file work is stored, whether the product holds
    this content; its transaction inserts without reading again. When another run admits
    the same content in between, that INSERT conflicts, and the retry finds the row: one
    item, one ingest event, an intact chain."""
    import geomesh.services.admission as admission_mod

    copy = make_raster("copy-of-s2.tif", tags={"TIFFTAG_DATETIME": "2024:06:12 19:03:21"})
    assert copy.read_bytes() == s2_tile.read_bytes()  # another location, the same bytes
    other = Workspace.open(settings, migrate=False)
    run_rules_now = admission_mod.run_rules
    raced: list[str] = []

    def race_then_validate(*args: Any, **kwargs: Any) -> Any:
        if not raced:  # the first admission: another run admits the same content first
            raced.append("racing")
            raced.append(_ingest(other, config, copy).results[0].status)
        return run_rules_now(*args, **kwargs)

    monkeypatch.setattr(admission_mod, "run_rules", race_then_validate)
    try:
        (res,) = _ingest(workspace, config, s2_tile).results
    finally:
        other.close()
    assert raced == ["racing", "staged"]
    assert res.status == "exists", res.to_json()
    (row,) = _items(workspace)
    assert row.id == res.item_id and row.source.endswith("copy-of-s2.tif")
    with workspace.read() as s:
        events = s.exec(select(AuditEvent).where(AuditEvent.action == "ingest")).all()
    assert [e.target for e in events] == [row.id]
    assert history.verify_audit(workspace) == []


def test_the_mapped_hash_is_the_streamed_hash(tmp_path: Path, s2_tile: Path) -> None:
    """The COG's one hash reads it through a memory map; same digest and size as the
    streamed hash of any other file, an empty file included (which cannot be mapped)."""
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    for path in (s2_tile, empty):
        with open(path, "rb") as fh:
            assert sha256_mapped(fh) == sha256_file(path)
    assert sha256_file(empty)[1] == 0 and sha256_file(s2_tile)[1] == s2_tile.stat().st_size


def test_the_cog_is_flushed_early_only_for_a_store_that_adopts_it(
    workspace: Workspace, config: ProductConfig, s2_tile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local store links the prepared COG into place, so its fsync is made on the hash
    thread, off the staging path; a store that uploads a copy (S3) needs no fsync of it."""
    import geomesh.tiles as tiles_mod

    flushed: list[bool] = []
    hash_cog = tiles_mod._hash_cog

    def spy(path: Path, flush: bool, hashing: threading.Event) -> tuple[str, int]:
        flushed.append(flush)
        return hash_cog(path, flush, hashing)

    monkeypatch.setattr(tiles_mod, "_hash_cog", spy)
    (res,) = _ingest(workspace, config, s2_tile).results
    assert res.status == "staged"
    assert flushed == [workspace.store.adopts_files]


def test_the_cog_hash_is_running_when_the_caller_goes_on_and_a_failure_never_hangs_it(
    tmp_path: Path, s2_tile: Path
) -> None:
    """The caller of ``_start_hash`` resumes only once the hash thread runs (its own work
    holds the GIL and would keep the thread from starting); a file that cannot be opened
    releases the caller too, and the hash's future carries the error."""
    import geomesh.tiles as tiles_mod

    with ThreadPoolExecutor(max_workers=1) as pool:
        started = tiles_mod._start_hash(pool, s2_tile, False)
        assert started.running() or started.done()
        assert started.result() == sha256_file(s2_tile)
        missing = tiles_mod._start_hash(pool, tmp_path / "missing.tif", False)
        with pytest.raises(FileNotFoundError):
            missing.result()


def test_a_known_digest_is_used_only_for_the_items_own_content(
    workspace: Workspace, config: ProductConfig, s2_tile: Path
) -> None:
    """Validation trusts the caller's digest only when it is the item's content digest; the
    promotion's checksum gate always reads the stored bytes."""
    from geomesh.services.gates import checksum_gate
    from geomesh.services.validation import run_rules
    from geomesh.validation.rules import KnownRaster

    (res,) = _ingest(workspace, config, s2_tile).results
    (row,) = _items(workspace)
    # the stored object changes after staging (through the store: any backend)
    gs.tamper(workspace, "staging", row.object_key, lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]))
    wrong = KnownRaster(sha256="0" * 64)
    ids = {f.rule_id for f in run_rules(workspace, config, row, known=wrong)}
    assert "GM-CHECKSUM-003" in ids  # a digest that is not the item's: the bytes are hashed
    assert not checksum_gate(workspace, row).ok
