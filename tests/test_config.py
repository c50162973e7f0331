"""geomesh.config: the product owner's example loads unchanged; every bad case is a clear ConfigError."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from geomesh.config import load_config, loads_config
from geomesh.errors import ConfigError

from conftest import EXAMPLE_CONFIG


def test_example_config_loads_unchanged(config_path: Path) -> None:
    cfg = load_config(config_path)
    assert cfg.product_id == "sentinel2-msi-l2a-v2.1"
    assert cfg.spatial_domain.crs == "EPSG:4326"
    assert cfg.spatial_domain.boundary.bounds == (-122.5, 37.7, -122.3, 37.9)
    assert cfg.product_metadata.version_strategy == "semantic"
    assert cfg.product_metadata.lifecycle_stage == "production"
    assert cfg.ingestion.tile_size == 256
    assert cfg.ingestion.resampling == "bilinear"
    assert cfg.ingestion.output_format == "cloud-optimized-geotiff"
    assert cfg.ingestion.checksum_algorithm == "sha256"
    # defaults of the optional sections
    assert cfg.ingestion.clip is False
    assert cfg.governance.approvals_required == 1
    assert cfg.storage.root is None
    assert cfg.validation.routing == {"P1": "rollback", "P2": "quarantine", "P3": "warn"}


BAD_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "unknown top-level key",
        {"extras": {"a": 1}},
        "extras: unknown key; allowed keys here: spatial_domain",
    ),
    (
        "unknown nested key",
        {"ingestion": {"tilesize": 256}},
        "ingestion.tilesize: unknown key; allowed keys here: tile_size",
    ),
    (
        "invalid WKT",
        {"spatial_domain": {"boundary_wkt": "POLYGON((0 0, 1 1"}},
        "spatial_domain.boundary_wkt: boundary WKT does not parse",
    ),
    ("empty WKT", {"spatial_domain": {"boundary_wkt": "  "}}, "boundary WKT is empty"),
    ("empty geometry", {"spatial_domain": {"boundary_wkt": "POLYGON EMPTY"}}, "empty geometry"),
    (
        "self-intersecting WKT",
        {"spatial_domain": {"boundary_wkt": "POLYGON((0 0, 1 1, 1 0, 0 1, 0 0))"}},
        "Self-intersection",
    ),
    (
        "point WKT",
        {"spatial_domain": {"boundary_wkt": "POINT(1 2)"}},
        "is a Point; a POLYGON or MULTIPOLYGON is needed",
    ),
    (
        "unknown CRS",
        {"spatial_domain": {"crs": "EPSG:999999"}},
        "spatial_domain.crs: unknown CRS 'EPSG:999999'",
    ),
    (
        "tile size not power of two",
        {"ingestion": {"tile_size": 300}},
        "ingestion.tile_size: 300 is not a power of two >= 64",
    ),
    ("tile size too small", {"ingestion": {"tile_size": 32}}, "32 is not a power of two >= 64"),
    (
        "unknown resampling",
        {"ingestion": {"resampling": "bicubic-ish"}},
        "ingestion.resampling: 'bicubic-ish' is not a GDAL resampling method",
    ),
    ("wrong output format", {"ingestion": {"output_format": "png"}}, "ingestion.output_format"),
    (
        "wrong checksum",
        {"ingestion": {"checksum_algorithm": "md5"}},
        "ingestion.checksum_algorithm",
    ),
    (
        "bad product id",
        {"product_metadata": {"product_id": "Bad/ID"}},
        "product_metadata.product_id: 'Bad/ID' is not a valid product id",
    ),
    (
        "bad lifecycle",
        {"product_metadata": {"lifecycle_stage": "live"}},
        "product_metadata.lifecycle_stage",
    ),
    ("approvals zero", {"governance": {"approvals_required": 0}}, "governance.approvals_required"),
    ("wrong type", {"ingestion": {"clip": "sometimes"}}, "ingestion.clip"),
]


@pytest.mark.parametrize(
    ("case", "overrides", "expected"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_bad_config_names_file_key_and_fix(
    write_config: Callable[..., Path], case: str, overrides: dict[str, Any], expected: str
) -> None:
    path = write_config(overrides)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert expected in msg, msg


def test_missing_required_section(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("product_metadata:\n  product_id: x\n")
    with pytest.raises(ConfigError, match="spatial_domain: required key is missing"):
        load_config(p)


def test_non_mapping_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(p)


def test_yaml_alias_bomb_is_refused(tmp_path: Path) -> None:
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
    bomb += "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    p = tmp_path / "bomb.yaml"
    p.write_text(bomb)
    with pytest.raises(ConfigError, match="aliases are not allowed"):
        load_config(p)


def test_non_utf8_bytes(tmp_path: Path) -> None:
    p = tmp_path / "latin1.yaml"
    p.write_bytes(EXAMPLE_CONFIG.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(bad byte at offset \d+\)"):
        load_config(p)


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate key 'spatial_domain'"):
        loads_config(EXAMPLE_CONFIG + "spatial_domain:\n  crs: EPSG:4326\n")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: cannot read the config file"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_syntax(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("spatial_domain: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_config_digest_changes_with_contract(write_config: Callable[..., Path]) -> None:
    a = load_config(write_config())
    b = load_config(
        write_config(
            {
                "spatial_domain": {
                    "crs": "EPSG:4326",
                    "boundary_wkt": "POLYGON((-122.6 37.7, -122.3 37.7, -122.3 37.9, -122.6 37.9, -122.6 37.7))",
                }
            },
            name="b.yaml",
        )
    )
    assert a.digest() != b.digest()
    assert a.spatial_contract() != b.spatial_contract()
