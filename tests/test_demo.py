"""The generated San Francisco demo, tile previews and the app's sign-in service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rasterio
import shapely
from click.testing import CliRunner
from shapely import wkt
from shapely.geometry import shape
from sqlmodel import col, func, select

from geomesh import demo
from geomesh.cli import cli
from geomesh.errors import PermissionDenied, RasterError
from geomesh.models import AuditEvent, Release
from geomesh.preview import item_preview
from geomesh.services import auth_session, history, promotion, queries
from geomesh.workspace import Workspace

pytest_plugins = ("_app_fixtures",)
PID = demo.PRODUCT_ID


def _events(ws: Workspace) -> int:
    with ws.read() as s:
        return int(s.exec(select(func.count()).select_from(AuditEvent)).one())


def _by_state(ws: Workspace) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for item in queries.list_items(ws, product_id=PID):
        out.setdefault(str(item["state"]), []).append(item)
    return out


def _rules(ws: Workspace, item_id: str) -> set[tuple[str, str]]:
    t = queries.findings_table(ws, item_id=item_id)
    return set(zip(t["rule_id"], t["severity"], strict=True))


def test_seed_builds_every_case_the_app_shows(workspace: Workspace) -> None:
    report = demo.seed(workspace)
    assert report.seeded and report.releases == ["1.0.0", "1.1.0"]
    states = {k: len(v) for k, v in _by_state(workspace).items()}
    assert states == {
        "production": 6, "superseded": 1, "validation": 4, "quarantined": 2, "rolled_back": 1,
    }  # fmt: skip
    items = report.items
    assert ("GM-CRS-001", "P2") in _rules(workspace, items["no_crs"])
    assert ("GM-CRS-002", "P2") in _rules(workspace, items["wrong_projection"])
    assert ("GM-BOUNDARY-001", "P1") in _rules(workspace, items["outside"])
    assert ("GM-CHECKSUM-003", "P1") in _rules(workspace, items["corrupted"])
    # the corrupted tile is approved, but the promotion gates hold it back
    plan = promotion.plan_promotion(workspace, demo.demo_config(), [items["corrupted"]])
    reasons = " ".join(plan.items[0].reasons)
    assert "checksum" in reasons and "signoff" not in reasons
    # a reprocessed tile awaits review against its production version
    counterpart = queries.production_counterpart(
        workspace, items["pending:S2B_MSIL2A_20240612_T10SEG_r0c0"]
    )
    assert counterpart is not None and "assets.data.file:checksum" in counterpart["changes"]
    diff = history.diff_releases(workspace, PID, "1.0.0", "1.1.0")
    assert len(diff.added) == 2 and len(diff.changed) == 1


def test_seed_is_idempotent_and_if_empty_skips(demo_workspace: Workspace) -> None:
    before, items = _events(demo_workspace), queries.list_items(demo_workspace, product_id=PID)
    again = demo.seed(demo_workspace)
    assert again.seeded and again.releases == ["1.0.0", "1.1.0"]
    assert _events(demo_workspace) == before
    assert queries.list_items(demo_workspace, product_id=PID) == items
    skipped = demo.seed(demo_workspace, if_empty=True)
    assert not skipped.seeded and _events(demo_workspace) == before
    with demo_workspace.read() as s:
        assert len(s.exec(select(Release)).all()) == 2


def test_cli_demo_seed_if_empty(settings: object) -> None:
    runner = CliRunner()
    first = runner.invoke(cli, ["demo", "seed", "--if-empty", "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["seeded"] is True
    second = runner.invoke(cli, ["demo", "seed", "--if-empty"])
    assert second.exit_code == 0 and "not seeding" in second.stdout


def test_demo_tiles_are_sentinel2_like_utm_tiles(tmp_path: Path) -> None:
    path = demo.write_tile(demo.RELEASE_1[0], tmp_path / "t.tif")
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 32610 and ds.count == 4 and ds.dtypes[0] == "uint16"
        assert ds.width == ds.height == demo.TILE_PX and ds.res == (10.0, 10.0)
        assert ds.descriptions == ("B02", "B03", "B04", "B08")
        data = ds.read()
    assert data.min() >= 1 and data.max() <= 10000
    water, land = data[3][0, 0], data[3][-1, -1]  # NIR: dark water in the NW corner
    assert water < 500 < land
    nocrs = demo.write_tile(demo.NO_CRS, tmp_path / "n.tif")
    with rasterio.open(nocrs) as ds:
        assert ds.crs is None


def test_demo_boundary_matches_san_francisco(shared_dir: Path) -> None:
    """The hand-simplified outline against the DataSF neighbourhood polygons."""
    path = (
        shared_dir / "data" / "boundaries" / "click_that_hood__san-francisco-neighborhoods.geojson"
    )
    hoods = json.loads(path.read_text())["features"]
    city = shapely.unary_union([shape(f["geometry"]) for f in hoods])
    outline = wkt.loads(demo.SF_BOUNDARY_WKT)
    iou = outline.intersection(city).area / outline.union(city).area
    assert iou > 0.85, iou


# ------------------------------------------------------------------ previews


def test_preview_is_a_png_over_the_tile_and_cached(demo_workspace: Workspace) -> None:
    item = queries.list_items(demo_workspace, product_id=PID, state="production")[0]
    pv = item_preview(demo_workspace, str(item["id"]))
    assert pv.png.startswith(b"\x89PNG") and not pv.cached and pv.bands == (3, 2, 1)
    assert pv.bounds is not None
    west, south, east, north = pv.bounds
    bbox = (
        item["stac"]["bbox"]
        if "stac" in item
        else queries.get_item(demo_workspace, str(item["id"]))["stac"]["bbox"]
    )
    assert west == pytest.approx(bbox[0], abs=1e-3) and north == pytest.approx(bbox[3], abs=1e-3)
    assert demo_workspace.store.exists("meta", f"previews/{item['id']}/512.png")
    again = item_preview(demo_workspace, str(item["id"]))
    assert again.cached and again.png == pv.png and again.bounds == pv.bounds


def test_preview_without_crs_is_not_placed_and_corrupt_objects_fail_clearly(
    demo_workspace: Workspace,
) -> None:
    quarantined = queries.list_items(demo_workspace, product_id=PID, state="quarantined")
    nocrs = next(i for i in quarantined if "nocrs" in str(i["source"]))
    pv = item_preview(demo_workspace, str(nocrs["id"]))
    assert pv.bounds is None and pv.leaflet_bounds is None and pv.png.startswith(b"\x89PNG")
    corrupt = next(
        q for q in queries.review_queue(demo_workspace, PID) if q["checksum"] == "MISMATCH"
    )
    with pytest.raises(RasterError, match="cannot render a preview"):
        item_preview(demo_workspace, corrupt["id"])


# ------------------------------------------------------------------ sign-in service


def test_demo_users_sign_in_with_the_documented_passwords(demo_workspace: Workspace) -> None:
    for user in demo.USERS:
        signed = auth_session.sign_in(demo_workspace, user.name, f"geomesh-{user.name}")
        assert signed.role == user.role and signed.display_name == user.display_name
    with pytest.raises(PermissionDenied, match="wrong password"):
        auth_session.sign_in(demo_workspace, "steward", "geomesh-viewer")
    with demo_workspace.read() as s:
        last = s.exec(select(AuditEvent).order_by(col(AuditEvent.seq).desc())).first()
    assert last is not None and last.action == "auth.sign_in_failed" and last.actor == "anonymous"


def test_sso_never_maps_an_email_by_its_local_part(demo_workspace: Workspace) -> None:
    """Demo users have no registered e-mail: a verified ``steward@…`` is not the steward
    (the old local-part mapping let anyone who registers that address in).
    tests/test_identity.py covers SSO with registered e-mails."""
    for email in ("steward2@example.org", "Steward@Example.org", "mallory@example.org"):
        with pytest.raises(PermissionDenied, match="no geomesh account"):
            auth_session.sign_in_sso(demo_workspace, {"email": email, "email_verified": True})
    with pytest.raises(PermissionDenied):
        auth_session.sign_in_sso(demo_workspace, {})
    assert auth_session.can(demo_workspace, "steward", "signoff")
    assert not auth_session.can(demo_workspace, "analyst", "signoff")
