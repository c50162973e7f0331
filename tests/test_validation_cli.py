"""`geomesh validate|rules|remediate|schemas sync|quarantine|outbox` through the real CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import identity_support
import pytest
from click.testing import CliRunner, Result
from policy_support import change_policy

from geomesh.cli import cli
from geomesh.config import load_config
from geomesh.hashing import sha256_file
from geomesh.raster import inspect, write_cog
from geomesh.settings import Settings
from geomesh.stac import build_item, item_to_dict
from geomesh.workspace import Workspace

DATED = {"TIFFTAG_DATETIME": "2024:06:12 19:03:21"}
FULL = {"platform": "sentinel-2b", "instruments": ["msi"], "processing_level": "L2A"}


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture
def full_config(write_config: Callable[..., Path]) -> Path:
    return write_config({"product_metadata": FULL}, name="full.yaml")


@pytest.fixture
def local_item(
    tmp_path: Path, make_raster: Callable[..., Path], full_config: Path
) -> Callable[..., Path]:
    """A geomesh-built item JSON next to its COG (relative asset href)."""

    def make(name: str = "tile", **raster: Any) -> Path:
        cfg = load_config(full_config)
        folder = tmp_path / f"items-{name}"
        folder.mkdir()
        src = make_raster(f"{name}.tif", width=128, height=128, count=1, **raster)
        cog = folder / f"{name}.cog.tif"
        write_cog(src, cog, cfg)
        digest, size = sha256_file(cog)
        item = build_item(
            config=cfg,
            info=inspect(cog, domain_crs=cfg.spatial_domain.crs),
            hexdigest=digest,
            size=size,
            asset_href=cog.name,
            acquired=datetime(2024, 6, 12, tzinfo=UTC),
        )
        out = folder / f"{name}.json"
        out.write_text(json.dumps(item_to_dict(item)))
        return out

    return make


# ------------------------------------------------------------------ validate


def test_validate_shared_items_folder(settings: Settings, shared_dir: Path) -> None:
    result = invoke("validate", str(shared_dir / "data/stac-items"), "--json")
    data = json.loads(result.output)
    assert result.exit_code == 2 == data["summary"]["exit_code"]  # real P2 schema violations
    assert data["summary"]["counts"]["P1"] == 0
    by_name = {Path(f["file"]).name: f for f in data["files"]}
    titiler = by_name["S2A_34SGA_20200318_0_L2A.item.json"]["findings"]
    assert [(f["rule_id"], f["path"]) for f in titiler] == [("GM-SCHEMA-001", "collection")]
    assert by_name["simple-item.json"]["findings"] == []


def test_validate_exit_codes(
    settings: Settings, shared_dir: Path, local_item: Callable[..., Path], full_config: Path
) -> None:
    clean = local_item("clean")
    assert invoke("validate", str(clean)).exit_code == 0
    assert invoke("validate", str(clean), "--config", str(full_config)).exit_code == 0
    es = shared_dir / "data/stac-items/earth-search-v1/sentinel-2-l2a/S2A_13TDE_20231008_0_L2A.json"
    p3 = invoke("validate", str(es))
    assert p3.exit_code == 1 and "GM-CRS-003" in p3.output and "fix:" in p3.output
    assert invoke("validate", str(es), "--strict").exit_code == 2
    far = local_item("far", origin=(245000.0, 4185000.0))
    outside = invoke("validate", str(far), "--config", str(full_config))
    assert outside.exit_code == 3 and "GM-BOUNDARY-001" in outside.output
    assert invoke("validate", str(far)).exit_code == 0  # no config: no boundary rule


def test_validate_checks_the_local_raster(
    settings: Settings, local_item: Callable[..., Path]
) -> None:
    item = local_item("tampered")
    cog = item.with_name("tampered.cog.tif")
    cog.write_bytes(cog.read_bytes() + b"\x00")  # one extra byte
    result = invoke("validate", str(item), "--json")
    rules = {f["rule_id"] for f in json.loads(result.output)["files"][0]["findings"]}
    assert {"GM-CHECKSUM-003", "GM-CHECKSUM-004"} <= rules and result.exit_code == 3


def test_validate_bad_input_gives_findings_not_tracebacks(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "broken.json").write_text('{"type": "Feature", ')
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "types.json").write_text(json.dumps({"type": "Feature", "properties": []}))
    result = invoke("validate", str(tmp_path), "--json")
    assert result.exit_code == 2
    files = {Path(f["file"]).name: f["findings"] for f in json.loads(result.output)["files"]}
    assert files["broken.json"][0]["rule_id"] == "GM-JSON-001"
    assert files["list.json"][0]["rule_id"] == "GM-JSON-001"
    assert {f["rule_id"] for f in files["types.json"]} == {"GM-SCHEMA-001"}
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = invoke("validate", str(empty))
    assert nothing.exit_code == 2 and "no .json files" in nothing.output


def test_validate_bad_config_is_one_clear_error(
    settings: Settings, local_item: Callable[..., Path], write_config: Callable[..., Path]
) -> None:
    cfg = write_config({"validation": {"disabled_rules": ["GM-NOPE-9"]}}, name="bad.yaml")
    result = invoke("validate", str(local_item()), "--config", str(cfg))
    assert result.exit_code == 2 and "GM-NOPE-9" in result.output


def test_rules_lists_the_registry_with_product_severities(
    settings: Settings, write_config: Callable[..., Path]
) -> None:
    cfg = write_config(
        {
            "validation": {
                "severity_overrides": {"GM-BOUNDARY-002": "P1"},
                "disabled_rules": ["GM-COG-003"],
            }
        }
    )
    rows = {r["id"]: r for r in json.loads(invoke("rules", "--config", str(cfg), "--json").output)}
    assert rows["GM-BOUNDARY-002"]["severity"] == "P1"
    assert rows["GM-BOUNDARY-002"]["default_severity"] == "P3"
    assert rows["GM-COG-003"]["enabled"] is False


# ------------------------------------------------------------------ catalog commands


def _prove_as_steward(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The state-changing commands that follow act as the steward `sam`, proven by a token."""
    identity_support.add_users(ws, {"sam": "steward"})
    monkeypatch.setenv("GEOMESH_TOKEN", identity_support.token_env(ws, "sam")["GEOMESH_TOKEN"])


