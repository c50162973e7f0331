"""5. App responsiveness at scale (issue 16): AppTest runs of every read-heavy page.

Fixture (not measured): a fresh catalog with one real ingested tile (it registers the
product, is the object every queued item points at, and gives the STAC shape), then, in
bulk SQL: ``n_items`` items (the first ``queued`` awaiting sign-off, 1 % quarantined, the
rest in production; footprints on a grid over the San Francisco domain; small STAC
documents), ``findings_per_item`` open findings each (one validation run per item) and
``events`` audit events continuing the keyed hash chain (HMAC under the workspace's key).
Then the app's first-sight work is done once, as in a running deployment: the audit chain
is verified (the verified head is remembered) and the queue's stored object is hashed
(the checksum cache).

Measured: ``streamlit.testing.v1.AppTest`` of ``app.py``, signed in through the session
key ``ui.state.K.USER``, default page run first, then ``st.cache_data`` cleared and the
time of ``switch_page(page).run()`` (cold: the first visit after a catalog change, fresh
session), then one more run of the page in the same session with no change (warm: what
the change-counter caches save). Baseline: the same visits on a catalog holding only the
product and its one real tile, alternating with the full catalog.
"""

from __future__ import annotations

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
#: (page, label, page title, cold target seconds); every page: a rerun with no change ≤ 0.3 s
PAGES = (
    ("pages/overview.py", "overview", "Overview", 1.0),
    ("pages/map.py", "map", "Map", 1.0),
    ("pages/findings.py", "findings", "Findings", 1.0),
    ("pages/review.py", "review", "Review queue", 1.0),
    ("pages/quarantine.py", "quarantine", "Quarantine", 1.0),
    ("pages/audit.py", "audit", "Audit", 1.0),
)
WARM_TARGET = 0.3
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


