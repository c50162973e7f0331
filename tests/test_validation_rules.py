"""Each validation rule fires on a bad item and stays quiet on a good one.

Items are built by the real ingestion components (raster.write_cog, raster.inspect,
stac.build_item) from rasters made here or taken from ../shared/data, then edited to break
exactly one thing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import shapely
from shapely.geometry import shape

from geomesh.config import ProductConfig, loads_config
from geomesh.errors import ConfigError
from geomesh.hashing import sha256_file
from geomesh.models import Severity
from geomesh.raster import inspect, write_cog
from geomesh.stac import build_item, item_to_dict
from geomesh.validation.engine import validate_document
from geomesh.validation.findings import Finding
from geomesh.validation.registry import RULES, Policy

from conftest import EXAMPLE_CONFIG

ACQUIRED = datetime(2024, 6, 12, 19, 3, 21, tzinfo=UTC)
FULL_METADATA = {
    "platform": "sentinel-2b",
    "instruments": ["msi"],
    "processing_level": "L2A",
}


def _config(**sections: dict[str, Any]) -> ProductConfig:
    import yaml

    data = yaml.safe_load(EXAMPLE_CONFIG)
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return loads_config(yaml.safe_dump(data))


@pytest.fixture
def cfg() -> ProductConfig:
    return _config(product_metadata=FULL_METADATA)


Tile = tuple[Path, dict[str, Any]]


@pytest.fixture
def make_tile(tmp_path: Path, cfg: ProductConfig) -> Callable[..., Tile]:
    """COG + STAC item dict of a source raster, as geomesh's ingest would build them."""

    def make(source: Path, config: ProductConfig | None = None) -> Tile:
        c = config or cfg
        dst = tmp_path / f"{source.stem}.cog.tif"
        write_cog(source, dst, c)
        info = inspect(dst, domain_crs=c.spatial_domain.crs)
        digest, size = sha256_file(dst)
        item = build_item(
            config=c, info=info, hexdigest=digest, size=size, asset_href=str(dst), acquired=ACQUIRED
        )
        return dst, item_to_dict(item)

    return make


@pytest.fixture
def tile(make_raster: Callable[..., Path], make_tile: Callable[..., Tile]) -> Tile:
    """A clean 1-band tile inside the example domain."""
    return make_tile(make_raster("inside.tif", width=256, height=256, count=1))


def run(
    doc: dict[str, Any],
    *,
    cfg: ProductConfig | None = None,
    raster: Path | None = None,
    **kw: Any,
) -> list[Finding]:
    return validate_document(doc, config=cfg, raster_path=raster, **kw)


def rule_ids(findings: list[Finding]) -> set[str]:
    return {f.rule_id for f in findings}


def only(findings: list[Finding], rule_id: str) -> list[Finding]:
    return [f for f in findings if f.rule_id == rule_id]


# ------------------------------------------------------------------ the clean baseline


def test_clean_tile_has_no_findings(tile: Tile, cfg: ProductConfig, schema_dir: Path) -> None:
    cog, item = tile
    assert run(item, cfg=cfg, raster=cog, schema_dir=schema_dir) == []


def test_every_rule_has_metadata() -> None:
    for rule_id, r in RULES.items():
        assert rule_id == r.id and rule_id.startswith("GM-")
        assert r.description.strip() and r.remediation.strip()
        assert r.severity in (Severity.P1, Severity.P2, Severity.P3)


# ------------------------------------------------------------------ contract


@pytest.mark.parametrize("field", ["proj:geometry", "proj:bbox", "proj:shape", "proj:transform"])
def test_contract_missing_proj_field_is_p2_and_derivable(
    tile: Tile, cfg: ProductConfig, field: str
) -> None:
    cog, item = tile
    del item["properties"][field]
    found = only(run(item, cfg=cfg, raster=cog), "GM-CONTRACT-001")
    assert [f.path for f in found] == [f"properties.{field}"]
    assert found[0].severity is Severity.P2
    assert found[0].context["derivable"] is True
    assert "geomesh remediate" in found[0].message


def test_contract_missing_field_without_raster_is_not_derivable(
    tile: Tile, cfg: ProductConfig
) -> None:
    _, item = tile
    del item["properties"]["proj:geometry"]
    (f,) = only(run(item, cfg=cfg), "GM-CONTRACT-001")
    assert f.context["derivable"] is False


