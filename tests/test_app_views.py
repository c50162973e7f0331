"""Read views of the review app: map, findings (50,000 rows), audit, ingest and errors."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from _app_helpers import K, app_as, no_exception, texts
from sqlalchemy import insert, text
from streamlit.testing.v1 import AppTest

from geomesh.models import FindingRecord, Item, ValidationRun
from geomesh.services import queries
from geomesh.services.pipeline import ingest_rasters
from geomesh.workspace import Workspace
from ui import maps

pytest_plugins = ("_app_fixtures",)
PID = "sf-sentinel2-l2a"


def _folium_args(at: AppTest) -> dict[str, object]:
    comps = [c for c in at.get("component_instance") if "st_folium" in c.proto.component_name]
    assert len(comps) == 1
    return dict(json.loads(comps[0].proto.json_args))


# ------------------------------------------------------------------ map


def test_map_draws_boundary_and_every_footprint_in_one_layer(demo_workspace: Workspace) -> None:
    at = app_as("viewer", "pages/map.py")
    no_exception(at)
    args = _folium_args(at)
    script = str(args["script"])
    layer = queries.map_layer(demo_workspace, PID)
    assert layer.shown == 11 and layer.without_footprint  # the no-CRS tile has no footprint
    for f in layer.features["features"]:
        assert f["properties"]["item_id"] in script
    assert script.count("L.geoJson(") == 2  # the boundary + ONE layer for all footprints
    # offline: Leaflet from the app's static folder, nothing from a CDN
    assert args["js_links"] == ["/app/static/vendor/leaflet-1.9.3/leaflet.js"]
    assert args["css_links"] == ["/app/static/vendor/leaflet-1.9.3/leaflet.css"]
    assert "tile.openstreetmap" not in script and "L.tileLayer" not in script
    assert any("11 of 12 tiles drawn" in t for t in texts(at.caption))


def test_selecting_a_tile_shows_details_and_overlays_its_preview(demo_workspace: Workspace) -> None:
    prod = queries.list_items(demo_workspace, product_id=PID, state="production")[0]["id"]
    at = app_as("viewer", "pages/map.py")
    at.selectbox(key=K.MAP_ITEM).set_value(prod).run()
    no_exception(at)
    assert any(prod.replace("-", "\\-") in t for t in texts(at.markdown))
    assert len(at.get("image")) == 1  # the rio-tiler preview beside the map
    script = str(_folium_args(at)["script"])
    assert "L.imageOverlay(" in script and "data:image/png;base64," in script
    at.toggle(key=K.MAP_PREVIEW).set_value(False).run()
    assert "L.imageOverlay(" not in str(_folium_args(at)["script"])


def test_map_colours_by_severity_and_filters_states(demo_workspace: Workspace) -> None:
    at = app_as("viewer", "pages/map.py")
    at.radio(key=K.MAP_COLOUR).set_value("severity").run()
    script = str(_folium_args(at)["script"])
    assert "worst severity" in script and "blocking: rolled back" in script  # corrupted r2c2
    assert "quarantined until fixed" in script
    at.multiselect(key=K.MAP_STATES).set_value(["rolled_back"]).run()
    no_exception(at)
    script = str(_folium_args(at)["script"])
    assert "blocking: rolled back" in script and "quarantined until fixed" not in script
    assert any("1 of 1 tiles drawn" in t for t in texts(at.caption))


def test_the_cached_map_follows_every_catalog_change(demo_workspace: Workspace) -> None:
    from geomesh.services import quarantine

    at = app_as("viewer", "pages/map.py")
    assert any("11 of 12 tiles drawn" in t for t in texts(at.caption))
    at.run()  # a rerun is served from the cache, unchanged
    assert any("11 of 12 tiles drawn" in t for t in texts(at.caption))
    provider = next(
        i["id"]
        for i in queries.list_items(demo_workspace, product_id=PID, state="quarantined")
        if str(i["id"]).endswith("-provider")
    )
    quarantine.discard(demo_workspace, provider, actor="analyst", reason="wrong projection")
    at.run()
    assert any("10 of 11 tiles drawn" in t for t in texts(at.caption))


def test_tooltip_values_are_escaped(
    workspace: Workspace, config_path: Path, make_raster: Callable[..., Path]
) -> None:
    from geomesh.config import load_config

    evil = make_raster('<img src=x onerror="alert(1)">.tif')
    ingest_rasters(workspace, load_config(config_path), [evil], actor="system")
    layer = queries.map_layer(workspace, "sentinel2-msi-l2a-v2.1", states=["staging", "validation"])
    props = layer.features["features"][0]["properties"]
    assert props["tip_source"] == html.escape('<img src=x onerror="alert(1)">.tif')
    fmap = maps.build_map(
        layer, {"type": "Point", "coordinates": [-122.4, 37.8]}, [-122.5, 37.7, -122.3, 37.9]
    )
    page = fmap.get_root().render()
    assert "<img src=x" not in page and 'onerror="alert' not in page
    # a product title with markup is text in the legend too
    titled = maps.build_map(
        layer, {"type": "Point", "coordinates": [-122.4, 37.8]}, [-122.5, 37.7, -122.3, 37.9],
        boundary_label="<script>alert(1)</script>",
    )  # fmt: skip
    legend = next(c for c in titled._children.values() if isinstance(c, maps.Legend))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in legend.html and "<script>" not in legend.html


def test_map_layer_caps_and_simplifies_many_footprints(demo_workspace: Workspace) -> None:
    layer = queries.map_layer(demo_workspace, PID, max_features=3)
    assert layer.shown == 3 and layer.capped and layer.total == 12
    # worst first: the capped view keeps the tiles with P1 and P2 findings
    worst = [f["properties"]["worst"] for f in layer.features["features"]]
    assert worst[:2] == ["P1", "P2"]
    ring = layer.features["features"][0]["geometry"]["coordinates"][0]
    assert len(ring) <= 6  # a densified rectangle simplified back to its corners


def test_map_stays_one_layer_with_5000_footprints(demo_workspace: Workspace) -> None:
    with demo_workspace.read() as s:
        template = s.get(Item, queries.list_items(demo_workspace, product_id=PID)[0]["id"])
        assert template is not None
        base = template.model_dump()
    rows = []
    for n in range(5000):
        stac = dict(base["stac"])
        dx, dy = (n % 100) * 0.001, (n // 100) * 0.001
        stac["geometry"] = {
            "type": "Polygon",
            "coordinates": [[[-122.5 + dx, 37.7 + dy], [-122.499 + dx, 37.7 + dy],
                             [-122.499 + dx, 37.701 + dy], [-122.5 + dx, 37.7 + dy]]],
        }  # fmt: skip
        rows.append({**base, "id": f"{PID}-bulk{n:05d}", "stac": stac, "state": "staging"})
    with demo_workspace.transaction() as s:
        s.execute(insert(Item), rows)
    layer = queries.map_layer(demo_workspace, PID)
    assert layer.shown == 5000 and layer.capped
    fmap = maps.build_map(
        layer,
        queries.boundary_geojson(queries.product_config(demo_workspace, PID)),
        [-122.52, 37.7, -122.35, 37.82],
    )
    page = fmap.get_root().render()
    assert page.count("L.geoJson(") == 2


# ------------------------------------------------------------------ findings


def test_findings_filter_by_severity_rule_and_state(demo_workspace: Workspace) -> None:
    at = app_as("analyst", "pages/findings.py")
    total = at.dataframe[0].value
    assert len(total) == 18 and set(total.columns) >= {"path", "message", "remediation"}
    at.multiselect(key=K.F_SEVERITY).set_value(["P1"]).run()
    p1 = at.dataframe[0].value
    assert sorted(p1["rule_id"]) == ["GM-BOUNDARY-001", "GM-CHECKSUM-003"]
    at.multiselect(key=K.F_SEVERITY).set_value([]).run()
    at.multiselect(key=K.F_RULE).set_value(["GM-CRS-002"]).run()
    crs = at.dataframe[0].value
    assert list(crs["path"]) == ["properties.proj:code"] and "EPSG:26910" in crs["message"][0]
    at.multiselect(key=K.F_RULE).set_value([]).run()
    at.multiselect(key=K.F_STATE).set_value(["quarantined"]).run()
    assert set(at.dataframe[0].value["state"]) == {"quarantined"}
    no_exception(at)


def test_findings_export_csv_and_json_hold_the_filtered_rows(demo_workspace: Workspace) -> None:
    table = queries.findings_table(demo_workspace, product_id=PID, severities=["P1"])
    lines = queries.findings_csv(table).splitlines()
    assert lines[0].startswith("item_id,product_id,state,severity,rule_id,path,message")
    assert len(lines) == 3
    rows = json.loads(queries.findings_json(table))
    assert [r["severity"] for r in rows] == ["P1", "P1"]
    assert {"path", "message", "remediation"} <= set(rows[0])


def test_findings_page_handles_50000_findings(demo_workspace: Workspace) -> None:
    item_id = queries.list_items(demo_workspace, product_id=PID, state="quarantined")[0]["id"]
    with demo_workspace.transaction() as s:
        run = ValidationRun(item_id=item_id, content_digest="0" * 64, passed=False, actor="analyst")
        s.add(run)
        s.flush()
        s.execute(
            insert(FindingRecord),
            [
                {"run_id": run.id, "item_id": item_id, "product_id": PID,
                 "rule_id": f"GM-BULK-{n % 7:03d}", "severity": ("P1", "P2", "P3")[n % 3],
                 "path": f"properties.field{n}", "message": f"synthetic finding {n}",
                 "remediation": "none", "context": {}, "open": True, "created_at": run.created_at}
                for n in range(50_000)
            ],
        )  # fmt: skip
    at = app_as("analyst", "pages/findings.py")
    no_exception(at)
    # one page is loaded, the total and the per-severity counts come from SQL
    assert len(at.dataframe[0].value) == queries.FINDINGS_PAGE_SIZE
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Findings"] == "50018"
    assert int(metrics["P1"]) == len(range(0, 50_000, 3)) + 2  # + the demo's two P1 findings
    at.number_input(key=K.F_PAGE).set_value(2).run()
    second = at.dataframe[0].value
    assert len(second) == queries.FINDINGS_PAGE_SIZE
    assert list(second["severity"][:1]) == ["P1"]  # worst first, across pages
    at.multiselect(key=K.F_RULE).set_value(["GM-BULK-003"]).run()
    bulk = len([n for n in range(50_000) if n % 7 == 3])
    assert {m.label: m.value for m in at.metric}["Findings"] == str(bulk)
    assert len(at.dataframe[0].value) == queries.FINDINGS_PAGE_SIZE
    exported = queries.export_findings(demo_workspace, product_id=PID, rules=["GM-BULK-003"])
    assert exported.count("\n") == bulk + 1  # the export holds every filtered row


# ------------------------------------------------------------------ audit


def test_audit_shows_verified_chain_and_searches(demo_workspace: Workspace) -> None:
    at = app_as("viewer", "pages/audit.py")
    assert any(t.startswith("Chain verified") for t in texts(at.success))
    at.text_input(key=K.A_TEXT).input("rollback").run()
    rows = at.dataframe[0].value
    assert len(rows) >= 1
    assert all(
        "rollback" in f"{a} {t} {b}"
        for a, t, b in zip(rows["action"], rows["target"], rows["actor"], strict=True)
    )
    assert (
        queries.audit_jsonl(demo_workspace).count("\n")
        == queries.audit_chain_status(demo_workspace)["events"]
    )


def test_audit_page_reports_a_tampered_chain(demo_workspace: Workspace) -> None:
    with demo_workspace.engine.begin() as conn:
        conn.execute(text("UPDATE auditevent SET actor = 'mallory' WHERE seq = 3"))
    at = app_as("viewer", "pages/audit.py")
    no_exception(at)
    assert any(t.startswith("Chain broken") for t in texts(at.error))
    problems = at.dataframe[0].value["problem"]
    assert any("#3" in p and "edited" in p for p in problems)


# ------------------------------------------------------------------ ingest


def test_ingest_dry_run_then_ingest_with_progress(
    demo_workspace: Workspace, make_raster: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    when = {"TIFFTAG_DATETIME": "2024:09:01 19:00:00"}
    good = make_raster(
        "S2B_extra.tif", width=256, height=256, origin=(548000.0, 4181000.0), tags=when
    )
    nocrs = make_raster("S2B_extra_nocrs.tif", width=256, height=256, crs=None, tags=when)
    monkeypatch.setenv("GEOMESH_IMPORT_DIRS", str(good.parent))  # typed paths: import dirs only
    at = app_as("steward", "pages/ingest.py")
    at.text_area(key=K.I_PATHS).input(f"{good}\n{nocrs}\n").run()
    at.button(key=K.I_DRY_RUN).click().run()
    no_exception(at)
    dry = at.dataframe[0].value
    assert list(dry["status"]) == ["would-stage", "would-stage"]
    assert all(k.startswith("sha256/") for k in dry["would write object"])
    assert all(k.startswith(f"items/{PID}/") for k in dry["would write item"])
    assert list(dry["route"]) == ["proceed", "quarantine"]
    assert dry["findings"][1]["P2"] >= 1
    before = len(queries.list_items(demo_workspace, product_id=PID))
    assert before == 14  # the dry run wrote nothing
    at.button(key=K.I_INGEST).click().run()
    no_exception(at)
    assert any(t.startswith("Ingested:") for t in texts(at.success)), texts(at.error)
    assert at.get("status")  # the st.status box with the progress bar
    assert len(queries.list_items(demo_workspace, product_id=PID)) == before + 2
    assert len(queries.list_items(demo_workspace, product_id=PID, state="validation")) == 5
    assert len(queries.list_items(demo_workspace, product_id=PID, state="quarantined")) == 3


def test_analyst_dry_run_is_refused(
    demo_workspace: Workspace, make_raster: Callable[..., Path]
) -> None:
    at = app_as("analyst", "pages/ingest.py")
    at.text_area(key=K.I_PATHS).input(str(make_raster(width=64, height=64))).run()
    at.button(key=K.I_DRY_RUN).click().run()
    no_exception(at)
    assert any("analyst" in t and "ingest" in t for t in texts(at.error))


def test_uploads_go_to_a_private_folder_and_are_removed_after_each_run(
    demo_workspace: Workspace, make_raster: Callable[..., Path]
) -> None:
    """The new design (issue 14): the role is checked before a byte is saved; uploads go to
    <root>/uploads/<user> (mode 0700, files 0600) and are gone after the dry run and after
    the ingest; `geomesh doctor` does not count the folder as garbage."""
    import stat

    from geomesh.doctor import run_doctor

    tile = make_raster("S2B_upload.tif", width=128, height=128, origin=(548000.0, 4181000.0))
    at = app_as("steward", "pages/ingest.py")
    assert any("at most 256 MB" in str(u.label) for u in at.file_uploader)  # the limit, stated
    at.file_uploader(key=K.I_UPLOAD).upload("../../etc/S2B up.tif", tile.read_bytes()).run()
    at.button(key=K.I_DRY_RUN).click().run()
    no_exception(at)
    (row,) = at.dataframe[0].value.to_dict("records")
    assert row["status"] == "would-stage", row
    folder = demo_workspace.root / "uploads" / "steward"
    assert row["source"] == str(folder.resolve() / "S2B_up.tif")
    for d in (folder, folder.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, oct(d.stat().st_mode)
    assert list(folder.iterdir()) == []  # the dry-run copy is removed
    at.button(key=K.I_INGEST).click().run()
    no_exception(at)
    assert any(t.startswith("Ingested:") for t in texts(at.success)), texts(at.error)
    assert list(folder.iterdir()) == []
    report = run_doctor(demo_workspace)
    assert not [p for p in report.to_json()["problems"] if "uploads" in json.dumps(p)], report


def test_upload_service_writes_private_files_and_discards_only_its_own(
    demo_workspace: Workspace,
) -> None:
    import stat

    from streamlit.proto.Common_pb2 import FileURLs
    from streamlit.runtime.uploaded_file_manager import UploadedFile, UploadedFileRec

    from geomesh.errors import PermissionDenied
    from geomesh.services import uploads

    rec = UploadedFileRec(
        file_id="1", name="../../etc/evil tile.tif", type="image/tiff", data=b"II*"
    )
    with pytest.raises(PermissionDenied):
        uploads.save_uploads(demo_workspace, "viewer", [UploadedFile(rec, FileURLs())])
    assert not (demo_workspace.root / "uploads" / "viewer").exists()
    [path] = uploads.save_uploads(demo_workspace, "steward", [UploadedFile(rec, FileURLs())])
    assert path.name == "evil_tile.tif" and path.read_bytes() == b"II*"
    assert path.parent == demo_workspace.root.resolve() / "uploads" / "steward"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    elsewhere = demo_workspace.root / "keep.tif"
    elsewhere.write_bytes(b"x")
    uploads.discard_uploads(demo_workspace, "admin", [path])  # not admin's upload: kept
    assert path.exists()
    uploads.discard_uploads(demo_workspace, "steward", [path, elsewhere])
    assert not path.exists() and elsewhere.exists()


# ------------------------------------------------------------------ errors at the edge


def _guarded_script() -> None:
    import os

    from geomesh.errors import NotFound
    from ui import errors

    with errors.guard():
        if os.environ.get("GM_TEST_FAIL") == "domain":
            raise NotFound("item 'x' does not exist", hint="see `geomesh items list`")
        raise RuntimeError("a bug")


def test_geomesh_errors_become_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GM_TEST_FAIL", "domain")
    at = AppTest.from_function(_guarded_script).run()
    assert not at.exception
    assert texts(at.error) == ["item 'x' does not exist — see `geomesh items list`"]


def test_unexpected_errors_show_an_error_id_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("GEOMESH_UI_RAISE")
    at = AppTest.from_function(_guarded_script).run()
    assert not at.exception
    [message] = texts(at.error)
    assert message.startswith("Something went wrong (error id ") and "a bug" not in message
    error_id = message.split("error id ")[1][:8]
    assert any(error_id in r.getMessage() for r in caplog.records)


def test_unexpected_errors_reach_apptest_when_tests_ask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOMESH_UI_RAISE", "1")
    at = AppTest.from_function(_guarded_script).run()
    assert at.exception and "a bug" in at.exception[0].value
    assert not at.error