def build_catalog(
    base: Path, n_items: int, findings_per_item: int, *, queued: int = 0, events: int = 0
) -> Path:
    """A catalog with one real tile plus ``n_items`` bulk items, their findings and
    ``events`` more audit events (see the module docstring)."""

    from sqlalchemy import insert, select

    from geomesh.models import (
        FindingRecord,
        Item,
        ItemState,
        Severity,
        ValidationRun,
    )
    from geomesh.services import queries, users
    from geomesh.services.pipeline import ingest_rasters
    from geomesh.stac import item_id_for
    from geomesh.tiles import stac_key_for
    from geomesh.validation.registry import RULES as RULE_TABLE

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
        real: dict[str, Any] = report.results[0].item or {}
        with ws.read() as session:
            real_row = session.get(Item, real["id"])
            assert real_row is not None
            real_key, real_digest = real_row.object_key, real_row.content_digest
        if not n_items:
            queries.audit_chain_status(ws)
            return root
        now = datetime.now(UTC)
        side = int(n_items**0.5) + 1
        step = 0.2 / side  # the grid covers the 0.2° × 0.2° domain
        severities = (None, Severity.P3, Severity.P2, Severity.P1)
        items: list[dict[str, Any]] = []
        for i in range(n_items):
            state = (
                ItemState.validation
                if i < queued
                else ItemState.quarantined
                if i % 100 == 1
                else ItemState.production
            )
            if state != ItemState.production:  # pages open these: the real tile's object
                digest, okey = real_digest, real_key
            else:
                digest = hashlib.sha256(f"bench-app-item-{i}".encode()).hexdigest()
                okey = f"sha256/{digest[:2]}/{digest[2:]}.tif"
            iid = item_id_for(pid, hashlib.sha256(f"bench-app-id-{i}".encode()).hexdigest())
            x0 = -122.5 + (i % side) * step
            y0 = 37.7 + (i // side) * step
            x1, y1 = x0 + step * 1.3, y0 + step * 1.3  # a little overlap, like real tiles
            stac = {
                "type": "Feature",
                "stac_version": "1.1.0",
                "id": iid,
                "bbox": [x0, y0, x1, y1],
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
                },
                "properties": {"datetime": "2024-09-01T19:00:00Z", "proj:code": "EPSG:32610"},
                "assets": {"data": {"href": okey, "file:checksum": "1220" + digest}},
            }
            items.append(
                {
                    "id": iid,
                    "product_id": pid,
                    "source": f"/data/tiles/S2_bench_{i:06d}.tif",
                    "source_key": hashlib.sha256(f"tile-{i}".encode()).hexdigest()[:32],
                    "source_digest": None,
                    "content_digest": digest,
                    "size": 1_000_000 + i,
                    "object_key": okey,
                    "stac_key": stac_key_for(pid, iid),
                    "stac": stac,
                    "state": state,
                    "worst_severity": severities[(i // 4) % len(severities)],
                    "submitted_by": USER,
                    "created_at": now - timedelta(minutes=n_items - i),
                    "updated_at": now - timedelta(minutes=n_items - i),
                }
            )
        with ws.transaction() as session:
            for c in range(0, len(items), 5000):
                session.execute(insert(Item), items[c : c + 5000])
            runs = [
                {
                    "item_id": it["id"],
                    "content_digest": it["content_digest"],
                    "passed": True,
                    "worst_severity": Severity.P3,
                    "strict": False,
                    "actor": "system",
                    "created_at": now,
                }
                for it in items
            ]
            for c in range(0, len(runs), 5000):
                session.execute(insert(ValidationRun), runs[c : c + 5000])
            run_ids = {
                iid: rid
                for rid, iid in session.execute(
                    select(ValidationRun.id, ValidationRun.item_id)
                ).all()
            }
            batch: list[dict[str, Any]] = []
            for n, it in enumerate(items):
                for k in range(findings_per_item):
                    rule_id, sev = RULES[(n + k) % len(RULES)]
                    if n < queued and sev != "P3":
                        rule_id, sev = "GM-COG-002", "P3"  # queued items stay promotable
                    batch.append(
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
                if len(batch) >= 10000:
                    session.execute(insert(FindingRecord), batch)
                    batch = []
            if batch:
                session.execute(insert(FindingRecord), batch)
        if events:
            _append_events(ws, pid, [it["id"] for it in items], events)
        # first-sight work of a running app: the chain verified once, the queue's object hashed
        queries.audit_chain_status(ws)
        queries.review_queue(ws, pid)
    finally:
        ws.close()
    return root


def _append_events(ws: Any, pid: str, targets: list[str], n: int) -> None:
    """``n`` audit events continuing the chain (keyed hashes), inserted in bulk."""
    from types import SimpleNamespace

    from sqlalchemy import insert, update

    from geomesh import audit
    from geomesh.models import AuditEvent, AuditHead

    with ws.transaction() as session:
        head = session.get(AuditHead, 1)
        seq, prev = head.last_seq, head.last_hash
        start = datetime.now(UTC).replace(tzinfo=None)
        rows: list[dict[str, Any]] = []
        actions = ("validate", "signoff", "promote", "route", "ingest")
        for k in range(n):
            seq += 1
            ev = SimpleNamespace(
                seq=seq,
                event_id=f"00000000-0000-4000-8000-{seq:012d}",
                timestamp=start + timedelta(microseconds=k),
                actor=("steward", "analyst", "system")[k % 3],
                action=actions[k % len(actions)],
                product_id=pid,
                target=targets[k % len(targets)],
                state_before=None,
                state_after=None,
                digest=None,
                details={"bench": k},
                prev_hash=prev,
                hash="",
            )
            ev.hash = audit.event_hash(ev, ws.audit_key)  # type: ignore[arg-type]
            prev = ev.hash
            rows.append(vars(ev))
            if len(rows) >= 20000:
                session.execute(insert(AuditEvent), rows)
                rows = []
        if rows:
            session.execute(insert(AuditEvent), rows)
        session.execute(
            update(AuditHead).where(AuditHead.id == 1).values(last_seq=seq, last_hash=prev)
        )
    audit.write_checkpoint(ws.store, ws.audit_key, seq, prev)


#: the read models each page calls (timed inside the page run)
QUERIES = {
    "pages/overview.py": "overview",
    "pages/map.py": "map_view",
    "pages/findings.py": "findings_table",
    "pages/review.py": "review_queue",
    "pages/quarantine.py": "item_detail",
    "pages/audit.py": "audit_chain_status",
}


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
    sizes = (40, 2, 5, 300, 1) if smoke else (100_000, 5, 200, 1_000_000, 3)
    n_items, per_item, queued, events, rounds = sizes
    with workdir("app") as tmp:
        base = Path(tmp)
        (base / "full").mkdir()
        (base / "empty").mkdir()
        t0 = time.perf_counter()
        full = _env(build_catalog(base / "full", n_items, per_item, queued=queued, events=events))
        built = time.perf_counter() - t0
        empty = _env(build_catalog(base / "empty", 0, 0))
        rows: list[Row] = []
        what = {
            "overview": f"{n_items:,} items",
            "map": f"{n_items:,} items, ≤ 5,000 drawn",
            "findings": f"{n_items * per_item:,} findings",
            "review": f"{queued:,} queued, {n_items - queued:,} items",
            "quarantine": f"{n_items // 100:,} quarantined",
            "audit": f"{events:,} events",
        }
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
            warm_e = median([v.warm for v in empty_visits])
            query = median([v.query for v in full_visits])
            problems = [p for v in full_visits + empty_visits for p in v.problems]
            rows.append(
                Row(
                    NAME,
                    f"{label} page, {what[label]} ({rounds} visits)",
                    "AppTest page run, caches cleared, median",
                    fmt_s(tf),
                    fmt_s(te),
                    tf / te,
                    f"≤ {target:.0f} s",
                    tf <= target and not problems,
                    "baseline = the same page with one item; visits "
                    + ", ".join(fmt_s(v.cold) for v in full_visits)
                    + f"; of which queries.{QUERIES[page]} {fmt_s(query)}"
                    + (f"; PAGE ERRORS: {problems[0][:200]}" if problems else ""),
                )
            )
            rows.append(
                Row(
                    NAME,
                    f"{label} page rerun, no change ({rounds} visits)",
                    "AppTest rerun in the same session, median",
                    fmt_s(warm),
                    fmt_s(warm_e),
                    warm / warm_e,
                    f"≤ {WARM_TARGET} s",
                    warm <= WARM_TARGET and not problems,
                    "baseline = the same rerun with one item; "
                    + ", ".join(fmt_s(v.warm) for v in full_visits),
                )
            )
        rows.append(
            Row(
                NAME,
                "fixture build (not measured above)",
                "seconds",
                fmt_s(built),
                "—",
                1.0,
                "— (info)",
                None,
                "bulk SQL rows + keyed audit chain + first chain verification and queue hash",
            )
        )
        return rows
