"""Ingest from a STAC API (issue 6): discover scenes over the domain, ingest them by range reads.

A real STAC API (`rustac serve`, in-memory backend) on 127.0.0.1 is loaded with the real
Sentinel-2 L2A items from ../shared (Earth Search v1 and Planetary Computer), their asset
hrefs rewritten to COGs this module generates at each item's footprint in its proj:epsg CRS
and serves from a local HTTP server with Range support and a log of the bytes it sent.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
import yaml
from _stac_server import CannedServer, RangeFileServer, RustacServer, rustac_executable
from click.testing import CliRunner
from policy_support import change_policy
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles
from shapely.geometry import box, shape
from sqlmodel import select

from geomesh.cli import cli
from geomesh.config import ProductConfig, load_config
from geomesh.errors import ConfigError, SourceError
from geomesh.hashing import sha256_file, to_multihash
from geomesh.models import AuditEvent, Item, ItemState
from geomesh.remote import candidates_geojson, domain_geojson, open_client, search_parameters
from geomesh.services.ingest import TileResult
from geomesh.services.sources import discover, ingest_from_stac
from geomesh.workspace import Workspace

from conftest import require_service

SYSTEM = "system"
ES_L2A = "S2A_13TDE_20231008_0_L2A"  # Earth Search sentinel-2-l2a, Colorado, UTM 13N
ES_C1 = "S2B_T24MUV_20250731T130245_L2A"  # Earth Search sentinel-2-c1-l2a, Brazil, UTM 24S
PC_L2A = "S2A_MSIL2A_20190101T000001_R116_T58UFE_20201007T214651"  # Planetary Computer
ITEM_FILES = {
    ES_L2A: "earth-search-v1/sentinel-2-l2a/S2A_13TDE_20231008_0_L2A.json",
    ES_C1: "earth-search-v1/sentinel-2-c1-l2a/S2B_T24MUV_20250731T130245_L2A.json",
    PC_L2A: "planetary-computer/sentinel-2-l2a/"
    "S2A_MSIL2A_20190101T000001_R116_T58UFE_20201007T214651.json",
}
#: the assets each test scene serves as a generated COG
SERVED = {ES_L2A: ("red", "nir"), ES_C1: ("red",), PC_L2A: ("B04",)}
COG_SIZE = 2048
EO_V11 = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
S2_V10 = "https://stac-extensions.github.io/sentinel-2/v1.0.0/schema.json"
SAT_V10 = "https://stac-extensions.github.io/sat/v1.0.0/schema.json"
PROC_V12 = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"

# a domain inside the Colorado scene, in the scene's own UTM zone (not EPSG:4326)
UTM13_DOMAIN = (
    "POLYGON((440000 4440000, 452000 4441000, 451000 4452000, 441000 4450500, 440000 4440000))"
)


# ------------------------------------------------------------------ data


def _read_item(shared_dir: Path, item_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (shared_dir / "data" / "stac-items" / ITEM_FILES[item_id]).read_text()
    )
    return data


def write_cog(
    path: Path, asset: dict[str, Any], epsg: int, *, base: int = 1000, seed: int = 0
) -> None:
    """A 2048² uint16 COG (256² tiles, overviews) over the asset's grid extent."""
    t = asset["proj:transform"]
    height, width = asset["proj:shape"]
    res = t[0] * width / COG_SIZE
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:COG_SIZE, 0:COG_SIZE]
    data = (base + (xx + yy) % 500 + rng.integers(0, 500, (COG_SIZE, COG_SIZE))).astype("uint16")
    profile = {
        "driver": "GTiff",
        "width": COG_SIZE,
        "height": COG_SIZE,
        "count": 1,
        "dtype": "uint16",
        "crs": f"EPSG:{epsg}",
        "transform": from_origin(t[2], t[5], res, res),
        "nodata": 0,
    }
    cog = dict(cog_profiles.get("deflate"))
    cog.update(blockxsize=256, blockysize=256)
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data, 1)
        with mem.open() as src:
            cog_translate(src, str(path), cog, overview_level=3, quiet=True, in_memory=True)