def _ingest(config: Path, raster: Path) -> str:
    result = invoke("ingest", str(config), str(raster), "--json")
    (res,) = json.loads(result.output)["results"]
    assert res["item_id"], result.output
    return str(res["item_id"])


def test_quarantine_commands(
    settings: Settings,
    config_path: Path,
    make_raster: Callable[..., Path],
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from geomesh.services.pipeline import validate_and_route

    item_id = _ingest(
        config_path, make_raster("n.tif", width=64, height=64, count=1, crs=None, tags=DATED)
    )
    ws = Workspace.open(settings)
    try:
        validate_and_route(ws, load_config(config_path), item_id, actor="system")  # if not wired
        _prove_as_steward(ws, monkeypatch)
    finally:
        ws.close()
    listed = json.loads(invoke("quarantine", "list", "--json").output)
    assert [r["id"] for r in listed] == [item_id]
    shown = invoke("quarantine", "show", item_id)
    assert "GM-CRS-001" in shown.output and "quarantine" in shown.output
    blocked = invoke("quarantine", "release", str(config_path), item_id)
    assert blocked.exit_code == 2 and "still has open" in blocked.output
    fixed = write_config(
        {"validation": {"severity_overrides": {"GM-CRS-001": "P3", "GM-CONTRACT-001": "P3"}}},
        name="fixed.yaml",
    )
    ws = Workspace.open(settings)
    try:
        change_policy(ws, load_config(fixed))  # the registered policy changes (issue 13)
    finally:
        ws.close()
    reval = json.loads(invoke("quarantine", "revalidate", str(fixed), item_id, "--json").output)
    assert reval["releasable"] is True
    assert invoke("quarantine", "release", str(fixed), item_id).output.strip().endswith("staging")
    missing = invoke("quarantine", "discard", item_id)
    assert missing.exit_code == 2  # --reason is required


def test_remediate_and_outbox_commands(
    settings: Settings,
    write_config: Callable[..., Path],
    make_raster: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from geomesh.models import Item

    cfg_path = write_config(
        {"governance": {"escalation": [{"name": "ops", "url": "http://127.0.0.1:9/none"}]}}
    )
    item_id = _ingest(cfg_path, make_raster("t.tif", width=64, height=64, count=1, tags=DATED))
    ws = Workspace.open(settings)
    try:
        with ws.transaction() as s:  # test set-up: a broken tool dropped proj:bbox
            item = s.get(Item, item_id)
            assert item is not None
            stac = {**item.stac, "properties": dict(item.stac["properties"])}
            del stac["properties"]["proj:bbox"]
            item.stac = stac
            s.add(item)
        _prove_as_steward(ws, monkeypatch)
    finally:
        ws.close()
    rem = invoke("remediate", str(cfg_path), item_id, "--json")
    assert rem.exit_code == 0, rem.output
    data = json.loads(rem.output)
    assert data["fields"] == ["proj:bbox"] and data["route"]["state"] == "validation"
    assert data["route"]["outbox_ids"]  # the P3 warning escalates to the 'ops' target
    listed = json.loads(invoke("outbox", "list", "--json").output)
    assert listed and {r["status"] for r in listed} == {"pending"}
    assert "secret" not in json.dumps(listed)
    delivered = invoke("outbox", "deliver", "--timeout", "0.5", "--json")
    assert json.loads(delivered.output)["retrying"]  # nothing listens on port 9
    assert invoke("outbox", "retry").exit_code == 2  # ids or --all
    assert "0 message(s)" in invoke("outbox", "retry", "--all").output  # none failed yet


# ------------------------------------------------------------------ schemas sync


def test_schemas_sync_command(
    settings: Settings, tmp_path: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import http.server
    import shutil
    import threading

    mirror = tmp_path / "mirror"
    shutil.copytree(
        shared_dir / "stac-schemas" / "stac-extensions.github.io",
        mirror / "stac-extensions.github.io",
    )
    shutil.copytree(shared_dir / "stac-schemas" / "geojson.org", mirror / "geojson.org")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, directory=str(mirror), **k)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        store = tmp_path / "store"
        item = shared_dir / "data/stac-items/stac-spec-examples/v1.1.0/extended-item.json"
        result = invoke(
            "schemas",
            "sync",
            str(item),
            "--store",
            str(store),
            "--mirror",
            f"http://127.0.0.1:{server.server_address[1]}",
            "--json",
        )
    finally:
        server.shutdown()
        server.server_close()
    data = json.loads(result.output)
    assert "https://stac-extensions.github.io/eo/v2.0.0/schema.json" in data["fetched"]
    # the core schema is not on this mirror: reported, and the exit status says so
    assert any("schemas.stacspec.org" in u for u in data["failed"]) and result.exit_code == 1
    assert (store / "stac-extensions.github.io/projection/v2.0.0/schema.json").is_file()
