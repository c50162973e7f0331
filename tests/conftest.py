"""Shared fixtures: the ../shared data, per-test catalogs on every backend, raster factories.

Backends: by default SQLite + a local directory. With GEOMESH_TEST_BACKEND=postgres-s3 the
same tests run on PostgreSQL (127.0.0.1:5432) and S3 on a SeaweedFS server the suite starts.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from geomesh.catalog import Catalog
from geomesh.config import ProductConfig, load_config
from geomesh.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
BACKEND = os.environ.get("GEOMESH_TEST_BACKEND", "sqlite-local")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

EXAMPLE_CONFIG = textwrap.dedent(
    """\
    spatial_domain:
      crs: "EPSG:4326"
      boundary_wkt: "POLYGON((-122.5 37.7, -122.3 37.7, -122.3 37.9, -122.5 37.9, -122.5 37.7))"
    product_metadata:
      product_id: "sentinel2-msi-l2a-v2.1"
      version_strategy: "semantic"
      lifecycle_stage: "production"
    ingestion:
      tile_size: 256
      resampling: "bilinear"
      output_format: "cloud-optimized-geotiff"
      checksum_algorithm: "sha256"
    """
)


def require_service(reason: str) -> None:
    """Skip with a clear reason, except under CI where a missing service is a failure."""
    if IN_CI:
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The only way tests reach ../shared (real third-party data and STAC schemas)."""
    if not (SHARED / "data" / "MANIFEST.tsv").is_file():
        pytest.skip(f"../shared test data not found at {SHARED} (CI always has it)")
    return SHARED


@pytest.fixture(scope="session")
def schema_dir(shared_dir: Path) -> Path:
    return shared_dir / "stac-schemas"


@pytest.fixture(scope="session")
def shared_raster(shared_dir: Path) -> Callable[[str], Path]:
    def get(name: str) -> Path:
        p = shared_dir / "data" / "rasters" / name
        assert p.is_file(), p
        return p

    return get


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    p = tmp_path / "product.yaml"
    p.write_text(EXAMPLE_CONFIG)
    return p


@pytest.fixture
def config(config_path: Path) -> ProductConfig:
    return load_config(config_path)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a product config YAML, starting from the example and applying overrides."""
    import yaml

    def write(overrides: dict[str, Any] | None = None, name: str = "product.yaml") -> Path:
        data = yaml.safe_load(EXAMPLE_CONFIG)
        for section, values in (overrides or {}).items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section].update(values)
            else:
                data[section] = values
        p = tmp_path / name
        p.write_text(yaml.safe_dump(data, sort_keys=False))
        return p

    return write


# ------------------------------------------------------------------ backends


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest, schema_dir_if_present: Path | None,
             monkeypatch: pytest.MonkeyPatch) -> Settings:
    root = tmp_path / "geomesh-data"
    env: dict[str, str] = {"GEOMESH_STORAGE_ROOT": str(root)}
    if schema_dir_if_present is not None:
        env["GEOMESH_SCHEMA_DIR"] = str(schema_dir_if_present)
    if BACKEND == "postgres-s3":
        env.update(request.getfixturevalue("postgres_env"))
        env.update(request.getfixturevalue("s3_env"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings()


@pytest.fixture(scope="session")
def schema_dir_if_present() -> Path | None:
    p = SHARED / "stac-schemas"
    return p if p.is_dir() else None


@pytest.fixture
def catalog(settings: Settings) -> Iterator[Catalog]:
    cat = Catalog.open(settings)
    yield cat
    cat.close()


# ------------------------------------------------------------------ rasters


@pytest.fixture
def make_raster(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a GeoTIFF with any CRS, dtype, size, bands and nodata.

    Defaults: a 4-band uint16 Sentinel-2-like tile in UTM 10N over San Francisco.
    """
    counter = {"n": 0}

    def make(
        name: str | None = None,
        *,
        width: int = 512,
        height: int = 512,
        count: int = 4,
        dtype: str = "uint16",
        crs: str | None = "EPSG:32610",
        origin: tuple[float, float] = (545000.0, 4185000.0),
        res: float = 10.0,
        nodata: float | None = 0,
        tiled: bool = False,
        seed: int = 0,
        tags: dict[str, str] | None = None,
        **profile: Any,
    ) -> Path:
        counter["n"] += 1
        path = tmp_path / (name or f"raster{counter['n']}.tif")
        rng = np.random.default_rng(seed)
        if np.dtype(dtype).kind == "f":
            data = rng.random((count, height, width)).astype(dtype) * 1000
        else:
            info = np.iinfo(dtype)
            hi = min(info.max, 10000)
            lo = max(info.min, 1)
            data = rng.integers(lo, hi, (count, height, width)).astype(dtype)
        prof: dict[str, Any] = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": count,
            "dtype": dtype,
            "transform": from_origin(origin[0], origin[1], res, res),
            "nodata": nodata,
        }
        if crs is not None:
            prof["crs"] = CRS.from_user_input(crs)
        if tiled:
            prof.update(tiled=True, blockxsize=256, blockysize=256)
        prof.update(profile)
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(data)
            if tags:
                dst.update_tags(**tags)
        return path

    return make


@pytest.fixture
def s2_tile(make_raster: Callable[..., Path]) -> Path:
    """A Sentinel-2-like 4-band uint16 tile inside the example domain (UTM 10N)."""
    return make_raster(
        "S2B_10SEG_20240612_L2A.tif",
        tags={"TIFFTAG_DATETIME": "2024:06:12 19:03:21"},
    )
