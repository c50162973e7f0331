"""5. App responsiveness: AppTest run time of the map page (5,000 items) and of the findings
page (50,000 findings).

Fixture (not measured): a fresh catalog with one real ingested tile (it registers the
product and gives the STAC template), then 5,000 items in bulk (footprints on a grid over
the San Francisco domain, the map's four states, mixed worst severities) and 50,000 open
findings (10 per item, one validation run each), inserted as ``models.Item``,
``models.ValidationRun`` and ``models.FindingRecord`` rows.

Measured: ``streamlit.testing.v1.AppTest`` of ``app.py``, signed in through the session
key ``ui.state.K.USER`` (what the sign-in form sets), default page run first, then
``st.cache_data`` cleared and the time of ``switch_page(page).run()``: the first visit after
a catalog change, in a warm process, fresh session each time (the targets apply to it).
One more run of the page in the same session shows what the app's caches save.
Baseline: the same visit on a catalog holding only the product and its one real tile,
alternating with the full catalog.
"""

from __future__ import annotations

import copy
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import (
    ROOT,
    SCHEMA_DIR,
    Row,
    fmt_s,
    make_tile,
    median,
    open_workspace,
    product_config,
    timed,
    workdir,
)

NAME = "app responsiveness"
USER = "bench-admin"
#: (page, label, page title, target seconds)
PAGES = (
    ("pages/map.py", "map", "Map", 2.0),
    ("pages/findings.py", "findings", "Findings", 1.0),
)
RULES = (
    ("GM-CONTRACT-002", "P3"),
    ("GM-BOUNDARY-002", "P3"),
    ("GM-CRS-003", "P3"),
    ("GM-COG-002", "P3"),
    ("GM-CONTRACT-001", "P2"),
    ("GM-SCHEMA-002", "P2"),
    ("GM-DRIFT-001", "P2"),
    ("GM-COG-003", "P3"),
    ("GM-BOUNDARY-001", "P1"),
    ("GM-CHECKSUM-003", "P1"),
)