def test_contract_fields_on_the_data_asset_count(tile: Tile, cfg: ProductConfig) -> None:
    cog, item = tile
    item["assets"]["data"]["proj:shape"] = item["properties"].pop("proj:shape")
    assert only(run(item, cfg=cfg, raster=cog), "GM-CONTRACT-001") == []


@pytest.mark.parametrize("field", ["file:checksum", "file:size"])
def test_contract_missing_file_fields(tile: Tile, cfg: ProductConfig, field: str) -> None:
    cog, item = tile
    del item["assets"]["data"][field]
    found = only(run(item, cfg=cfg, raster=cog), "GM-CONTRACT-001")
    assert [f.path for f in found] == [f"assets.data.{field}"]


def test_contract_datetime_or_range(tile: Tile, cfg: ProductConfig) -> None:
    cog, item = tile
    item["properties"]["datetime"] = None
    assert "properties.datetime" in {
        f.path for f in only(run(item, cfg=cfg, raster=cog), "GM-CONTRACT-001")
    }
    item["properties"]["start_datetime"] = "2024-06-01T00:00:00Z"
    item["properties"]["end_datetime"] = "2024-06-30T00:00:00Z"
    assert only(run(item, cfg=cfg, raster=cog), "GM-CONTRACT-001") == []


def test_contract_missing_data_asset(tile: Tile, cfg: ProductConfig) -> None:
    _, item = tile
    item["assets"] = {"thumbnail": {"href": "x.png", "roles": ["thumbnail"]}}
    assert "assets.data" in {f.path for f in only(run(item, cfg=cfg), "GM-CONTRACT-001")}


def test_contract_optional_fields_are_p3(
    make_raster: Callable[..., Path], make_tile: Callable[..., Tile]
) -> None:
    bare = _config()  # the example config sets no platform/instruments/processing level
    cog, item = make_tile(make_raster(width=256, height=256, count=1), bare)
    found = only(run(item, cfg=bare, raster=cog), "GM-CONTRACT-002")
    assert {f.path for f in found} == {
        "properties.platform",
        "properties.instruments",
        "properties.processing:level",
    }
    assert {f.severity for f in found} == {Severity.P3}


def test_contract_rules_need_a_config(tile: Tile) -> None:
    cog, item = tile
    del item["properties"]["proj:geometry"]
    assert only(run(item, raster=cog), "GM-CONTRACT-001") == []


# ------------------------------------------------------------------ CRS


@pytest.mark.parametrize("name", ["rasterio__float32.tif", "rio-stac__dataset.tif"])
def test_crs_missing_in_real_raster_is_p2(
    shared_raster: Callable[[str], Path],
    make_tile: Callable[..., Tile],
    cfg: ProductConfig,
    name: str,
) -> None:
    cog, item = make_tile(shared_raster(name))
    found = only(run(item, cfg=cfg, raster=cog), "GM-CRS-001")
    assert len(found) == 1 and found[0].severity is Severity.P2
    assert "no CRS" in found[0].message
    assert found[0].context["derivable"] is False


def test_crs_missing_from_item_but_in_raster_is_derivable(tile: Tile, cfg: ProductConfig) -> None:
    cog, item = tile
    del item["properties"]["proj:code"]
    (f,) = only(run(item, cfg=cfg, raster=cog), "GM-CRS-001")
    assert f.context == {"derivable": True, "field": "proj:code", "value": "EPSG:32610"}


def test_crs_mismatch_with_cog_header_is_p2(tile: Tile, cfg: ProductConfig) -> None:
    cog, item = tile
    item["properties"]["proj:code"] = "EPSG:32611"
    (f,) = only(run(item, cfg=cfg, raster=cog), "GM-CRS-002")
    assert f.severity is Severity.P2 and f.path == "properties.proj:code"
    assert "EPSG:32611" in f.message and "EPSG:32610" in f.message
    assert "mismatched projection" in f.message


def test_crs_mismatch_on_the_asset(tile: Tile, cfg: ProductConfig) -> None:
    cog, item = tile
    item["assets"]["data"]["proj:code"] = item["properties"].pop("proj:code")
    assert only(run(item, cfg=cfg, raster=cog), "GM-CRS-002") == []
    item["assets"]["data"]["proj:code"] = "EPSG:4326"
    (f,) = only(run(item, cfg=cfg, raster=cog), "GM-CRS-002")
    assert f.path == "assets.data.proj:code"


