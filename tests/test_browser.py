"""The review app in a real browser: `streamlit run app.py` against a seeded demo catalog,
driven by Playwright in headless Debian Chromium.

Signs in as a steward, checks the map really draws the boundary and every footprint (in
the st_folium iframe, from the app's own Leaflet: no internet), clicks a tile to open its
details and preview, approves an item, promotes it and sees the new release. Screenshots
of every page go to test-artifacts/screenshots/ (with GEOMESH_UPDATE_DOCS_SCREENSHOTS=1
the main ones are also copied to docs/screenshots/ for the README).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from geomesh import demo
from geomesh.services import queries
from geomesh.settings import Settings
from geomesh.workspace import Workspace

from conftest import ROOT, require_service

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SHOTS = ROOT / "test-artifacts" / "screenshots"
DOC_SHOTS = ROOT / "docs" / "screenshots"
MAIN_SHOTS = ("overview", "map", "review", "releases", "quarantine", "findings")
WAIT_MS = 60_000
PID = demo.PRODUCT_ID


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def app_url(
    tmp_path_factory: pytest.TempPathFactory, schema_dir_if_present: Path | None
) -> Iterator[tuple[str, Path]]:
    if not CHROMIUM.is_file():
        require_service(f"Debian chromium not found at {CHROMIUM} (`make browser` installs it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        require_service("playwright (python) is not installed")
    root = tmp_path_factory.mktemp("browser") / "geomesh-data"
    env = {**os.environ, "GEOMESH_STORAGE_ROOT": str(root)}
    for key in [
        k for k in env if k.startswith(("GEOMESH_DATABASE", "GEOMESH_OBJECT", "GEOMESH_S3"))
    ]:
        env.pop(key)  # the browser test runs on SQLite + a local directory
    if schema_dir_if_present is not None:
        env["GEOMESH_SCHEMA_DIR"] = str(schema_dir_if_present)
    ws = Workspace.open(Settings(storage_root=root, schema_dir=env.get("GEOMESH_SCHEMA_DIR")))
    demo.seed(ws)
    ws.close()
    port = _free_port()
    log_path = root.parent / "streamlit.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(port),
             "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"streamlit exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_steward_reviews_maps_approves_and_promotes(app_url: tuple[str, Path]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, root = app_url
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1400})
        page.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)
        failed: list[str] = []
        page.on("requestfailed", lambda r: failed.append(r.url))

        def shot(name: str) -> None:
            """The whole page: Streamlit scrolls inside stMain, so grow the viewport to it."""
            page.wait_for_timeout(800)  # let charts and images settle before the picture
            height = page.evaluate(
                "() => { const m = document.querySelector('[data-testid=stMain]');"
                " if (m) { m.scrollTo(0, 0); return m.scrollHeight; } return 1400; }"
            )
            page.set_viewport_size({"width": 1500, "height": max(900, min(int(height), 5000))})
            page.wait_for_timeout(300)
            page.screenshot(path=str(SHOTS / f"{name}.png"))
            page.set_viewport_size({"width": 1500, "height": 1400})

        def open_page(name: str) -> None:
            page.get_by_test_id("stSidebarNav").get_by_text(name, exact=True).click()
            expect(page.locator("h1", has_text=name)).to_be_visible()

        # ---- sign in as a steward
        page.goto(url)
        expect(page.locator("h1", has_text="geomesh review")).to_be_visible()
        shot("sign-in")
        page.get_by_role("textbox", name="User name").fill("steward")
        page.get_by_role("textbox", name="Password").fill("geomesh-steward")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("h1", has_text="Overview")).to_be_visible()
        expect(page.get_by_text("Signed in as steward")).to_be_visible()
        expect(page.get_by_test_id("stMetric").first).to_be_visible()
        shot("overview")

        # ---- the map: boundary + every footprint drawn by the app's own Leaflet
        open_page("Map")
        frame = page.frame_locator("iframe[title='streamlit_folium.st_folium']")
        footprints = frame.locator("path.leaflet-interactive")
        expect(footprints).to_have_count(11)
        expect(frame.locator(".leaflet-overlay-pane path")).to_have_count(12)  # + boundary
        folium = next(f for f in page.frames if "streamlit_folium" in f.url)
        drawn = folium.evaluate(
            "() => Object.values(window.map_div._layers)"
            ".filter(l => l.feature && l.feature.properties.item_id)"
            ".map(l => l.feature.properties.item_id)"
        )
        ws = Workspace.open(Settings(storage_root=root))
        try:
            layer = queries.map_layer(ws, PID)
            expected = sorted(f["properties"]["item_id"] for f in layer.features["features"])
        finally:
            ws.close()
        assert sorted(drawn) == expected
        boundary = folium.evaluate(
            "() => Object.values(window.map_div._layers)"
            ".filter(l => l.feature && !l.feature.properties.item_id).length"
        )
        assert boundary == 1
        # clicking a footprint opens the tile's details and lays its preview on the map
        for _ in range(3):  # the first click can land while Leaflet still fits the bounds
            footprints.nth(4).click(force=True)
            try:
                expect(page.get_by_text("rio-tiler preview")).to_be_visible(timeout=20_000)
                break
            except AssertionError:
                continue
        expect(page.get_by_text("rio-tiler preview")).to_be_visible()
        expect(frame.locator("img.leaflet-image-layer")).to_have_count(1)
        page.mouse.move(5, 5)  # no hover highlight or tooltip in the picture
        shot("map")

        # ---- review queue: approve the first queued tile
        open_page("Review queue")
        expect(page.get_by_text("Checksum now:")).to_be_visible()
        page.get_by_role("textbox", name="Comment (required to reject)").fill(
            "checked in the browser"
        )
        page.get_by_role("button", name="Approve", exact=True).click()
        expect(page.get_by_text("Approved sf-sentinel2-l2a-")).to_be_visible()
        expect(page.get_by_text("Next release: 1.2.0")).to_be_visible()
        shot("review")
        # ---- promote with the computed version shown before confirming
        page.get_by_text(f"Release 1 item(s) as {PID} 1.2.0").click()
        page.get_by_role("button", name="Promote", exact=True).click()
        expect(page.get_by_text(f"Released {PID} 1.2.0.")).to_be_visible()
        shot("review-promoted")

        # ---- the new release is current
        open_page("Releases")
        table = page.get_by_test_id("stDataFrame").first
        expect(table).to_contain_text("1.2.0")
        expect(page.get_by_text("Current release 1.2.0")).to_be_visible()
        shot("releases")

        for name in ("Findings", "Quarantine", "Audit", "Ingest"):
            open_page(name)
            expect(page.get_by_test_id("stException")).to_have_count(0)
            shot(name.lower())
        browser.close()

    # offline: nothing was fetched from outside 127.0.0.1
    assert not [u for u in failed if not u.startswith(url)], failed
    assert all((SHOTS / f"{n}.png").stat().st_size > 10_000 for n in MAIN_SHOTS)
    if os.environ.get("GEOMESH_UPDATE_DOCS_SCREENSHOTS") == "1":
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        for n in MAIN_SHOTS:
            shutil.copyfile(SHOTS / f"{n}.png", DOC_SHOTS / f"{n}.png")