def _env(root: Path) -> dict[str, str]:
    env = {
        "GEOMESH_STORAGE_ROOT": str(root),
        "GEOMESH_DATABASE_URL": f"sqlite:///{root / 'geomesh.db'}",
        "GEOMESH_OBJECT_STORE": "local",
    }
    if SCHEMA_DIR.is_dir():
        env["GEOMESH_SCHEMA_DIR"] = str(SCHEMA_DIR)
    return env


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_catalog(base: Path, n_items: int, findings_per_item: int) -> Path:
    """A catalog with one real tile plus ``n_items`` bulk items and their findings."""
    from sqlalchemy import insert, select

    from geomesh.models import FindingRecord, Item, ItemState, Severity, ValidationRun
    from geomesh.services import users
    from geomesh.services.pipeline import ingest_rasters
    from geomesh.stac import item_id_for
    from geomesh.storage import object_key
    from geomesh.tiles import stac_key_for
    from geomesh.validation import RULES as RULE_TABLE

    root = base / "root"
    config = product_config(base)
    ws = open_workspace(root)
    try:
        users.add_user(ws, actor="system", name=USER, role="admin")
        tile = make_tile(
            base / "tile.tif", width=128, height=128, count=1, origin=(545000.0, 4185000.0)
        )
        report = ingest_rasters(ws, config, [str(tile)], actor="system")
        if not report.ok:
            raise RuntimeError(f"fixture ingest failed: {report.to_json()}")
        pid = config.product_id
        template: dict[str, Any] = copy.deepcopy(report.results[0].item or {})
        if not n_items:
            return root
        states = (
            ItemState.staging,
            ItemState.validation,
            ItemState.quarantined,
            ItemState.production,
        )
        severities = (None, Severity.P3, Severity.P2, Severity.P1)
        now = datetime.now(UTC)
        side = int(n_items**0.5) + 1
        step = 0.2 / side  # the grid covers the 0.2° × 0.2° domain
        items: list[dict[str, Any]] = []
        for i in range(n_items):
            digest = hashlib.sha256(f"bench-app-item-{i}".encode()).hexdigest()
            iid = item_id_for(pid, digest)
            x0 = -122.5 + (i % side) * step
            y0 = 37.7 + (i // side) * step
            x1, y1 = x0 + step * 1.3, y0 + step * 1.3  # a little overlap, like real tiles
            stac = copy.deepcopy(template)
            stac["id"] = iid
            stac["bbox"] = [x0, y0, x1, y1]
            stac["geometry"] = {
                "type": "Polygon",
                "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
            }
            stac["assets"]["data"]["file:checksum"] = "1220" + digest
            items.append(
                {
                    "id": iid,
                    "product_id": pid,
                    "source": f"/data/tiles/S2_bench_{i:05d}.tif",
                    "source_key": digest[:32],
                    "source_digest": None,
                    "content_digest": digest,
                    "size": 1_000_000 + i,
                    "object_key": object_key(digest),
                    "stac_key": stac_key_for(pid, iid),
                    "stac": stac,
                    "state": states[i % len(states)],
                    "worst_severity": severities[(i // 4) % len(severities)],
                    "submitted_by": USER,
                    "created_at": now - timedelta(minutes=n_items - i),
                    "updated_at": now - timedelta(minutes=n_items - i),
                }
            )
        with ws.transaction() as session:
            for c in range(0, len(items), 2000):
                session.execute(insert(Item), items[c : c + 2000])
            runs = [
                {
                    "item_id": it["id"],
                    "content_digest": it["content_digest"],
                    "passed": False,
                    "worst_severity": Severity.P1,
                    "strict": False,
                    "actor": "system",
                    "created_at": now,
                }
                for it in items
            ]
            for c in range(0, len(runs), 2000):
                session.execute(insert(ValidationRun), runs[c : c + 2000])
            run_ids = {
                iid: rid
                for rid, iid in session.execute(
                    select(ValidationRun.id, ValidationRun.item_id)
                ).all()
            }
            findings: list[dict[str, Any]] = []
            for n, it in enumerate(items):
                for k in range(findings_per_item):
                    rule_id, sev = RULES[(n + k) % len(RULES)]
                    findings.append(
                        {
                            "run_id": run_ids[it["id"]],
                            "item_id": it["id"],
                            "product_id": pid,
                            "rule_id": rule_id,
                            "severity": Severity(sev),
                            "path": f"properties.field_{k}",
                            "message": f"{rule_id}: finding {k} of item {n} (bench)",
                            "remediation": RULE_TABLE[rule_id].remediation,
                            "context": {"k": k},
                            "open": True,
                            "created_at": now,
                        }
                    )
            for c in range(0, len(findings), 5000):
                session.execute(insert(FindingRecord), findings[c : c + 5000])
    finally:
        ws.close()
    return root


#: the read models each page calls (timed inside the page run)
QUERIES = {"pages/map.py": "map_view", "pages/findings.py": "findings_table"}


@dataclass
class Visit:
    #: switch to the page with streamlit's data caches cleared (first visit after a change)
    cold: float
    #: the same page run again in the same session (whatever the app caches is warm)
    warm: float
    #: time inside the page's main read model during the cold run
    query: float
    problems: list[str]


def visit(page: str, title: str) -> Visit:
    """One fresh session: sign in, run the default page, clear ``st.cache_data``, time the
    switch to ``page`` (cold), then time one more run of it (warm).

    A timing probe on ``geomesh.services.queries`` (the app calls it through the module)
    measures the page's main query.
    """
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from geomesh.services import queries
    from ui.state import K

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state[K.USER] = USER
    at.run()
    name = QUERIES[page]
    original = getattr(queries, name)
    spent = [0.0]

    def probe(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    st.cache_data.clear()
    setattr(queries, name, probe)
    try:
        cold, _ = timed(lambda: at.switch_page(page).run())
    finally:
        setattr(queries, name, original)
    warm, _ = timed(at.run)
    problems = [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]
    titles = [str(t.value) for t in at.title]
    if titles != [title]:
        problems.append(f"expected the {title!r} page, got titles {titles}")
    return Visit(cold, warm, spent[0], problems)


def run(smoke: bool) -> list[Row]:
    if str(ROOT) not in sys.path:  # the app's `ui` package lives at the repository root
        sys.path.insert(0, str(ROOT))
    # AppTest sets session state from this thread, which streamlit warns about each time
    from streamlit.runtime.scriptrunner_utils import script_run_context

    script_run_context._LOGGER.addFilter(
        lambda record: "missing ScriptRunContext" not in record.getMessage()
    )
    n_items, per_item, rounds = (20, 3, 1) if smoke else (5000, 10, 3)
    with workdir("app") as tmp:
        base = Path(tmp)
        (base / "full").mkdir()
        (base / "empty").mkdir()
        full = _env(build_catalog(base / "full", n_items, per_item))
        empty = _env(build_catalog(base / "empty", 0, 0))
        rows: list[Row] = []
        for page, label, title, target in PAGES:
            with environment(empty):
                visit(page, title)  # warm-up: imports, caches, the first render of the page
            full_visits: list[Visit] = []
            empty_visits: list[Visit] = []
            for r in range(rounds):
                order = ((empty, empty_visits), (full, full_visits))
                for env, out in order if r % 2 == 0 else reversed(order):
                    with environment(env):
                        out.append(visit(page, title))
            tf = median([v.cold for v in full_visits])
            te = median([v.cold for v in empty_visits])
            warm = median([v.warm for v in full_visits])
            query = median([v.query for v in full_visits])
            problems = [p for v in full_visits + empty_visits for p in v.problems]
            what = f"{n_items:,} items" if label == "map" else f"{n_items * per_item:,} findings"
            rows.append(
                Row(
                    NAME,
                    f"{label} page, {what} ({rounds} visits)",
                    "AppTest page run, caches cleared, median",
                    fmt_s(tf),
                    fmt_s(te),
                    tf / te,
                    f"≤ {target:.0f} s",
                    tf <= target and not problems,
                    "baseline = the same page with one item; visits "
                    + ", ".join(fmt_s(v.cold) for v in full_visits)
                    + f"; of which queries.{QUERIES[page]} {fmt_s(query)}; the next run in the "
                    f"same session (app caches warm) {fmt_s(warm)}"
                    + (f"; PAGE ERRORS: {problems[0][:200]}" if problems else ""),
                )
            )
        return rows