def test_crs_wkt2_equivalent_to_header_passes(tile: Tile, cfg: ProductConfig) -> None:
    from pyproj import CRS

    cog, item = tile
    del item["properties"]["proj:code"]
    item["properties"]["proj:wkt2"] = CRS.from_epsg(32610).to_wkt()
    assert rule_ids(run(item, cfg=cfg, raster=cog)) & {"GM-CRS-001", "GM-CRS-002"} == set()


def test_crs_legacy_epsg_only_is_p3_with_the_fix(tile: Tile, cfg: ProductConfig) -> None:
    cog, item = tile
    del item["properties"]["proj:code"]
    item["properties"]["proj:epsg"] = 32610
    found = run(item, cfg=cfg, raster=cog)
    (f,) = only(found, "GM-CRS-003")
    assert f.severity is Severity.P3
    assert '"proj:code": "EPSG:32610"' in f.remediation
    assert rule_ids(found) & {"GM-CRS-001", "GM-CRS-002"} == set()


def test_crs_unknown_code_is_reported(tile: Tile, cfg: ProductConfig) -> None:
    cog, item = tile
    item["properties"]["proj:code"] = "EPSG:999999"
    (f,) = only(run(item, cfg=cfg, raster=cog), "GM-CRS-001")
    assert "not a CRS" in f.message


# ------------------------------------------------------------------ boundary


def test_boundary_outside_is_p1(
    make_raster: Callable[..., Path], make_tile: Callable[..., Tile], cfg: ProductConfig
) -> None:
    cog, item = make_tile(make_raster(width=128, height=128, count=1, origin=(245000.0, 4185000.0)))
    (f,) = only(run(item, cfg=cfg, raster=cog), "GM-BOUNDARY-001")
    assert f.severity is Severity.P1 and f.context["overlap_fraction"] == 0.0


def _partly_outside(make_raster: Callable[..., Path], make_tile: Callable[..., Tile]) -> Tile:
    # x 540000..545120 m in UTM 10N; the domain's west edge (-122.5°) is near x 544000 m
    return make_tile(
        make_raster(width=256, height=256, count=1, res=20.0, origin=(540000.0, 4185000.0))
    )


def test_boundary_partly_outside_is_p3_with_fraction(
    make_raster: Callable[..., Path], make_tile: Callable[..., Tile], cfg: ProductConfig
) -> None:
    cog, item = _partly_outside(make_raster, make_tile)
    (f,) = only(run(item, cfg=cfg, raster=cog), "GM-BOUNDARY-002")
    assert f.severity is Severity.P3
    fraction = f.context["overlap_fraction"]
    # cross-check in lon/lat with the item's GeoJSON geometry (a different path)
    geom = shape(item["geometry"])
    boundary = shapely.from_wkt(cfg.spatial_domain.boundary_wkt)
    expected = geom.intersection(boundary).area / geom.area
    assert 0.05 < fraction < 0.95
    assert fraction == pytest.approx(expected, abs=0.02)
    assert f"{fraction:.1%}" in f.message


def test_boundary_partly_outside_severity_is_configurable(
    make_raster: Callable[..., Path], make_tile: Callable[..., Tile]
) -> None:
    cfg = _config(
        product_metadata=FULL_METADATA,
        validation={"severity_overrides": {"GM-BOUNDARY-002": "P1"}},
    )
    cog, item = _partly_outside(make_raster, make_tile)
    (f,) = only(run(item, cfg=cfg, raster=cog), "GM-BOUNDARY-002")
    assert f.severity is Severity.P1


def test_boundary_in_a_projected_domain_crs(
    make_raster: Callable[..., Path], make_tile: Callable[..., Tile]
) -> None:
    utm = _config(
        product_metadata=FULL_METADATA,
        spatial_domain={
            "crs": "EPSG:32610",
            "boundary_wkt": "POLYGON((544000 4172000, 561000 4172000, 561000 4195000, "
            "544000 4195000, 544000 4172000))",
        },
    )
    inside_cog, inside = make_tile(make_raster("in.tif", width=128, height=128, count=1), utm)
    assert rule_ids(run(inside, cfg=utm, raster=inside_cog)) & set(RULES) == set()
    far_cog, far = make_tile(
        make_raster("far.tif", width=128, height=128, count=1, origin=(600000.0, 4185000.0)), utm
    )
    assert "GM-BOUNDARY-001" in rule_ids(run(far, cfg=utm, raster=far_cog))