def _epsg(item: dict[str, Any]) -> int:
    return int(item["properties"]["proj:epsg"])


@pytest.fixture(scope="session")
def source_cogs(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated COGs, laid out as the file server serves them: <item>/<asset>.tif."""
    root = tmp_path_factory.mktemp("cogs")
    for item_id, keys in SERVED.items():
        item = _read_item(shared_dir, item_id)
        (root / item_id).mkdir()
        for i, key in enumerate(keys):
            write_cog(root / item_id / f"{key}.tif", item["assets"][key], _epsg(item), seed=i)
    return root


@dataclass
class StacSetup:
    """A running STAC API + COG server and helpers to write product configs for them."""

    api: RustacServer
    files: RangeFileServer
    items_dir: Path
    items: dict[str, dict[str, Any]]
    write_config: Callable[..., Path]
    stack: ExitStack

    @property
    def api_url(self) -> str:
        return self.api.url

    def cog_path(self, item_id: str, key: str) -> Path:
        return self.files.root / item_id / f"{key}.tif"

    def cog_name(self, item_id: str, key: str) -> str:
        return f"{item_id}/{key}.tif"

    def restart_api(self, name: str) -> RustacServer:
        """Serve the items again (rewritten from the current COGs) from a new API."""
        exe = rustac_executable()
        assert exe is not None
        root = self.items_dir.parent
        paths = write_items(
            self.items, root / f"items-{name}", self.files.base_url, self.files.root
        )
        return self.stack.enter_context(RustacServer(exe, paths, root / f"rustac-{name}.log"))

    def config(self, *, domain_crs: str, boundary: str, **source: Any) -> Path:
        src = {"url": self.api_url, **source}
        return self.write_config(
            {
                "spatial_domain": {"crs": domain_crs, "boundary_wkt": boundary},
                "source": src,
            },
            name=f"product-{len(list(self.items_dir.parent.glob('product-*.yaml')))}.yaml",
        )


def _rewrite(item: dict[str, Any], base_url: str, cogs: Path) -> dict[str, Any]:
    """Point every asset at the local server; served COGs get their real checksum where
    the upstream item carries file:checksum (as Earth Search's collection 1 does)."""
    out = json.loads(json.dumps(item))
    for key, asset in out["assets"].items():
        asset["href"] = f"{base_url}/{item['id']}/{key}.tif"
        cog = cogs / item["id"] / f"{key}.tif"
        if "file:checksum" in asset and cog.is_file():
            digest, size = sha256_file(cog)
            asset["file:checksum"] = to_multihash(digest)
            asset["file:size"] = size
    return out


def write_items(
    setup_items: dict[str, dict[str, Any]], items_dir: Path, base_url: str, cogs: Path
) -> list[Path]:
    items_dir.mkdir(exist_ok=True)
    paths = []
    for item_id, item in setup_items.items():
        p = items_dir / f"{item_id}.json"
        p.write_text(json.dumps(_rewrite(item, base_url, cogs)))
        paths.append(p)
    return paths


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def stac(
    shared_dir: Path,
    source_cogs: Path,
    tmp_path: Path,
    write_config: Callable[..., Path],
    no_proxy: None,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[StacSetup]:
    exe = rustac_executable()
    if exe is None:
        require_service("the `rustac` CLI (PyPI: rustac) is not installed")
    assert exe is not None
    files_root = tmp_path / "files"
    shutil.copytree(source_cogs, files_root)
    items = {item_id: _read_item(shared_dir, item_id) for item_id in ITEM_FILES}
    with ExitStack() as stack:
        files = stack.enter_context(RangeFileServer(files_root))
        # the opening policy reads assets only under allowed prefixes; this one names the
        # loopback address itself, which allows it (requested before `workspace`)
        monkeypatch.setenv("GEOMESH_ALLOWED_SOURCES", files.base_url)
        paths = write_items(items, tmp_path / "items", files.base_url, files_root)
        api = stack.enter_context(RustacServer(exe, paths, tmp_path / "rustac.log"))
        yield StacSetup(api, files, tmp_path / "items", items, write_config, stack)


def _items(ws: Workspace) -> list[Item]:
    with ws.read() as s:
        return list(s.exec(select(Item)).all())


def _colorado(stac: StacSetup, assets: list[str]) -> ProductConfig:
    """A product over the domain inside the Colorado scene, reading ``assets`` of it."""
    return load_config(
        stac.config(
            domain_crs="EPSG:32613",
            boundary=UTM13_DOMAIN,
            collection="sentinel-2-l2a",
            assets=assets,
        )
    )


def _link(stac_item: dict[str, Any], rel: str) -> list[str]:
    return [link["href"] for link in stac_item["links"] if link["rel"] == rel]


def _envelope_contains(outer: tuple[float, ...], inner: list[float], tol: float) -> bool:
    return (
        inner[0] >= outer[0] - tol
        and inner[1] >= outer[1] - tol
        and inner[2] <= outer[2] + tol
        and inner[3] <= outer[3] + tol
    )


# ------------------------------------------------------------------ discover + ingest


def test_discover_and_ingest_from_stac_api(
    stac: StacSetup, workspace: Workspace, pystac_offline: Any
) -> None:
    cfg = _colorado(stac, ["red"])
    name = stac.cog_name(ES_L2A, "red")
    cog_size = stac.cog_path(ES_L2A, "red").stat().st_size

    # discover: exactly the Colorado scene (the Planetary Computer item in the same
    # collection lies elsewhere), found without reading a single pixel
    cands = discover(workspace, cfg)
    assert [c.item_id for c in cands] == [ES_L2A]
    (cand,) = cands
    assert cand.status == "new" and cand.asset_status == {"red": "new"}
    assert cand.assets == {"red": stac.files.url(name)}
    assert cand.cloud_cover == pytest.approx(0.000299)
    assert cand.datetime is not None and cand.datetime.isoformat().startswith("2023-10-08T18:02:55")
    assert cand.identities["red"] == "etag:" + stac.files.etag(stac.cog_path(ES_L2A, "red"))
    assert cand.geometry["type"] == "Polygon"
    assert shape(cand.geometry).intersects(shape(domain_geojson(cfg)))
    assert {s.method for s in stac.files.log()} == {"HEAD"}
    fc = candidates_geojson(cands)
    assert fc["type"] == "FeatureCollection" and fc["features"][0]["id"] == ES_L2A
    json.dumps(fc)  # GeoJSON-ready: plain JSON types only

    # ingest: clipped range reads of the remote COG
    stac.files.clear_log()
    report = ingest_from_stac(workspace, cfg, actor=SYSTEM)
    assert report.ok, report.to_json()
    assert [r.status for r in report.results] == ["staged"]
    served = stac.files.bytes_served(name)
    gets = [s for s in stac.files.requests_for(name) if s.method == "GET"]
    assert gets and all(s.status == 206 for s in gets)
    assert 0 < served < cog_size / 2, (served, cog_size)

    (row,) = _items(workspace)
    assert row.source_item_id == f"{ES_L2A}/red"
    assert row.source_etag == cand.identities["red"]
    item = row.stac
    props = item["properties"]
    # the clip happened: the output lies within the domain envelope (one pixel of slack)
    assert props["proj:code"] == "EPSG:32613"
    res = abs(props["proj:transform"][0])
    env = cfg.spatial_domain.boundary.bounds
    assert _envelope_contains(env, props["proj:bbox"], tol=res), (props["proj:bbox"], env)
    assert props["proj:shape"][0] < COG_SIZE and props["proj:shape"][1] < COG_SIZE
    # the source item's metadata came along
    assert props["platform"] == "sentinel-2a"
    assert props["constellation"] == "sentinel-2"
    assert props["instruments"] == ["msi"]
    assert props["eo:cloud_cover"] == pytest.approx(0.000299)
    assert props["datetime"].startswith("2023-10-08T18:02:55.276")
    assert props["s2:product_type"] == "S2MSI2A"
    assert props["s2:processing_baseline"] == "05.09"
    assert props["processing:software"] == {"sentinel2-to-stac": "0.1.1"}
    assert "s2:sequence" not in props  # not in the sentinel-2 v1.0.0 schema: left out
    assert not any(k.startswith(("mgrs:", "grid:", "view:", "earthsearch:")) for k in props)
    assert {EO_V11, S2_V10, PROC_V12} <= set(item["stac_extensions"])
    assert _link(item, "derived_from") == [
        f"{stac.api_url}/collections/sentinel-2-l2a/items/{ES_L2A}"
    ]
    pystac.validation.validate_dict(item)  # offline, every listed extension included

    # the second run finds the scene ingested and reads nothing
    stac.files.clear_log()
    again = discover(workspace, cfg)
    assert [(c.item_id, c.status) for c in again] == [(ES_L2A, "ingested")]
    assert again[0].ingested_items == {"red": row.id}
    report2 = ingest_from_stac(workspace, cfg, actor=SYSTEM)
    assert [(r.status, r.item_id) for r in report2.results] == [("exists", row.id)]
    assert [s for s in stac.files.log() if s.method == "GET"] == []
    assert len(_items(workspace)) == 1
    with workspace.read() as s:
        events = s.exec(select(AuditEvent).where(AuditEvent.action == "ingest")).all()
    assert [e.target for e in events] == [row.id]


def test_planetary_computer_item_cloud_cover_and_datetime(
    stac: StacSetup, workspace: Workspace, pystac_offline: Any
) -> None:
    pc = stac.items[PC_L2A]
    centre = shape(pc["geometry"]).representative_point()
    domain = box(centre.x - 0.04, centre.y - 0.03, centre.x + 0.04, centre.y + 0.03).wkt

    def cfg_with(**source: Any) -> Any:
        return load_config(
            stac.config(
                domain_crs="EPSG:4326",
                boundary=domain,
                collection="sentinel-2-l2a",
                assets=["red", "B04"],
                **source,
            )
        )

    # the API has no query/filter extension: max_cloud_cover is applied to what it returns
    assert [c.item_id for c in discover(workspace, cfg_with())] == [PC_L2A]
    assert discover(workspace, cfg_with(max_cloud_cover=40)) == []
    assert [c.item_id for c in discover(workspace, cfg_with(max_cloud_cover=50))] == [PC_L2A]
    # datetime is a server-side search parameter
    assert discover(workspace, cfg_with(datetime="2023-01-01T00:00:00Z/2023-12-31T23:59:59Z")) == []

    cfg = cfg_with(max_cloud_cover=50, datetime="2018-12-01T00:00:00Z/2019-01-31T00:00:00Z")
    (cand,) = discover(workspace, cfg)
    assert cand.assets == {"B04": stac.files.url(stac.cog_name(PC_L2A, "B04"))}
    assert cand.missing_assets == ("red",)

    stac.files.clear_log()
    report = ingest_from_stac(workspace, cfg, actor=SYSTEM)
    assert report.ok, report.to_json()
    name = stac.cog_name(PC_L2A, "B04")
    assert 0 < stac.files.bytes_served(name) < stac.cog_path(PC_L2A, "B04").stat().st_size / 2
    (row,) = _items(workspace)
    item = row.stac
    props = item["properties"]
    assert props["proj:code"] == "EPSG:4326"  # warped from UTM 58N to the domain CRS
    res = abs(props["proj:transform"][0])
    assert _envelope_contains(cfg.spatial_domain.boundary.bounds, props["proj:bbox"], tol=res)
    assert props["platform"] == "Sentinel-2A"
    assert props["eo:cloud_cover"] == pytest.approx(46.556288)
    assert props["sat:relative_orbit"] == 116 and props["sat:orbit_state"] == "descending"
    assert props["s2:mgrs_tile"] == "58UFE"
    assert props["datetime"].startswith("2019-01-01T00:00:01.024")
    assert {EO_V11, S2_V10, SAT_V10} <= set(item["stac_extensions"])
    assert _link(item, "derived_from") == [
        f"{stac.api_url}/collections/sentinel-2-l2a/items/{PC_L2A}"
    ]
    assert row.source_item_id == f"{PC_L2A}/B04"
    pystac.validation.validate_dict(item)


def test_checksum_identity_and_reprocessed_scene(stac: StacSetup, workspace: Workspace) -> None:
    """file:checksum identifies the asset (no HEAD); a new checksum re-ingests it, and the
    new bytes are read, not GDAL's cached copy of the old file at the same URL."""
    item = stac.items[ES_C1]
    centre = shape(item["geometry"]).representative_point()
    domain = box(centre.x - 0.02, centre.y - 0.02, centre.x + 0.02, centre.y + 0.02).wkt
    cfg = load_config(
        stac.config(
            domain_crs="EPSG:4326", boundary=domain, collection="sentinel-2-c1-l2a", assets=["red"]
        )
    )
    name = stac.cog_name(ES_C1, "red")
    path = stac.cog_path(ES_C1, "red")

    (cand,) = discover(workspace, cfg)
    assert cand.identities["red"] == "checksum:" + to_multihash(sha256_file(path)[0])
    assert stac.files.requests_for(name) == []  # identity from the item, no HEAD
    report = ingest_from_stac(workspace, cfg, actor=SYSTEM)
    assert [r.status for r in report.results] == ["staged"], report.to_json()
    (first,) = _items(workspace)
    assert first.source_etag == cand.identities["red"]

    # the provider reprocesses the scene: new bytes at the same URL, new checksum
    write_cog(path, item["assets"]["red"], _epsg(item), base=5000, seed=7)
    api2 = stac.restart_api("v2")
    cfg2 = load_config(
        stac.config(
            domain_crs="EPSG:4326",
            boundary=domain,
            collection="sentinel-2-c1-l2a",
            assets=["red"],
            url=api2.url,
        )
    )
    change_policy(workspace, cfg2)  # the registered source moves with the API (issue 13)

    (cand2,) = discover(workspace, cfg2)
    assert cand2.status == "new" and cand2.asset_status == {"red": "changed"}
    report2 = ingest_from_stac(workspace, cfg2, actor=SYSTEM)
    assert [r.status for r in report2.results] == ["staged"], report2.to_json()
    rows = {r.id: r for r in _items(workspace)}
    assert len(rows) == 2
    second = rows[report2.results[0].item_id or ""]
    assert second.supersedes == first.id
    assert rows[first.id].state == ItemState.superseded
    with (
        rasterio.Env(**workspace.store.gdal_env()),
        rasterio.open(workspace.store.gdal_path("staging", second.object_key)) as ds,
    ):
        data = ds.read(1, masked=True)
    assert data.count() > 0 and int(data.min()) >= 5000  # the new file's values only
    assert discover(workspace, cfg2)[0].status == "ingested"


def test_interrupted_run_resumes_without_duplicates(stac: StacSetup, workspace: Workspace) -> None:
    cfg = _colorado(stac, ["red", "nir"])

    class Interrupted(Exception):
        pass

    def stop_after_first(res: TileResult) -> None:
        raise Interrupted(res.item_id)

    with pytest.raises(Interrupted):
        ingest_from_stac(workspace, cfg, actor=SYSTEM, progress=stop_after_first)
    (done,) = _items(workspace)
    assert done.source_item_id == f"{ES_L2A}/red"

    (cand,) = discover(workspace, cfg)
    assert cand.status == "new" and cand.asset_status == {"red": "ingested", "nir": "new"}
    stac.files.clear_log()
    report = ingest_from_stac(workspace, cfg, actor=SYSTEM)
    assert [r.status for r in report.results] == ["exists", "staged"], report.to_json()
    assert not [
        s for s in stac.files.requests_for(stac.cog_name(ES_L2A, "red")) if s.method == "GET"
    ]
    rows = _items(workspace)
    assert sorted(r.source_item_id or "" for r in rows) == [f"{ES_L2A}/nir", f"{ES_L2A}/red"]

    report3 = ingest_from_stac(workspace, cfg, actor=SYSTEM)
    assert [r.status for r in report3.results] == ["exists", "exists"]
    assert len(_items(workspace)) == 2


def test_failed_asset_is_retried_on_the_next_run(stac: StacSetup, workspace: Workspace) -> None:
    cfg = _colorado(stac, ["red", "nir"])
    stac.files.deny.add(stac.cog_name(ES_L2A, "nir"))  # e.g. an expired signature
    report = ingest_from_stac(workspace, cfg, actor=SYSTEM)
    assert not report.ok
    assert [r.status for r in report.results] == ["staged", "failed"]
    assert "nir.tif" in (report.results[1].error or "")
    assert [c.asset_status for c in discover(workspace, cfg)] == [{"red": "ingested", "nir": "new"}]

    stac.files.deny.clear()
    report2 = ingest_from_stac(workspace, cfg, actor=SYSTEM)
    assert report2.ok, report2.to_json()
    assert [r.status for r in report2.results] == ["exists", "staged"]
    assert len(_items(workspace)) == 2


# ------------------------------------------------------------------ search parameters + errors


def test_search_parameters_follow_the_apis_conformance(stac: StacSetup) -> None:
    cfg = load_config(
        stac.config(
            domain_crs="EPSG:32613",
            boundary=UTM13_DOMAIN,
            collection="sentinel-2-l2a",
            assets=["red"],
            max_cloud_cover=20,
            datetime="2023-01-01/2023-12-31",
            limit=5,
        )
    )
    assert cfg.source is not None
    client = open_client(cfg.source)
    params = search_parameters(client, cfg)
    assert params["collections"] == ["sentinel-2-l2a"]
    assert params["max_items"] == 5 and params["datetime"] == "2023-01-01/2023-12-31"
    assert "query" not in params and "filter" not in params  # rustac declares neither
    # the boundary went out in lon/lat although the domain is in UTM 13N
    lon, lat = shape(params["intersects"]).centroid.coords[0]
    assert -106 < lon < -105 and 40 < lat < 40.2

    client.add_conforms_to("QUERY")
    assert search_parameters(client, cfg)["query"] == {"eo:cloud_cover": {"lt": 20}}
    client.remove_conforms_to("QUERY")
    client.add_conforms_to("FILTER")
    p = search_parameters(client, cfg)
    assert p["filter"] == {"op": "<", "args": [{"property": "eo:cloud_cover"}, 20]}
    assert p["filter_lang"] == "cql2-json"


def test_query_or_filter_the_api_cannot_run_is_refused(
    stac: StacSetup, workspace: Workspace
) -> None:
    for key, value in (
        ("filter", {"op": "=", "args": [{"property": "platform"}, "x"]}),
        ("query", {"platform": {"eq": "sentinel-2a"}}),
    ):
        cfg = load_config(
            stac.config(
                domain_crs="EPSG:32613",
                boundary=UTM13_DOMAIN,
                collection="sentinel-2-l2a",
                assets=["red"],
                **{key: value},
            )
        )
        with pytest.raises(SourceError, match=rf"source\.{key} needs the STAC API") as err:
            discover(workspace, cfg)
        assert stac.api_url in str(err.value)


def test_unreachable_api_error_names_the_url_without_secrets(
    workspace: Workspace, write_config: Callable[..., Path], no_proxy: None
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://reader:hunter2@127.0.0.1:{port}/api?token=s3cr3t"
    cfg = load_config(write_config({"source": {"url": url, "collection": "c", "assets": ["red"]}}))
    with pytest.raises(SourceError) as err:
        discover(workspace, cfg)
    msg = str(err.value)
    assert f"http://127.0.0.1:{port}/api" in msg
    assert "hunter2" not in msg and "s3cr3t" not in msg and "reader" not in msg


@pytest.mark.parametrize("escape", ["next link", "redirect"])
def test_a_stac_api_cannot_send_the_client_to_another_server(
    escape: str, workspace: Workspace, write_config: Callable[..., Path], no_proxy: None
) -> None:
    """The API's answers are untrusted: a `next` link or a redirect to another server
    (here another loopback port standing in for 169.254.169.254) is refused before any
    request goes there, and the error names both servers."""
    with CannedServer() as api, CannedServer() as elsewhere:
        core = "https://api.stacspec.org/v1.0.0/core"
        search = "https://api.stacspec.org/v1.0.0/item-search"
        api.routes["/"] = {
            "type": "Catalog",
            "id": "hostile",
            "description": "links elsewhere",
            "stac_version": "1.0.0",
            "conformsTo": [core, search],
            "links": [
                {"rel": "self", "href": api.base_url + "/"},
                {"rel": "root", "href": api.base_url + "/"},
                {
                    "rel": "search",
                    "href": api.base_url + "/search",
                    "type": "application/geo+json",
                    "method": "POST",
                },
            ],
        }
        stolen = elsewhere.base_url + "/latest/meta-data/iam"
        if escape == "redirect":
            api.routes["/search"] = ("302", stolen)
        else:
            api.routes["/search"] = {
                "type": "FeatureCollection",
                "features": [  # a page with one scene: the client goes on to the next
                    {
                        "type": "Feature",
                        "stac_version": "1.0.0",
                        "id": "scene-1",
                        "collection": "c",
                        "geometry": {"type": "Point", "coordinates": [0.0, 0.0]},
                        "bbox": [0.0, 0.0, 0.0, 0.0],
                        "properties": {"datetime": "2024-06-12T19:03:21Z"},
                        "links": [],
                        "assets": {},
                    }
                ],
                "links": [{"rel": "next", "href": stolen, "method": "GET"}],
            }
        src = {"url": api.base_url + "/", "collection": "c", "assets": ["red"]}
        cfg = load_config(write_config({"source": src}))
        with pytest.raises(SourceError) as err:
            discover(workspace, cfg)
    assert elsewhere.asked == []  # not one request reached the other server
    assert "/search" in api.asked
    msg = str(err.value)
    assert "links to another server" in msg and elsewhere.base_url in msg, msg


def test_config_without_source_is_a_config_error(workspace: Workspace, config: Any) -> None:
    with pytest.raises(ConfigError, match="no `source` section"):
        discover(workspace, config)


def test_scene_without_the_configured_assets_is_reported(
    stac: StacSetup, workspace: Workspace
) -> None:
    cfg = _colorado(stac, ["B99"])
    (cand,) = discover(workspace, cfg)
    assert cand.status == "unavailable" and cand.assets == {} and "red" in cand.offered_assets
    report = ingest_from_stac(workspace, cfg, actor=SYSTEM)
    (res,) = report.results
    assert res.status == "failed" and "B99" in (res.error or "") and "red" in (res.error or "")
    assert _items(workspace) == []


# ------------------------------------------------------------------ CLI


def test_cli_discover_and_ingest_from_stac(stac: StacSetup, workspace: Workspace) -> None:
    path = stac.config(
        domain_crs="EPSG:32613", boundary=UTM13_DOMAIN, collection="sentinel-2-l2a", assets=["red"]
    )
    runner = CliRunner()

    out = runner.invoke(cli, ["discover", str(path), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["counts"] == {"new": 1}
    assert [c["item_id"] for c in data["candidates"]] == [ES_L2A]

    dry = runner.invoke(cli, ["ingest", "--from-stac", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert ES_L2A in dry.output and _items(workspace) == []

    out = runner.invoke(cli, ["ingest", "--from-stac", str(path), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["counts"] == {"staged": 1}
    out = runner.invoke(cli, ["ingest", "--from-stac", str(path), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["counts"] == {"exists": 1}

    text = runner.invoke(cli, ["discover", str(path)])
    assert text.exit_code == 0 and "ingested" in text.output

    # RASTERS and --from-stac are two different ways in
    bad = runner.invoke(cli, ["ingest", str(path)])
    assert bad.exit_code == 2 and "--from-stac" in bad.output
    bad = runner.invoke(cli, ["ingest", "--from-stac", str(path), "x.tif"])
    assert bad.exit_code == 2 and "RASTERS" in bad.output


def test_cli_discover_without_source_section_fails_clearly(
    config_path: Path, workspace: Workspace
) -> None:
    out = CliRunner().invoke(cli, ["discover", str(config_path)])
    assert out.exit_code == 2
    assert "no `source` section" in out.output


def test_domain_geojson_is_lon_lat(write_config: Callable[..., Path]) -> None:
    cfg = load_config(
        write_config({"spatial_domain": {"crs": "EPSG:32613", "boundary_wkt": UTM13_DOMAIN}})
    )
    geo = domain_geojson(cfg)
    assert geo["type"] == "Polygon"
    xs = [x for x, _ in geo["coordinates"][0]]
    ys = [y for _, y in geo["coordinates"][0]]
    assert -106 < min(xs) < max(xs) < -105 and 40 < min(ys) < max(ys) < 40.3
    # densified edges: more vertices than the 5 of the UTM polygon
    assert len(xs) > 5
    assert yaml.safe_dump(geo)  # plain types


def test_cli_ingest_of_rasters_is_unchanged(
    config_path: Path, s2_tile: Path, workspace: Workspace
) -> None:
    """The --from-stac path leaves `geomesh ingest CONFIG RASTERS` as it was."""
    out = CliRunner().invoke(cli, ["ingest", str(config_path), str(s2_tile), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["counts"] == {"staged": 1}
    (row,) = _items(workspace)
    assert row.source_item_id is None and row.source_etag is None
    assert _link(row.stac, "derived_from") == [row.source]


def test_parallel_remote_ingest_equals_a_serial_one(
    stac: StacSetup, workspace: Workspace, tmp_path: Path
) -> None:
    """Issue 19: the assets' file work runs on several threads (auto), staging stays in
    discovery order in the caller: the same results, rows and objects as one at a time."""
    from geomesh.settings import Settings

    cfg = _colorado(stac, ["red", "nir"])

    def snapshot(ws: Workspace) -> list[tuple[Any, ...]]:
        """What does not depend on the backend (asset hrefs name the store)."""
        return [
            (
                r.id,
                r.content_digest,
                r.source_item_id,
                r.source_etag,
                r.state.value,
                json.dumps(
                    {k: r.stac.get(k) for k in ("properties", "geometry", "bbox")},
                    sort_keys=True,
                ),
            )
            for r in sorted(_items(ws), key=lambda r: r.id)
        ]

    serial_root = tmp_path / "serial"  # its own database and store, whatever the backend
    serial_ws = Workspace.open(
        Settings(
            storage_root=serial_root,
            database_url=f"sqlite:///{serial_root / 'geomesh.db'}",
            object_store="local",
            schema_dir=workspace.settings.schema_dir,
        )
    )
    try:
        serial = ingest_from_stac(serial_ws, cfg, actor=SYSTEM, workers=1)
        want = snapshot(serial_ws)
        want_objects = sorted(serial_ws.store.list("staging"))
    finally:
        serial_ws.close()
    threaded = ingest_from_stac(workspace, cfg, actor=SYSTEM)  # auto: one thread per asset
    assert [(r.status, r.item_id, r.source) for r in threaded.results] == [
        (r.status, r.item_id, r.source) for r in serial.results
    ]
    assert [r.status for r in threaded.results] == ["staged", "staged"]
    assert snapshot(workspace) == want
    assert sorted(workspace.store.list("staging")) == want_objects


def test_discover_asks_the_identity_heads_at_once(stac: StacSetup, workspace: Workspace) -> None:
    """Issue 19: an asset's identity HEAD waits on the network; discover asks them all
    together, so a remote store's time to first byte is paid once, not once per asset."""
    cfg = _colorado(stac, ["red", "nir"])
    stac.files.latency_s = 0.3  # long enough that HEADs asked one after another never overlap
    (cand,) = discover(workspace, cfg)
    heads = [s.path for s in stac.files.log() if s.method == "HEAD"]
    assert sorted(heads) == sorted(f"/{stac.cog_name(ES_L2A, k)}" for k in ("red", "nir"))
    assert stac.files.peak_concurrency("HEAD") == 2
    for key in ("red", "nir"):  # each answer lands on its own asset
        assert cand.identities[key] == "etag:" + stac.files.etag(stac.cog_path(ES_L2A, key))
    assert cand.asset_status == {"red": "new", "nir": "new"}
