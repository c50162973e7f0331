"""Hostile input corpus: each case ends in a clear error or a finding, never a crash.

The corpus is generated here (nothing binary is checked in): broken and lying rasters,
product configs with bad geometry, YAML bombs and bad bytes, STAC JSON that is huge,
deeply nested, mistyped or points outside its folder, item ids that look like paths or
carry control characters, settings that cannot work, a STAC source pointing at local
files, and HTML/JS in the text the review app shows.

For every case: no exception other than a GeomeshError escapes (the CLI exits 1, 2 or 3
with one clear ``error:`` line, never a traceback), a rejected input leaves the catalog
exactly as it was, and nothing is written outside the storage root.

The cases share one catalog on the selected backend (``tests/_backend_clone.py``: a local
directory, or a PostgreSQL database and a bucket pair); "exactly as it was" compares every
row, every stored object's SHA-256 (through the store API) and every other file under the
root, before and after each case.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import identity_support
import numpy as np
import pytest
import rasterio
import yaml
from _backend_clone import Place, Places, place_state
from click.testing import CliRunner, Result
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

from geomesh.cli import cli
from geomesh.config import load_config
from geomesh.models import Item
from geomesh.remote import Candidate
from geomesh.services import promotion, quarantine, signoff, users
from geomesh.services.pipeline import ingest_rasters
from geomesh.services.sources import ingest_from_stac
from geomesh.settings import Settings
from geomesh.workspace import Workspace

from conftest import EXAMPLE_CONFIG, ROOT

pytest_plugins = ("_app_fixtures",)
#: every case id, collected at import (the README's "hostile cases" number)
CASES: list[str] = []


def _register(kind: str, names: list[str]) -> list[str]:
    CASES.extend(f"{kind}:{n}" for n in names)
    return names


# ------------------------------------------------------------------ the workspace


@dataclass
class TestBed:
    base: Path  #: the parent folder: inputs live here, the storage root is base/root
    place: Place  #: the catalog (storage root, and on postgres-s3 its database and buckets)
    config: Path
    good: Path
    item_id: str

    @property
    def root(self) -> Path:
        return self.place.root

    def env(self, **extra: str | None) -> dict[str, str | None]:
        """The catalog's GEOMESH_* variables and ``extra`` (``None``: unset that variable)."""
        return {**self.place.env, **extra}

    def open(self) -> Workspace:
        return self.place.open(migrate=False)


def _geotiff(path: Path, **overrides: Any) -> Path:
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": 64,
        "height": 64,
        "count": 1,
        "dtype": "uint16",
        "nodata": 0,
        "crs": CRS.from_epsg(32610),
        "transform": from_origin(545000.0, 4185000.0, 10, 10),
    }
    profile.update(overrides)
    profile = {k: v for k, v in profile.items() if v is not None}
    data = np.random.default_rng(len(path.name)).integers(1, 9999, (profile["count"], 64, 64))
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data.astype(profile["dtype"]))
        ds.update_tags(TIFFTAG_DATETIME="2024:06:12 19:03:21")
    return path


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, places: Places) -> Iterator[TestBed]:
    base = tmp_path_factory.mktemp("hostile")
    place = places.fresh(base / "root")
    data = yaml.safe_load(EXAMPLE_CONFIG)
    data["ingestion"]["tile_size"] = 128
    config = base / "product.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    good = _geotiff(base / "good.tif")
    ws = place.open()
    users.add_user(ws, actor="system", name="root", role="admin")  # the first user: an admin
    users.add_user(ws, actor="root", name="alice", role="steward")
    (res,) = ingest_rasters(ws, load_config(config), [str(good)], actor="system").results
    assert res.item_id and res.state == "validation"
    ws.close()
    yield TestBed(base, place, config, good, res.item_id)


def catalog_state(bed: TestBed) -> dict[str, Any]:
    """Every database row, every stored object and every other file of the catalog (logs
    aside: runs are logged)."""
    return place_state(bed.place, skip_local=("logs",))


def outside_state(bed: TestBed) -> list[tuple[str, int]]:
    """Every file next to the storage root (the inputs): must never change."""
    return sorted(
        (p.relative_to(bed.base).as_posix(), p.lstat().st_size)
        for p in bed.base.rglob("*")
        if bed.root not in p.parents and p != bed.root
    )


def invoke(bed: TestBed, argv: list[str], **env: str | None) -> Result:
    return CliRunner().invoke(cli, argv, env=bed.env(**env), catch_exceptions=True)


def assert_clean(res: Result, codes: tuple[int, ...]) -> None:
    """No exception but SystemExit escaped, the exit code is expected, no traceback."""
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(
            f"{type(res.exception).__name__} escaped: {res.exception}"
        ) from res.exception
    assert res.exit_code in codes, (res.exit_code, res.stdout[-1500:], res.stderr[-1500:])
    assert "Traceback" not in res.stdout + res.stderr


def assert_one_error_line(res: Result, *, mentions: str | None = None) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith("error: ") and len(line) > 20, line
    assert "\x1b" not in line and "\r" not in line, repr(line)
    if mentions is not None:
        assert mentions in line, line
    return line


class Guard:
    """Snapshots the catalog and everything around it; :meth:`check` compares."""

    def __init__(self, bed: TestBed) -> None:
        self.bed = bed
        self.start()

    def start(self) -> None:
        """(Re)take the snapshot, e.g. after the test wrote its inputs."""
        self.catalog = catalog_state(self.bed)
        self.outside = outside_state(self.bed)

    def check(self) -> None:
        now = outside_state(self.bed)
        assert now == self.outside, (
            f"written outside the storage root: {sorted(set(now) ^ set(self.outside))}"
        )
        assert catalog_state(self.bed) == self.catalog, "a rejected input changed the catalog"


@pytest.fixture
def unchanged(bed: TestBed) -> Guard:
    return Guard(bed)


# ------------------------------------------------------------------ rasters


def _tiff_header_only() -> bytes:
    return b"II*\x00" + struct.pack("<I", 1_000_000)  # first IFD far past the end