def test_boundary_footprint_is_the_geometry_else_proj_geometry(
    tile: Tile, cfg: ProductConfig
) -> None:
    _, item = tile
    far = copy.deepcopy(item)
    far["geometry"] = {
        "type": "Polygon",
        "coordinates": [[[10, 10], [11, 10], [11, 11], [10, 11], [10, 10]]],
    }
    (f,) = only(run(far, cfg=cfg), "GM-BOUNDARY-001")
    assert f.path == "geometry"  # the WGS84 footprint wins over proj:geometry
    # without a GeoJSON geometry, proj:geometry in proj:code's CRS is the footprint
    item["geometry"] = None
    assert "GM-BOUNDARY-001" not in rule_ids(run(item, cfg=cfg))
    item["properties"]["proj:geometry"] = {
        "type": "Polygon",
        "coordinates": [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]],
    }
    (f,) = only(run(item, cfg=cfg), "GM-BOUNDARY-001")
    assert f.path == "properties.proj:geometry"


# ------------------------------------------------------------------ checksum


def test_checksum_malformed_multihash_is_p1(tile: Tile, cfg: ProductConfig) -> None:
    cog, item = tile
    item["assets"]["data"]["file:checksum"] = "12" + "20" + "ab" * 10  # digest too short
    (f,) = only(run(item, cfg=cfg, raster=cog), "GM-CHECKSUM-001")
    assert f.severity is Severity.P1 and f.path == "assets.data.file:checksum"
    item["assets"]["data"]["file:checksum"] = "not-hex"
    assert only(run(item, raster=cog), "GM-CHECKSUM-001")


def test_checksum_other_function_is_p1_for_a_product(tile: Tile, cfg: ProductConfig) -> None:
    cog, item = tile
    item["assets"]["data"]["file:checksum"] = "d50110" + "00" * 16  # a valid md5 multihash
    (f,) = only(run(item, cfg=cfg, raster=cog), "GM-CHECKSUM-002")
    assert f.severity is Severity.P1 and "sha2-256" in f.message
    assert only(run(item, raster=cog), "GM-CHECKSUM-002") == []  # generic: not our contract


def test_checksum_digest_mismatch_is_p1(tile: Tile, cfg: ProductConfig) -> None:
    cog, item = tile
    assert only(run(item, cfg=cfg, raster=cog), "GM-CHECKSUM-003") == []
    item["assets"]["data"]["file:checksum"] = "1220" + "0" * 64
    (f,) = only(run(item, cfg=cfg, raster=cog), "GM-CHECKSUM-003")
    assert f.severity is Severity.P1 and f.context["actual"] == sha256_file(cog)[0]


def test_checksum_changed_bytes_are_p1(tile: Tile, cfg: ProductConfig) -> None:
    cog, item = tile
    with open(cog, "r+b") as fh:  # flip one byte of pixel data near the end
        fh.seek(-10, 2)
        b = fh.read(1)
        fh.seek(-10, 2)
        fh.write(bytes([b[0] ^ 0xFF]))
    assert "GM-CHECKSUM-003" in rule_ids(run(item, cfg=cfg, raster=cog))


def test_checksum_size_mismatch_is_p1(tile: Tile, cfg: ProductConfig) -> None:
    cog, item = tile
    item["assets"]["data"]["file:size"] += 1
    (f,) = only(run(item, cfg=cfg, raster=cog), "GM-CHECKSUM-004")
    assert f.severity is Severity.P1 and f.path == "assets.data.file:size"


# ------------------------------------------------------------------ COG


def test_cog_errors_on_a_real_non_cog_are_p2_and_warnings_p3(
    shared_raster: Callable[[str], Path], cfg: ProductConfig, tile: Tile
) -> None:
    _, item = tile
    nocog = shared_raster("rio-tiler__nocog.tif")
    found = run(item, raster=nocog)
    errors = only(found, "GM-COG-001")
    assert errors and {f.severity for f in errors} == {Severity.P2}
    assert any("not tiled" in f.message for f in errors)
    warns = only(found, "GM-COG-002")
    assert warns and {f.severity for f in warns} == {Severity.P3}
    assert any("overviews" in f.message for f in warns)