def _tiff_declaring(width: int, height: int) -> bytes:
    """A tiny hand-written TIFF whose only IFD declares ``width`` x ``height`` pixels."""
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, 8),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 0xFFFFFFFF),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    ifd += b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    pixels = zlib.compress(b"".join(b"\x00" + bytes(range(16)) for _ in range(16)))
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _zip(good: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("inner.tif", good.read_bytes())
    return buf.getvalue()


def _gcps_only(path: Path, n: int) -> Path:
    _geotiff(path, crs=None, transform=None)
    points = [
        GroundControlPoint(0, 0, 545000, 4185000),
        GroundControlPoint(64, 64, 545640, 4184360),
        GroundControlPoint(0, 64, 545000, 4184360),
    ][:n]
    with rasterio.open(path, "r+") as ds:
        ds.gcps = (points, CRS.from_epsg(32610))
    return path


#: name -> (builder(folder, good tile) -> path or URL, expected: "rejected" | "finding" |
#: "georeferenced")
RASTERS: dict[str, tuple[Callable[[Path, Path], str], str]] = {
    "zero-bytes": (lambda d, g: _write(d / "zero.tif", b""), "rejected"),
    "truncated-100-bytes": (lambda d, g: _write(d / "t100.tif", g.read_bytes()[:100]), "rejected"),
    "truncated-half": (
        lambda d, g: _write(d / "half.tif", g.read_bytes()[: g.stat().st_size // 2]),
        "rejected",
    ),
    "header-only": (lambda d, g: _write(d / "hdr.tif", _tiff_header_only()), "rejected"),
    "declares-1e6x1e6-pixels": (
        lambda d, g: _write(d / "huge.tif", _tiff_declaring(10**6, 10**6)),
        "rejected",
    ),
    "declares-0x0-pixels": (
        lambda d, g: _write(d / "empty.tif", _tiff_declaring(0, 0)),
        "rejected",
    ),
    "text-named-tif": (lambda d, g: _write(d / "text.tif", b"just some text\n"), "rejected"),
    "html-named-tif": (
        lambda d, g: _write(d / "page.tif", b"<html><script>alert(1)</script></html>"),
        "rejected",
    ),
    "json-named-tif": (lambda d, g: _write(d / "doc.tif", b'{"type": "Feature"}'), "rejected"),
    "zip-named-tif": (lambda d, g: _write(d / "archive.tif", _zip(g)), "rejected"),
    "nan-transform": (
        lambda d, g: str(_geotiff(d / "nan.tif", transform=Affine(float("nan"), 0, 0, 0, -10, 0))),
        "rejected",
    ),
    "inf-transform": (
        lambda d, g: str(_geotiff(d / "inf.tif", transform=Affine(10, 0, float("inf"), 0, -10, 0))),
        "rejected",
    ),
    "zero-pixel-size": (
        lambda d, g: str(_geotiff(d / "zeropx.tif", transform=Affine(0, 0, 545000, 0, -10, 0))),
        "rejected",
    ),
    "single-gcp": (lambda d, g: str(_gcps_only(d / "gcp1.tif", 1)), "rejected"),
    "complex-valued": (
        lambda d, g: str(_geotiff(d / "complex.tif", dtype="complex64", nodata=None)),
        "rejected",
    ),
    "a-directory": (lambda d, g: _mkdir(d / "folder.tif"), "rejected"),
    "missing-file": (lambda d, g: str(d / "missing.tif"), "rejected"),
    "char-device": (lambda d, g: "/dev/null", "rejected"),
    "symlink-to-text": (lambda d, g: _symlink(d / "link.tif", d / "text.tif"), "rejected"),
    "unreachable-url-with-credentials": (
        lambda d, g: "https://user:hunter2@127.0.0.1:1/tile.tif?X-Amz-Signature=abc123",
        "rejected",
    ),
    # GDAL's PNG driver is not in the product's input_drivers (GTiff): refused (issue 14)
    "png-named-tif": (lambda d, g: _write(d / "image.tif", _png()), "rejected"),
    "no-crs": (lambda d, g: str(_geotiff(d / "nocrs.tif", crs=None)), "finding"),
    # GDAL warps ground control points into a regular grid: a georeferenced COG
    "gcps-only": (lambda d, g: str(_gcps_only(d / "gcp3.tif", 3)), "georeferenced"),
}
_register("raster", list(RASTERS))


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _mkdir(path: Path) -> str:
    path.mkdir(exist_ok=True)
    return str(path)


def _symlink(path: Path, target: Path) -> str:
    if not target.exists():
        target.write_bytes(b"just some text\n")
    if not path.is_symlink():
        path.symlink_to(target)
    return str(path)


@pytest.fixture(scope="module")
def raster_inputs(bed: TestBed) -> dict[str, str]:
    folder = bed.base / "inputs"
    folder.mkdir()
    return {name: build(folder, bed.good) for name, (build, _) in RASTERS.items()}


@pytest.mark.parametrize("name", list(RASTERS))
def test_hostile_raster(
    name: str, bed: TestBed, raster_inputs: dict[str, str], unchanged: Guard
) -> None:
    source = raster_inputs[name]
    expected = RASTERS[name][1]
    before = {r for r in catalog_state(bed)["rows"]["item"]}
    res = invoke(bed, ["ingest", str(bed.config), source, "--json"])
    if expected == "rejected":
        assert_clean(res, (1,))
        (result,) = json.loads(res.stdout)["results"]
        assert result["status"] == "failed" and result["error"], result
        shown = source.split("?")[0].replace("user:hunter2@", "")
        assert Path(shown).name in result["error"] or shown in result["error"], result
        assert "hunter2" not in res.stdout + res.stderr and "abc123" not in res.stdout
        unchanged.check()
        if not source.startswith("http"):  # reading it: fine, or one clear line
            res = invoke(bed, ["inspect", source])
            assert_clean(res, (0, 2))
            if res.exit_code == 2:
                assert_one_error_line(res, mentions=Path(source).name)
        return
    assert_clean(res, (0,))
    (result,) = json.loads(res.stdout)["results"]
    assert result["status"] == "staged", result
    if expected == "georeferenced":
        shown = invoke(bed, ["items", "show", result["item_id"]])
        assert json.loads(shown.stdout)["properties"]["proj:code"] == "EPSG:32610"
    else:  # a raster GDAL can read but the contract cannot accept: quarantined
        assert result["state"] == "quarantined" and result["findings"]["P2"] > 0, result
    after = {r for r in catalog_state(bed)["rows"]["item"]}
    assert len(after - before) == 1


_register("stac-source", ["local-path", "file-url", "gdal-vsi-path"])


def test_a_stac_source_cannot_point_at_local_files(bed: TestBed, tmp_path: Path) -> None:
    """A (hostile) STAC API whose asset hrefs are local paths, file:// or GDAL /vsi paths."""
    data = yaml.safe_load(bed.config.read_text())
    data["source"] = {"url": "http://127.0.0.1:1/stac", "collection": "s2", "assets": ["B04"]}
    data["product_metadata"]["product_id"] = "evil-source"  # a product of its own
    cfg_path = tmp_path / "sourced.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = load_config(cfg_path)
    hrefs = [str(bed.good), f"file://{bed.good}", f"/vsizip/{bed.good}.zip/inner.tif"]
    cands = [
        Candidate(
            item_id=f"evil-{n}",
            collection="s2",
            datetime=None,
            cloud_cover=None,
            geometry={},
            bbox=None,
            assets={"B04": href},
            status="new",
            self_href=None,
        )
        for n, href in enumerate(hrefs)
    ]
    before = catalog_state(bed)
    ws = bed.open()
    try:
        report = ingest_from_stac(ws, cfg, actor="system", candidates=cands)
    finally:
        ws.close()
    assert [r.status for r in report.results] == ["failed"] * 3
    errors = [r.error or "" for r in report.results]
    assert "local files cannot be read from a STAC source" in errors[0], errors
    assert "file:// scheme is not accepted" in errors[1], errors
    assert "(/vsi…) are not accepted" in errors[2], errors
    assert catalog_state(bed) == before


# ------------------------------------------------------------------ product configs


def _config_text(**changes: Any) -> str:
    data = yaml.safe_load(EXAMPLE_CONFIG)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data[section][key] = value
    return yaml.safe_dump(data, sort_keys=False)


def _wkt(value: str) -> str:
    return _config_text(spatial_domain__boundary_wkt=value)


_BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    + EXAMPLE_CONFIG
)
CONFIGS: dict[str, str | bytes] = {
    "wkt-garbage": _wkt("POLYGON((this is not wkt"),
    "wkt-self-intersecting": _wkt("POLYGON((0 0, 1 1, 1 0, 0 1, 0 0))"),
    "wkt-empty-string": _wkt(""),
    "wkt-polygon-empty": _wkt("POLYGON EMPTY"),
    "wkt-a-point": _wkt("POINT(0 0)"),
    "wkt-zero-area": _wkt("POLYGON((0 0, 1 1, 2 2, 0 0))"),
    "wkt-nan-coordinates": _wkt("POLYGON((nan 0, 1 0, 1 1, 0 1, nan 0))"),
    "wkt-inf-coordinates": _wkt("POLYGON((0 0, inf 0, 1 1, 0 1, 0 0))"),
    "wkt-unclosed-ring": _wkt("POLYGON((0 0, 1 0, 1 1, 0 1))"),
    "wkt-too-many-vertices": _wkt("POLYGON((0 0," + "1 1," * 200_001 + "0 0))"),
    "wkt-enormous-file": _wkt("POLYGON((0 0," + "1.000000001 1.000000001," * 60_000 + "0 0))"),
    "unknown-top-level-key": EXAMPLE_CONFIG + "surprise: true\n",
    "unknown-nested-key": _config_text(ingestion__colour="blue"),
    "alias-bomb": _BOMB,
    "one-alias": EXAMPLE_CONFIG.replace('crs: "EPSG:4326"', "crs: &c EPSG:4326\n  other: *c"),
    "non-utf8-bytes": EXAMPLE_CONFIG.encode().replace(b"semantic", b"s\xe9mantic\xff"),
    "utf16": EXAMPLE_CONFIG.encode("utf-16"),
    "a-list": "- 1\n- 2\n",
    "a-scalar": "just a string\n",
    "empty-file": "",
    "yaml-syntax-error": "spatial_domain: [unclosed\n",
    "duplicate-keys": EXAMPLE_CONFIG + "spatial_domain:\n  crs: EPSG:3857\n",
    "python-object-tag": '!!python/object/apply:os.system ["touch /tmp/geomesh-pwned"]\n',
    "nested-100000-deep": "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "unknown-crs": _config_text(spatial_domain__crs="EPSG:999999"),
    "product-id-traversal": _config_text(product_metadata__product_id="../../etc"),
    "product-id-slash": _config_text(product_metadata__product_id="a/b"),
    "product-id-control-chars": _config_text(product_metadata__product_id="p\x1b[31m"),
    "tile-size-not-power-of-two": _config_text(ingestion__tile_size=100),
    "tile-size-a-list": _config_text(ingestion__tile_size=[256]),
    "tile-size-enormous": _config_text(ingestion__tile_size=10**100),
    "datetime-garbage": _config_text(ingestion__datetime="yesterday-ish"),
    "binary-garbage": bytes(range(256)) * 4,
    "escalation-file-url": EXAMPLE_CONFIG
    + "governance:\n  escalation: [{name: x, url: 'file:///etc/passwd'}]\n",
    "escalation-javascript-url": EXAMPLE_CONFIG
    + "governance:\n  escalation: [{name: x, url: 'javascript:alert(1)'}]\n",
}
_register("config", [*CONFIGS, "config-is-a-directory", "config-missing"])


@pytest.mark.parametrize("name", [*CONFIGS, "config-is-a-directory", "config-missing"])
def test_hostile_config(name: str, bed: TestBed, tmp_path: Path, unchanged: Guard) -> None:
    path = bed.base / "configs" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    if name == "config-is-a-directory":
        path.mkdir(exist_ok=True)
    elif name != "config-missing":
        content = CONFIGS[name]
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    unchanged.start()
    for argv in (
        ["ingest", str(path), str(bed.good)],
        ["rules", "--config", str(path)],
        ["validate", "--config", str(path), str(bed.base / "nothing.json")],
    ):
        res = invoke(bed, argv)
        assert_clean(res, (2,))
        # ours: one "error: …" line; click's own (a directory given): its usage message
        line = next(ln for ln in res.stderr.splitlines() if ln.startswith(("error: ", "Error: ")))
        assert path.name in line, res.stderr
        assert "\x1b" not in res.stderr
    assert not Path("/tmp/geomesh-pwned").exists()
    unchanged.check()


# ------------------------------------------------------------------ settings


#: name -> GEOMESH_* variables over the catalog's (``None``: unset it)
SETTINGS: dict[str, dict[str, str | None]] = {
    "storage-root-is-a-file": {"GEOMESH_STORAGE_ROOT": "{base}/good.tif"},
    "object-store-unknown": {"GEOMESH_OBJECT_STORE": "ftp"},
    "workers-not-a-number": {"GEOMESH_WORKERS": "many"},
    "s3-without-bucket": {"GEOMESH_OBJECT_STORE": "s3", "GEOMESH_S3_BUCKET": None},
    "database-url-garbage": {"GEOMESH_DATABASE_URL": "::not a url::"},
    "database-url-unknown-dialect": {"GEOMESH_DATABASE_URL": "nosuchdb://u:pw@127.0.0.1/x"},
    "database-folder-is-a-file": {"GEOMESH_DATABASE_URL": "sqlite:///{base}/good.tif/x.db"},
}
_register("settings", list(SETTINGS))


@pytest.mark.parametrize("name", list(SETTINGS))
def test_hostile_settings(name: str, bed: TestBed, unchanged: Guard) -> None:
    env = {k: v if v is None else v.format(base=bed.base) for k, v in SETTINGS[name].items()}
    for argv in (["items", "list"], ["ingest", str(bed.config), str(bed.good)], ["doctor"]):
        res = invoke(bed, argv, **env)
        assert_clean(res, (2,))
        line = assert_one_error_line(res)
        assert "pw@" not in line
    unchanged.check()


# ------------------------------------------------------------------ STAC JSON (geomesh validate)


def _item(href: str = "tile.tif", **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/file/v2.1.0/schema.json"],
        "id": "hostile-item",
        "geometry": {"type": "Point", "coordinates": [-122.4, 37.8]},
        "bbox": [-122.4, 37.8, -122.4, 37.8],
        "properties": {"datetime": "2024-06-12T19:03:21Z"},
        "links": [],
        "assets": {
            "data": {
                "href": href,
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
                "file:checksum": "1220" + "0" * 64,
                "file:size": 1,
            }
        },
    }
    doc.update(changes)
    return doc


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _json(doc: Any) -> bytes:
    return json.dumps(doc).encode()


#: name -> (file bytes | builder(folder) -> None, rule ids of which at least one is expected)
STAC_FILES: dict[str, tuple[bytes | Callable[[Path], None], set[str]]] = {
    "huge-50MB": (lambda p: _sparse(p, 50 << 20), {"GM-JSON-001"}),
    "nested-arrays-100000": (b"[" * 100_000 + b"]" * 100_000, {"GM-JSON-001"}),
    "nested-objects-100000": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, {"GM-JSON-001"}),
    "nested-100-in-properties": (
        _json(_item(properties={"datetime": "2024-06-12T19:03:21Z", "x": _nest(100)})),
        {"GM-JSON-001"},
    ),
    "top-level-array": (b"[1, 2, 3]", {"GM-JSON-001"}),
    "top-level-string": (b'"an item"', {"GM-JSON-001"}),
    "not-json": (b"{'single': 'quotes'}", {"GM-JSON-001"}),
    "nan-constant": (b'{"id": NaN}', {"GM-JSON-001"}),
    "infinity-constant": (b'{"id": Infinity}', {"GM-JSON-001"}),
    "non-utf8": (b'{"id": "\xff\xfe"}', {"GM-JSON-001"}),
    "empty-file": (b"", {"GM-JSON-001"}),
    "wrong-types": (
        _json(
            _item(
                id=12345,
                geometry="here",
                bbox="everywhere",
                properties=["not", "an", "object"],
                links={"rel": "self"},
                stac_extensions="file",
            )
        ),
        {"GM-SCHEMA-001"},
    ),
    "assets-wrong-shape": (_json(_item(assets={"data": "tile.tif"})), {"GM-SCHEMA-001"}),
    "href-a-number": (
        _json(_item(assets={"data": {"href": 42, "roles": ["data"]}})),
        {"GM-SCHEMA-001"},
    ),
    "numbers-overflowing-to-infinity": (
        _json(_item()).replace(b"-122.4, 37.8, -122.4, 37.8", b"1e400, -1e400, 1e999, 2"),
        {"GM-JSON-001"},
    ),
    "integers-too-big-for-a-double": (
        _json(_item()).replace(b"[-122.4, 37.8]", b"[" + b"9" * 400 + b", 37.8]"),
        {"GM-CONTRACT-001"},
    ),
    "proj-fields-wrong-types": (
        _json(
            _item(
                properties={
                    "datetime": "2024-06-12T19:03:21Z",
                    "proj:code": ["EPSG", 4326],
                    "proj:shape": "64x64",
                    "proj:transform": [None, "a"],
                    "proj:bbox": {"a": 1},
                },
                stac_extensions=["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
            )
        ),
        {"GM-SCHEMA-002", "GM-CRS-001", "GM-SCHEMA-003"},
    ),
    "hostile-extension-urls": (
        _json(
            _item(
                stac_extensions=[
                    "file:///etc/passwd",
                    "https://example.com/../../../etc/passwd",
                    "http://127.0.0.1:1/schema.json",
                    "\u0000",
                ]
            )
        ),
        {"GM-SCHEMA-001", "GM-SCHEMA-003"},
    ),
    # legal STAC (only the contract's proj fields are missing): nothing breaks or is touched
    "href-nul-byte": (_json(_item("tile\u0000.tif")), {"GM-CONTRACT-001"}),
    "id-with-slashes-and-escapes": (
        _json(_item(id="../../etc/\u001b[31mpasswd\n")),
        {"GM-CONTRACT-001"},
    ),
}
#: hrefs that point outside the item's folder: validation must not read them
ESCAPING_HREFS: dict[str, Callable[[Path, Path], str]] = {
    "href-dotdot": lambda folder, outside: os.path.relpath(outside, folder),
    "href-absolute": lambda folder, outside: str(outside),
    "href-file-url": lambda folder, outside: outside.as_uri(),
    "href-symlink-out": lambda folder, outside: _link_out(folder, outside),
}
_register("stac", [*STAC_FILES, *ESCAPING_HREFS])


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.write(b'{"type": "Feature", "id": "')
        fh.truncate(size)  # a hole: 50 MB the size check sees, no disk used


def _link_out(folder: Path, outside: Path) -> str:
    link = folder / "inside.tif"
    if not link.is_symlink():
        link.symlink_to(outside)
    return "inside.tif"


def _validate(bed: TestBed, path: Path) -> tuple[Result, list[dict[str, Any]]]:
    res = invoke(bed, ["validate", "--json", "--config", str(bed.config), str(path)])
    assert_clean(res, (1, 2, 3))
    (file_result,) = json.loads(res.stdout)["files"]
    return res, file_result["findings"]


@pytest.mark.parametrize("name", list(STAC_FILES))
def test_hostile_stac_json(name: str, bed: TestBed, unchanged: Guard) -> None:
    folder = bed.base / "stac" / name
    folder.mkdir(parents=True)
    path = folder / "item.json"
    content, expected = STAC_FILES[name]
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    unchanged.start()
    _, findings = _validate(bed, path)
    rules = {f["rule_id"] for f in findings}
    assert rules & expected, (rules, findings[:3])
    if name == "huge-50MB":  # refused by its size, before any parsing
        assert any("the limit is" in f["message"] for f in findings), findings
    if "GM-JSON-001" in expected:
        assert all(
            f["message"].startswith(str(path)) for f in findings if f["rule_id"] == "GM-JSON-001"
        )
    unchanged.check()


@pytest.mark.parametrize("name", list(ESCAPING_HREFS))
def test_validate_never_reads_outside_the_item_folder(
    name: str, bed: TestBed, unchanged: Guard
) -> None:
    outside = bed.base / "outside" / "secret.tif"
    if not outside.exists():
        outside.parent.mkdir(exist_ok=True)
        _geotiff(outside)
    folder = bed.base / "stac" / name / "items"
    folder.mkdir(parents=True)
    path = folder / "item.json"
    path.write_bytes(_json(_item(ESCAPING_HREFS[name](folder, outside))))
    before = outside.read_bytes()
    unchanged.start()
    _, findings = _validate(bed, path)
    rules = {f["rule_id"] for f in findings}
    refusals = [f for f in findings if "outside the item's folder" in f["message"]]
    assert refusals, findings
    # had the raster been read, its bytes would not match the planted checksum
    assert not rules & {"GM-CHECKSUM-003", "GM-CHECKSUM-004", "GM-COG-001", "GM-COG-002"}, rules
    assert outside.read_bytes() == before
    unchanged.check()


def test_validate_still_reads_an_asset_inside_the_folder(bed: TestBed) -> None:
    """The guard is not a blanket refusal: the same raster inside the folder is read."""
    folder = bed.base / "stac" / "inside"
    folder.mkdir(parents=True)
    shutil.copy(bed.good, folder / "tile.tif")
    path = folder / "item.json"
    path.write_bytes(_json(_item("tile.tif")))
    _, findings = _validate(bed, path)
    assert "GM-CHECKSUM-003" in {f["rule_id"] for f in findings}  # it was read and hashed


# ------------------------------------------------------------------ item ids on the command line

HOSTILE_IDS = {
    "dotdot-path": "../../../etc/passwd",
    "slash": "a/b",
    "dotdot": "..",
    "newline": "item\nerror: forged second line",
    "terminal-escape": "\x1b[31mred\x1b[0m",
    "terminal-title-escape": "\x1b]0;owned\x07item",
    "very-long": "x" * 5000,
    "empty": "",
}
ID_COMMANDS: dict[str, Callable[[str, str], list[str]]] = {
    "quarantine-show": lambda cfg, i: ["quarantine", "show", i],
    "items-show": lambda cfg, i: ["items", "show", i],
    "signoff-approve": lambda cfg, i: ["signoff", cfg, i, "--approve", "--actor", "alice"],
    "signoff-request": lambda cfg, i: ["signoff", cfg, i, "--request", "--actor", "alice"],
    "signoff-reject-without-comment": lambda cfg, i: [
        "signoff",
        cfg,
        i,
        "--reject",
        "--actor",
        "alice",
    ],
    "quarantine-release": lambda cfg, i: ["quarantine", "release", cfg, i, "--actor", "alice"],
    "quarantine-discard": lambda cfg, i: [
        "quarantine",
        "discard",
        i,
        "--reason",
        "x",
        "--actor",
        "alice",
    ],
    "quarantine-revalidate": lambda cfg, i: [
        "quarantine",
        "revalidate",
        cfg,
        i,
        "--actor",
        "alice",
    ],
    "rollback-item": lambda cfg, i: ["rollback", cfg, "--item", i, "--actor", "alice"],
    "remediate": lambda cfg, i: ["remediate", cfg, i, "--actor", "alice"],
    "promote-ids": lambda cfg, i: ["promote", cfg, i, "--actor", "alice"],
}
_register("item-id", [f"{c}/{i}" for c in ID_COMMANDS for i in HOSTILE_IDS])


@pytest.fixture(scope="module")
def alice_token(bed: TestBed) -> dict[str, str]:
    """alice proves who she is (an API token), so each command reaches the hostile id."""
    ws = bed.open()
    try:
        return identity_support.token_env(ws, "alice")
    finally:
        ws.close()


@pytest.mark.parametrize("ident", list(HOSTILE_IDS))
@pytest.mark.parametrize("command", list(ID_COMMANDS))
def test_hostile_item_id(
    command: str, ident: str, bed: TestBed, alice_token: dict[str, str], unchanged: Guard
) -> None:
    res = invoke(bed, ID_COMMANDS[command](str(bed.config), HOSTILE_IDS[ident]), **alice_token)
    assert_clean(res, (2,))
    line = assert_one_error_line(res)
    assert "forged" not in line or "\\n" in line  # the newline is shown escaped
    assert len(line) < 8000
    unchanged.check()


# ------------------------------------------------------------------ HTML/JS in the app


SCRIPT = "<script>alert('xss')</script>"
IMG = "<img src=x onerror=alert('xss')>"
_register(
    "app-text",
    [
        "product-title",
        "product-description",
        "source-file-name",
        "item-title",
        "discard-reason",
        "rejection-comment",
    ],
)


@pytest.fixture
def xss_catalog(settings: Settings, tmp_path: Path) -> Iterator[Workspace]:
    """A product and items whose every user-supplied text is HTML/JS."""
    data = yaml.safe_load(EXAMPLE_CONFIG)
    data["ingestion"]["tile_size"] = 128
    data["product_metadata"]["title"] = f"Tiles {SCRIPT}"
    data["product_metadata"]["description"] = f"About {IMG} and {SCRIPT}"
    cfg_path = tmp_path / "xss.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = load_config(cfg_path)
    ws = Workspace.open(settings)
    identity_support.add_users(ws, {"alice": "steward", "bob": "steward"})
    folder = tmp_path / "uploads"
    folder.mkdir()
    evil = _geotiff(folder / f"{IMG}.tif")
    nocrs = _geotiff(folder / f"{IMG}-nocrs.tif", crs=None)
    second = _geotiff(folder / f"second{IMG}.tif", transform=from_origin(545500, 4185000, 10, 10))
    gone = _geotiff(folder / f"gone{IMG}.tif", crs=None, count=2)
    tiles = [evil, nocrs, second, gone]
    report = ingest_rasters(ws, cfg, [str(t) for t in tiles], actor="system")
    ids = [r.item_id for r in report.results]
    assert all(ids) and [r.state for r in report.results] == [
        "validation",
        "quarantined",
        "validation",
        "quarantined",
    ], report.to_json()
    with ws.transaction() as s:  # a title carried from a STAC source
        row = s.get(Item, ids[0])
        assert row is not None
        row.stac = {**row.stac, "properties": {**row.stac["properties"], "title": SCRIPT}}
        s.add(row)
    signoff.sign_off(ws, cfg, ids[0], actor="alice", approve=True, comment=IMG)
    signoff.sign_off(ws, cfg, ids[2], actor="bob", approve=False, comment=SCRIPT)
    promotion.promote(ws, cfg, [ids[0]], actor="alice")
    quarantine.discard(ws, str(ids[3]), actor="alice", reason=f"bad {SCRIPT}")
    yield ws
    ws.close()


def _elements(node: Any) -> Iterator[Any]:
    children = getattr(node, "children", None)
    if isinstance(children, dict):
        for child in children.values():
            yield from _elements(child)
    else:
        yield node


_RAW_TAG = re.compile(r"(?<!\\)<\s*(script|img)", re.IGNORECASE)


_PAYLOAD = re.compile(r"<img src=x onerror=alert|<script>alert", re.IGNORECASE)
_TOOLTIP = re.compile(r'"tip_\w+": "((?:[^"\\]|\\.)*)"')


def _unescape(text: str) -> str:
    """Undo the JSON/proto string escaping around HTML handed to a component."""
    pairs = (("\\\\", "\\"), ('\\"', '"'), ("\\'", "'"))
    for _ in range(6):
        new = text
        for a, b in pairs:
            new = new.replace(a, b)
        if new == text:
            break
        text = new
    return text


def _raw(text: str) -> bool:
    """An HTML tag of the payload that is not Markdown-escaped (``\\<script``)."""
    return bool(_RAW_TAG.search(text))


def test_html_in_user_text_renders_as_text(xss_catalog: Workspace) -> None:
    pytest.importorskip("streamlit")
    from _app_helpers import PAGES, app_as, no_exception

    at = app_as("root")
    no_exception(at)
    seen = components = 0
    for page in PAGES:
        at.switch_page(page).run()
        no_exception(at)
        for el in _elements(at._tree):
            proto = getattr(el, "proto", None)
            if proto is None:
                continue
            kind = getattr(el, "type", "")
            body = str(getattr(proto, "body", "") or "")
            if kind == "html":
                assert not _raw(body), (page, body[:300])
            if getattr(proto, "allow_html", False):
                assert not _raw(body), (page, "unsafe_allow_html with user text", body[:300])
            if kind in (
                "markdown",
                "caption",
                "title",
                "header",
                "subheader",
                "error",
                "info",
                "success",
                "warning",
            ):
                assert not _raw(body), (page, kind, body[:300])
                seen += "script" in body or "onerror" in body
            if kind == "component_instance":
                # components (the map) get their HTML as arguments: only escaped text inside
                args = _unescape(str(getattr(proto, "json_args", "")))
                assert not _PAYLOAD.search(args), (page, kind, args[:300])
                # data inside its <script> is \u003c-escaped; tooltip values end up in
                # innerHTML, so they must be HTML-escaped text underneath
                data = args.replace("\\u003c", "<").replace("\\u003e", ">")
                tips = _TOOLTIP.findall(data)
                assert tips and not any(_PAYLOAD.search(t) for t in tips), (page, tips[:5])
                components += 1
    assert seen, "the hostile text was never rendered as markdown (escaped): nothing was checked"
    assert components, "the map was not rendered: its HTML was not checked"


def test_the_corpus_has_at_least_60_cases() -> None:
    assert len(CASES) >= 60, len(CASES)
    assert len(set(CASES)) == len(CASES)


def test_readme_states_no_more_cases_than_the_suite_collects() -> None:
    """README's Guarantees row names a case count; the suite must collect at least that."""
    row = next(
        ln for ln in (ROOT / "README.md").read_text().splitlines() if "test_hostile_inputs.py" in ln
    )
    stated = int(re.search(r"\*\*(\d+) cases\*\*", row).group(1))  # type: ignore[union-attr]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    collected = int(re.search(r"(\d+) tests? collected", out.stdout).group(1))  # type: ignore[union-attr]
    assert collected >= stated, (collected, stated, out.stdout[-500:])
    assert stated >= 188 + 25, "the opening-policy cases (issue 14) are not in README's count"


# ------------------------------------------------------------------ the opening policy (issue 14)
#
# A file named .tif that is really VRT XML pointing at a local secret, GDAL /vsi paths,
# file:// and other schemes, loopback / link-local / private addresses (also behind a
# redirect from an allowed host), paths outside the import directories, pixel bombs and
# URLs with credentials: each is refused with one clear error, the secret is never read
# into the catalog and nothing is written. Run through the CLI's untrusted path
# (`ingest --untrusted`), the app's Ingest page (AppTest) and `ingest --from-stac`.

SECRET_TEXT = b"geomesh-canary-secret-0451;" * 200
CREDS = ("hunter2", "abc123sig", "tok456")


def _vrt(target: Path) -> str:
    """A VRT whose one band is the raw bytes of ``target`` (what GDAL would read)."""
    return (
        '<VRTDataset rasterXSize="64" rasterYSize="64">\n'
        "  <SRS>EPSG:32610</SRS>\n"
        "  <GeoTransform>545000, 10, 0, 4185000, 0, -10</GeoTransform>\n"
        '  <VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand">\n'
        f'    <SourceFilename relativeToVRT="0">{target}</SourceFilename>\n'
        "    <ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset>"
        "<LineOffset>64</LineOffset>\n"
        "  </VRTRasterBand>\n"
        "</VRTDataset>\n"
    )


def _sparse_tiff(path: Path, size: int, dtype: str) -> None:
    """A tiny, compressed GeoTIFF that declares ``size``² pixels (no block is written)."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype=dtype,
        crs=CRS.from_epsg(32610),
        transform=from_origin(545000.0, 4185000.0, 10, 10),
        tiled=True,
        compress="deflate",
        sparse_ok=True,
    ):
        pass


@dataclass
class Untrusted:
    imports: Path
    files: Any  # _stac_server.RangeFileServer
    env: dict[str, str]

    @property
    def port(self) -> int:
        return int(self.files.base_url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def untrusted(bed: TestBed) -> Iterator[Untrusted]:
    from _stac_server import RangeFileServer

    secret = bed.base / "secret.txt"
    secret.write_bytes(SECRET_TEXT)
    imports = bed.base / "imports"
    imports.mkdir()
    (imports / "evil.tif").write_text(_vrt(secret))
    shutil.copy(bed.good, imports / "good.tif")
    (imports / "archive.zip").write_bytes(_zip(bed.good))
    (imports / "escape.tif").symlink_to(bed.good)
    _sparse_tiff(imports / "bomb.tif", 30_000, "uint8")  # 9e8 pixels > 5e8
    _sparse_tiff(imports / "fat.tif", 20_000, "float64")  # 4e8 pixels, 3 GiB > 2 GiB
    served = bed.base / "served"
    served.mkdir()
    for name in ("evil.tif", "good.tif"):
        shutil.copy(imports / name, served / name)
    (served / "text.tif").write_bytes(b"just some text\n")
    with RangeFileServer(served) as files:
        port = files.base_url.rsplit(":", 1)[1]
        files.redirects = {
            "to-metadata.tif": "http://169.254.169.254/latest/meta-data/iam/",
            "to-localhost.tif": f"http://localhost:{port}/good.tif",
        }
        env = {
            "GEOMESH_IMPORT_DIRS": str(imports),
            # the file server by address (explicitly allowed) and by a name that resolves
            # to loopback (refused: only a literal address opts in)
            "GEOMESH_ALLOWED_SOURCES": f"{files.base_url},http://localhost:{port}",
        }
        yield Untrusted(imports, files, env)


#: name -> (source builder, what the one error line says)
OPENING: dict[str, tuple[Callable[[Untrusted, TestBed], str], str]] = {
    "vrt-named-tif-in-import-dir": (
        lambda u, b: str(u.imports / "evil.tif"),
        "not a readable raster of an allowed format (GTiff)",
    ),
    "vrt-named-tif-relative-path": (
        lambda u, b: "evil.tif",
        "not a readable raster of an allowed format (GTiff)",
    ),
    "vrt-named-tif-over-http": (
        lambda u, b: u.files.url("evil.tif"),
        "not a readable raster of an allowed format (GTiff)",
    ),
    "vrt-through-vsicurl": (
        lambda u, b: "/vsicurl/" + u.files.url("evil.tif"),
        "(/vsi…) are not accepted",
    ),
    "vsizip-path": (
        lambda u, b: f"/vsizip/{u.imports}/archive.zip/inner.tif",
        "(/vsi…) are not accepted",
    ),
    "vsimem-upper-case": (lambda u, b: "/VSIMEM/x.tif", "(/vsi…) are not accepted"),
    "file-url": (lambda u, b: (u.imports / "good.tif").as_uri(), "file:// scheme"),
    "zip-url": (lambda u, b: f"zip://{u.imports}/archive.zip!inner.tif", "zip:// scheme"),
    "gdal-connection-string": (
        lambda u, b: f"GTIFF_DIR:1:{u.imports}/good.tif",
        "connection strings",
    ),
    "http-127-0-0-1-not-allowed": (
        lambda u, b: "http://127.0.0.1:1/good.tif",
        "not an allowed source",
    ),
    "http-ipv6-loopback": (
        lambda u, b: f"http://[::1]:{u.port}/good.tif",
        "not an allowed source",
    ),
    "http-link-local-metadata": (
        lambda u, b: "http://169.254.169.254/latest/meta-data/iam/",
        "not an allowed source",
    ),
    "http-private-10-x": (lambda u, b: "http://10.0.0.1/tile.tif", "not an allowed source"),
    "allowed-name-resolving-to-loopback": (
        lambda u, b: f"http://localhost:{u.port}/good.tif",
        "a loopback, link-local, private or reserved address",
    ),
    "redirect-to-link-local": (
        lambda u, b: u.files.url("to-metadata.tif"),
        "http://169.254.169.254 is not an allowed source",
    ),
    "redirect-to-loopback-name": (
        lambda u, b: u.files.url("to-localhost.tif"),
        "a loopback, link-local, private or reserved address",
    ),
    "path-outside-import-dirs": (
        lambda u, b: str(b.good),
        "outside the import directories",
    ),
    "symlink-out-of-import-dir": (
        lambda u, b: str(u.imports / "escape.tif"),
        "outside the import directories",
    ),
    "dotdot-out-of-import-dir": (
        lambda u, b: f"{u.imports}/../good.tif",
        "outside the import directories",
    ),
    "pixel-bomb": (lambda u, b: str(u.imports / "bomb.tif"), "ingestion.max_pixels"),
    "decompressed-size-bomb": (
        lambda u, b: str(u.imports / "fat.tif"),
        "ingestion.max_decompressed_mb",
    ),
    "url-credentials-in-gdal-error": (
        lambda u, b: (
            f"http://user:hunter2@127.0.0.1:{u.port}/text.tif"
            "?X-Amz-Signature=abc123sig&token=tok456"
        ),
        "not a readable raster of an allowed format",
    ),
    "url-credentials-on-http-404": (
        lambda u, b: (
            f"http://user:hunter2@127.0.0.1:{u.port}/missing.tif"
            "?X-Amz-Signature=abc123sig&token=tok456"
        ),
        "answered HTTP 404",
    ),
}
_register("opening-cli", list(OPENING))


def _logs(root: Path) -> str:
    return "".join(p.read_text() for p in sorted((root / "logs").glob("*.jsonl")))


@pytest.mark.parametrize("name", list(OPENING))
def test_untrusted_cli_ingest_refuses(
    name: str,
    bed: TestBed,
    untrusted: Untrusted,
    unchanged: Guard,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(untrusted.imports)  # the relative-path case resolves from here
    build, says = OPENING[name]
    source = build(untrusted, bed)
    untrusted.files.clear_log()
    logs_before = _logs(bed.root)
    res = invoke(bed, ["ingest", str(bed.config), source, "--untrusted", "--json"], **untrusted.env)
    assert_clean(res, (1,))
    (result,) = json.loads(res.stdout)["results"]
    assert result["status"] == "failed" and says in result["error"], result
    new_logs = _logs(bed.root)[len(logs_before) :]
    for secret in (*CREDS, SECRET_TEXT[:20].decode()):
        assert secret not in res.stdout + res.stderr + new_logs, (secret, result)
    # refused before GDAL: no byte of a refused source was fetched (only the checked HEAD
    # of an allowed URL, and GDAL's reads of the two allowed URLs it then failed to open)
    if name not in ("vrt-named-tif-over-http", "url-credentials-in-gdal-error"):
        assert not [s for s in untrusted.files.log() if s.method == "GET"], untrusted.files.log()
    if name.startswith("redirect"):  # the hop to the private address was never contacted
        assert [s.path for s in untrusted.files.log()] == [f"/{source.rsplit('/', 1)[1]}"]
    unchanged.check()


def test_the_operator_cli_refuses_a_disguised_vrt_but_may_widen_explicitly(
    bed: TestBed, untrusted: Untrusted, unchanged: Guard, tmp_path: Path
) -> None:
    """Without --untrusted (the operator): a VRT named .tif is still not opened as VRT;
    `--allow-driver VRT` opens it, for files the operator trusts (here: a VRT of good.tif)."""
    res = invoke(bed, ["ingest", str(bed.config), str(untrusted.imports / "evil.tif"), "--json"])
    assert_clean(res, (1,))
    (result,) = json.loads(res.stdout)["results"]
    assert "not a readable raster of an allowed format (GTiff)" in result["error"], result
    assert SECRET_TEXT[:20].decode() not in res.stdout
    unchanged.check()
    trusted = tmp_path / "mosaic.tif"
    with rasterio.open(bed.good) as ds:
        trusted.write_text(
            f'<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:32610</SRS>'
            f"<GeoTransform>{', '.join(str(v) for v in ds.transform.to_gdal())}</GeoTransform>"
            '<VRTRasterBand dataType="UInt16" band="1"><SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{bed.good}</SourceFilename>'
            "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
        )
    unchanged.start()
    res = invoke(
        bed,
        ["ingest", str(bed.config), str(trusted), "--allow-driver", "VRT", "--dry-run", "--json"],
    )
    assert_clean(res, (0,))
    (result,) = json.loads(res.stdout)["results"]
    assert result["status"] in ("would-stage", "exists") and not result["error"], result
    unchanged.check()
    # the untrusted path and remote sources cannot widen it
    res = invoke(
        bed, ["ingest", str(bed.config), str(trusted), "--untrusted", "--allow-driver", "VRT"]
    )
    assert res.exit_code == 2 and "--allow-driver" in res.output
    res = invoke(bed, ["ingest", str(bed.config), str(trusted), "--allow-driver", "NoSuchDrv"])
    assert_clean(res, (2,))
    assert_one_error_line(res, mentions="NoSuchDrv")


# ------------------------------------------------------------------ … through the Ingest page

PAGE_CASES = [
    "vrt-named-tif-in-import-dir",
    "vrt-named-tif-over-http",
    "vrt-through-vsicurl",
    "file-url",
    "http-ipv6-loopback",
    "http-link-local-metadata",
    "redirect-to-link-local",
    "path-outside-import-dirs",
    "symlink-out-of-import-dir",
    "url-credentials-in-gdal-error",
]
_register("opening-page", PAGE_CASES)


@pytest.fixture
def page_env(bed: TestBed, untrusted: Untrusted, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**bed.env(), **untrusted.env}.items():
        monkeypatch.setenv(key, value)


def _page_results(at: Any) -> list[dict[str, Any]]:
    frames = [df.value for df in at.dataframe]
    assert frames, [e.value for e in at.error]
    return list(frames[0].to_dict("records"))


@pytest.mark.parametrize("name", PAGE_CASES)
def test_ingest_page_refuses(
    name: str, bed: TestBed, untrusted: Untrusted, page_env: None, unchanged: Guard
) -> None:
    pytest.importorskip("streamlit")
    from _app_helpers import K, app_as, no_exception

    source = OPENING[name][0](untrusted, bed)
    at = app_as("alice", "pages/ingest.py")
    no_exception(at)
    at.text_area(key=K.I_PATHS).input(source).run()
    at.button(key=K.I_DRY_RUN).click().run()
    no_exception(at)
    (row,) = _page_results(at)
    assert row["status"] == "failed" and OPENING[name][1] in row["error"], row
    shown = " ".join(str(e.value) for e in at.markdown) + " " + str(row)
    for secret in (*CREDS, SECRET_TEXT[:20].decode()):
        assert secret not in shown
    assert not (bed.root / "uploads" / "alice").exists() or not any(
        (bed.root / "uploads" / "alice").iterdir()
    )
    unchanged.check()


UPLOAD_CASES = ["upload-by-a-viewer", "upload-over-the-size-limit", "upload-vrt-named-tif"]
_register("opening-upload", UPLOAD_CASES)


@pytest.mark.parametrize("name", UPLOAD_CASES)
def test_ingest_page_uploads_are_refused_and_removed(
    name: str,
    bed: TestBed,
    untrusted: Untrusted,
    page_env: None,
    unchanged: Guard,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("streamlit")
    from _app_helpers import K, app_as, no_exception

    user, data, says = {
        "upload-by-a-viewer": ("victor", (untrusted.imports / "evil.tif").read_bytes(), "viewer"),
        "upload-over-the-size-limit": ("alice", b"II*\x00" + bytes(2 << 20), "the limit is 1 MiB"),
        "upload-vrt-named-tif": (
            "alice",
            (untrusted.imports / "evil.tif").read_bytes(),
            "not a readable raster of an allowed format (GTiff)",
        ),
    }[name]
    if user == "victor":
        ws = bed.open()
        try:
            if not any(u.name == "victor" for u in users.list_users(ws)):
                users.add_user(ws, actor="root", name="victor", role="viewer")
        finally:
            ws.close()
        unchanged.start()
    monkeypatch.setenv("GEOMESH_UPLOAD_MAX_MB", "1")
    at = app_as(user, "pages/ingest.py")
    no_exception(at)
    at.file_uploader(key=K.I_UPLOAD).upload("evil.tif", data, "image/tiff").run()
    at.button(key=K.I_DRY_RUN).click().run()
    no_exception(at)
    if name == "upload-vrt-named-tif":
        (row,) = _page_results(at)
        assert row["status"] == "failed" and says in row["error"], row
    else:
        errors = [str(e.value) for e in at.error]
        assert any(says in e for e in errors), errors
    # nothing kept: no upload file (the folder is private), nothing in the catalog
    folder = bed.root / "uploads"
    if name == "upload-by-a-viewer":
        assert not (folder / user).exists(), "a byte was saved before the role check"
    assert not [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else True
    unchanged.check()


# ------------------------------------------------------------------ … through ingest --from-stac

STAC_ASSETS: dict[str, Callable[[Untrusted, TestBed], str]] = {
    "vrt-served-as-tif": lambda u, b: u.files.url("evil.tif"),
    "vsizip-href": lambda u, b: f"/vsizip/{u.imports}/archive.zip/inner.tif",
    "vsicurl-href": lambda u, b: "/vsicurl/" + u.files.url("good.tif"),
    "file-url-href": lambda u, b: (u.imports / "good.tif").as_uri(),
    "local-path-href": lambda u, b: str(b.good),
    "metadata-href": lambda u, b: "http://169.254.169.254/latest/meta-data/iam/",
    "ipv6-loopback-href": lambda u, b: f"http://[::1]:{u.port}/good.tif",
    "redirect-href": lambda u, b: u.files.url("to-metadata.tif"),
    "credentials-href": lambda u, b: (
        f"http://user:hunter2@127.0.0.1:{u.port}/text.tif?X-Amz-Signature=abc123sig&token=tok456"
    ),
}
_register("opening-stac", list(STAC_ASSETS))


@pytest.mark.parametrize("name", list(STAC_ASSETS))
def test_ingest_from_stac_refuses_hostile_assets(
    name: str, bed: TestBed, untrusted: Untrusted, unchanged: Guard, tmp_path: Path
) -> None:
    from _stac_server import RustacServer, rustac_executable

    from conftest import require_service

    exe = rustac_executable()
    if exe is None:
        require_service("the `rustac` CLI (PyPI: rustac) is not installed")
    assert exe is not None
    href = STAC_ASSETS[name](untrusted, bed)
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": f"hostile-{name}",
        "collection": "hostile",
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [
                    [-122.45, 37.75],
                    [-122.35, 37.75],
                    [-122.35, 37.85],
                    [-122.45, 37.85],
                    [-122.45, 37.75],
                ]
            ],
        },  # fmt: skip
        "bbox": [-122.45, 37.75, -122.35, 37.85],
        "properties": {"datetime": "2024-06-12T19:03:21Z"},
        "links": [],
        "assets": {"B04": {"href": href, "type": "image/tiff"}},
    }
    items = tmp_path / "item.json"
    items.write_text(json.dumps(item))
    data = yaml.safe_load(bed.config.read_text())
    with RustacServer(exe, [items], tmp_path / "rustac.log") as api:
        data["source"] = {"url": api.url, "collection": "hostile", "assets": ["B04"]}
        data["product_metadata"]["product_id"] = f"stac-{name}"  # a product of its own
        cfg = bed.base / "configs" / f"stac-{name}.yaml"
        cfg.parent.mkdir(exist_ok=True)
        cfg.write_text(yaml.safe_dump(data))
        unchanged.start()
        untrusted.files.clear_log()
        res = invoke(bed, ["ingest", "--from-stac", str(cfg), "--json"], **untrusted.env)
    assert_clean(res, (1,))
    (result,) = json.loads(res.stdout)["results"]
    assert result["status"] == "failed" and result["error"], result
    error = result["error"]
    assert "refused" in error or "allowed format" in error, error
    for secret in (*CREDS, SECRET_TEXT[:20].decode()):
        assert secret not in res.stdout + res.stderr
    # nothing read through GDAL from a refused href: the file server saw at most HEADs
    # (discover's identity check) and, for the allowed VRT URL, GDAL's header reads
    if name not in ("vrt-served-as-tif", "credentials-href"):  # allowed URLs GDAL opened
        assert not [s for s in untrusted.files.log() if s.method == "GET"], untrusted.files.log()
    unchanged.check()