def test_cog_valid_real_cog_passes(shared_raster: Callable[[str], Path], tile: Tile) -> None:
    _, item = tile
    found = run(item, raster=shared_raster("rio-tiler__cog.tif"))
    assert rule_ids(found) & {"GM-COG-001", "GM-COG-002"} == set()


def test_cog_external_overviews_are_an_error(
    shared_raster: Callable[[str], Path], tile: Tile
) -> None:
    _, item = tile
    found = only(run(item, raster=shared_raster("rio-cogeo__image_external.tif")), "GM-COG-001")
    assert any("external" in f.message for f in found)


def test_cog_block_size_differs_from_tile_size_is_p3(
    make_raster: Callable[..., Path], make_tile: Callable[..., Tile]
) -> None:
    cfg512 = _config(product_metadata=FULL_METADATA, ingestion={"tile_size": 512})
    cfg256 = _config(product_metadata=FULL_METADATA, ingestion={"tile_size": 256})
    cog, item = make_tile(make_raster(width=256, height=256, count=1), cfg512)
    (f,) = only(run(item, cfg=cfg256, raster=cog), "GM-COG-003")
    assert f.severity is Severity.P3 and f.context["tile_size"] == 256
    assert only(run(item, cfg=cfg512, raster=cog), "GM-COG-003") == []


def test_unreadable_raster_is_a_finding(tmp_path: Path, tile: Tile, cfg: ProductConfig) -> None:
    _, item = tile
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00 this is not a tiff")
    found = run(item, cfg=cfg, raster=junk)
    assert "GM-COG-004" in rule_ids(found)
    assert "GM-CHECKSUM-003" in rule_ids(found)


# ------------------------------------------------------------------ drift


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("proj:transform", [20.0, 0.0, 545000.0, 0.0, -20.0, 4185000.0]),
        ("proj:shape", [100, 100]),
        ("proj:bbox", [0.0, 0.0, 1.0, 1.0]),
    ],
)
def test_drift_from_raster_is_p2_and_derivable(
    tile: Tile, cfg: ProductConfig, field: str, value: list[float]
) -> None:
    cog, item = tile
    assert only(run(item, cfg=cfg, raster=cog), "GM-DRIFT-001") == []
    item["properties"][field] = value
    (f,) = only(run(item, cfg=cfg, raster=cog), "GM-DRIFT-001")
    assert f.path == f"properties.{field}" and f.context["derivable"] is True


# ------------------------------------------------------------------ policy


def test_policy_disables_and_overrides(tile: Tile) -> None:
    cog, item = tile
    item["properties"]["proj:shape"] = [1, 1]
    off = _config(validation={"disabled_rules": ["GM-DRIFT-001", "GM-CONTRACT-002"]})
    assert rule_ids(run(item, cfg=off, raster=cog)) == set()
    p3 = _config(
        product_metadata=FULL_METADATA, validation={"severity_overrides": {"GM-DRIFT-001": "P3"}}
    )
    found = run(item, cfg=p3, raster=cog)
    assert [(f.rule_id, f.severity) for f in found] == [("GM-DRIFT-001", Severity.P3)]


def test_strict_raises_p3_to_p2(tile: Tile) -> None:
    cog, item = tile
    del item["properties"]["platform"]  # GM-CONTRACT-002, a P3
    bare = _config()
    assert {f.severity for f in run(item, cfg=bare, raster=cog)} == {Severity.P3}
    assert {f.severity for f in run(item, cfg=bare, raster=cog, strict=True)} == {Severity.P2}
    strict_cfg = _config(validation={"strict": True})
    assert {f.severity for f in run(item, cfg=strict_cfg, raster=cog)} == {Severity.P2}


def test_unknown_rule_id_in_config_is_a_config_error() -> None:
    bad = _config(validation={"disabled_rules": ["GM-NOPE-001"]})
    with pytest.raises(ConfigError, match="GM-NOPE-001"):
        Policy.from_config(bad)


def test_findings_are_json_round_trippable(tile: Tile, cfg: ProductConfig) -> None:
    cog, item = tile
    item["properties"]["proj:code"] = "EPSG:32611"
    for f in run(item, cfg=cfg, raster=cog):
        assert Finding.from_json(json.loads(json.dumps(f.to_json()))) == f
