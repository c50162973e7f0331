"""Reads at scale (issue 16), the pages: the overview, map and releases read models cost the
same statements whatever the product's size and load no row they do not show; every
sign-off keeps its item's staging → sign-off time; a rerun with no change reads no read
model again.

Behaviour only (statements issued, columns selected, rows returned), never wall-clock time:
the timings live in ``bench/app_responsiveness.py``.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from _app_helpers import app_as, no_exception
from _statements import statements
from sqlalchemy import insert
from sqlmodel import col, select

from geomesh.models import (
    Approval,
    Decision,
    FindingRecord,
    Item,
    ItemState,
    Release,
    SignoffTime,
    ValidationRun,
)
from geomesh.services import approval_times, history, queries, signoff
from geomesh.workspace import Workspace

pytest_plugins = ("_app_fixtures",)
PID = "sf-sentinel2-l2a"
#: a statement that selects a whole column (not a JSON path or function of it)
WHOLE_STAC = re.compile(r"(SELECT|,)\s*item\.stac\s*(,|FROM)")
WHOLE_DELTA = re.compile(r"(SELECT|,)\s*release\.delta\s*(,|FROM)")


def _queued(ws: Workspace, tile: str) -> str:
    ids = [q["id"] for q in queries.review_queue(ws, PID) if f"_{tile}.tif" in q["source"]]
    assert len(ids) == 1, ids
    return ids[0]


def _grow(ws: Workspace, n: int) -> list[str]:
    """``n`` more items, each validated with one open P3 finding and approved by a steward
    (its sign-off time kept as ``signoff.sign_off`` keeps it): copies of a queued row."""
    template = _queued(ws, "r2c0")
    with ws.transaction() as session:
        row = session.get(Item, template)
        assert row is not None
        data = row.model_dump()
        ids = [f"{PID}-grown{k:05d}" for k in range(n)]
        session.execute(
            insert(Item),
            [{**data, "id": i, "source_key": f"grown-{k}"} for k, i in enumerate(ids)],
        )
        run = ValidationRun(
            item_id=ids[0], content_digest=data["content_digest"], passed=True, actor="t"
        )
        session.add(run)
        session.flush()
        session.execute(
            insert(FindingRecord),
            [
                {"run_id": run.id, "item_id": i, "product_id": PID, "rule_id": "GM-COG-002",
                 "severity": "P3", "path": "p", "message": "m", "remediation": "r",
                 "context": {}, "open": True, "created_at": data["created_at"]}
                for i in ids
            ],
        )  # fmt: skip
        session.execute(
            insert(Approval),
            [
                {"item_id": i, "content_digest": data["content_digest"], "actor": "steward",
                 "decision": Decision.approve, "comment": None,
                 "created_at": data["created_at"] + timedelta(minutes=k + 1)}
                for k, i in enumerate(ids)
            ],
        )  # fmt: skip
        for i in ids:
            item = session.get(Item, i)
            assert item is not None
            approval_times.record(session, item)
    return ids


def _kept_times(ws: Workspace) -> dict[str, float]:
    with ws.read() as session:
        rows = session.exec(select(SignoffTime).where(SignoffTime.product_id == PID)).all()
        return {r.item_id: r.seconds for r in rows}


def _recomputed(ws: Workspace) -> dict[str, float]:
    with ws.read() as session:
        return approval_times.recompute(session, PID)


# ------------------------------------------------------------------ overview


def test_overview_costs_the_same_statements_for_any_size_and_loads_no_rows(
    demo_workspace: Workspace,
) -> None:
    ws = demo_workspace
    with statements(ws.engine) as small:
        before = queries.overview(ws, PID)
    _grow(ws, 60)
    with statements(ws.engine) as big:
        after = queries.overview(ws, PID)
    assert len(big) == len(small), (small, big)
    assert after["states"]["validation"] == before["states"]["validation"] + 60
    assert after["signoff"]["count"] == before["signoff"]["count"] + 60
    assert sum(b["items"] for b in after["signoff"]["histogram"]) == after["signoff"]["count"]
    rates = {r["rule"]: r for r in after["rule_pass_rates"]}
    was = {r["rule"]: r for r in before["rule_pass_rates"]}
    assert rates["GM-COG-002"]["items_failing"] == was["GM-COG-002"]["items_failing"] + 60
    # aggregates only: no STAC document, and sign-off times without joining approvals
    assert not [s for s in big if WHOLE_STAC.search(s)], big
    assert not [s for s in big if re.search(r"\bapproval\b", s)], big


def test_each_sign_off_keeps_its_items_staging_to_signoff_time(demo_workspace: Workspace) -> None:
    ws = demo_workspace
    config = queries.product_config(ws, PID)
    assert _kept_times(ws) == pytest.approx(_recomputed(ws))  # the seeded demo's sign-offs
    item = _queued(ws, "r2c0")
    count = queries.overview(ws, PID)["signoff"]["count"]
    signoff.sign_off(ws, config, item, actor="steward", approve=True)
    kept = _kept_times(ws)
    assert item in kept and kept[item] >= 0
    assert kept == pytest.approx(_recomputed(ws))
    assert queries.overview(ws, PID)["signoff"]["count"] == count + 1
    # the only approval turns into a rejection: the item version has no sign-off time
    signoff.sign_off(ws, config, item, actor="steward", approve=False, comment="striping")
    assert item not in _kept_times(ws)
    assert _kept_times(ws) == pytest.approx(_recomputed(ws))
    assert queries.overview(ws, PID)["signoff"]["count"] == count


# ------------------------------------------------------------------ map


def test_map_layer_costs_the_same_statements_for_any_size(demo_workspace: Workspace) -> None:
    ws = demo_workspace
    with statements(ws.engine) as small:
        before = queries.map_layer(ws, PID, max_features=5)
    _grow(ws, 300)
    with statements(ws.engine) as big:
        after = queries.map_layer(ws, PID, max_features=5)
    assert len(big) == len(small), (small, big)
    assert after.total == before.total + 300 and after.shown == 5
    assert [f["properties"]["worst"] for f in after.features["features"]][:2] == ["P1", "P2"]
    assert not [s for s in big if WHOLE_STAC.search(s)], big


# ------------------------------------------------------------------ releases


def _more_releases(ws: Workspace, n: int, listed: int) -> None:
    """``n`` more release rows after the current one, each delta listing ``listed`` items."""
    with ws.transaction() as session:
        current = session.exec(
            select(Release).where(Release.product_id == PID).order_by(col(Release.created_at))
        ).all()[-1]
        base = current.model_dump()
        session.execute(
            insert(Release),
            [
                {**base, "id": f"{k:064x}", "version": f"9.{k}.0",
                 "created_at": base["created_at"] + timedelta(seconds=k + 1),
                 "delta": {"added": [f"a{j}" for j in range(listed)], "removed": ["r"],
                           "changed": []}}
                for k in range(n)
            ],
        )  # fmt: skip


def test_the_release_history_is_paged_with_delta_sizes_counted_in_sql(
    demo_workspace: Workspace,
) -> None:
    ws = demo_workspace
    for info in history.list_releases(ws, PID):  # the sizes are those of the stored lists
        delta = history.show_release(ws, PID, info.version)["delta"]
        assert (info.added, info.removed, info.changed) == tuple(
            len(delta[k]) for k in ("added", "removed", "changed")
        )
    with statements(ws.engine) as few:
        first = queries.release_history(ws, PID, size=2)
    _more_releases(ws, 30, listed=500)
    with statements(ws.engine) as many:
        newest = queries.release_history(ws, PID, size=2)
        last = queries.release_history(ws, PID, page=99, size=2)
    assert len(many) == 2 * len(few), (few, many)
    assert not [s for s in few + many if WHOLE_DELTA.search(s)], many  # no delta list read
    assert newest["total"] == first["total"] + 30 and newest["pages"] == -(-newest["total"] // 2)
    assert [r["version"] for r in newest["rows"]] == ["9.29.0", "9.28.0"]
    assert (newest["rows"][0]["added"], newest["rows"][0]["removed"]) == (500, 1)
    assert last["page"] == last["pages"] and last["rows"][-1]["version"] == "1.0.0"
    assert newest["versions"][0] == "1.0.0" and newest["versions"][-1] == "9.29.0"
    assert newest["current"] == first["current"] and first["current"]["current"]


def test_the_rollback_picker_offers_a_bounded_search_of_the_current_release(
    demo_workspace: Workspace,
) -> None:
    ws = demo_workspace
    released = queries.list_items(ws, product_id=PID, state=ItemState.production.value)
    some = queries.released_item_ids(ws, PID, limit=2)
    assert some["total"] == len(released) and len(some["ids"]) == 2
    wanted = released[0]
    tail = wanted["id"][-10:]
    found = queries.released_item_ids(ws, PID, containing=tail)
    assert found["ids"] == [wanted["id"]]
    by_source = queries.released_item_ids(ws, PID, containing=wanted["source"].rsplit("/")[-1])
    assert wanted["id"] in by_source["ids"]
    assert queries.released_item_ids(ws, PID, containing="%")["ids"] == []  # literal, not LIKE


# ------------------------------------------------------------------ reruns


#: what a rerun may read: any other statement is a read model computed again
PER_RUN = re.compile(
    "|".join(
        (
            r"FROM \"?user\"?\b",  # who is signed in, and the role
            r"FROM product\b",  # the product picker, the registered config
            r"SELECT release\.version\s+FROM release\s+WHERE release\.id = ",  # its version
            r"max\(auditevent\.seq\)",  # the product's change counter
            r"FROM audithead\b",  # the chain's (the audit page's counter)
            r"FROM (task|outbox)\b",  # the overview's live worker queue
        )
    )
)


@pytest.mark.parametrize(
    "page",
    [
        "pages/overview.py",
        "pages/map.py",
        "pages/findings.py",
        "pages/review.py",
        "pages/quarantine.py",
        "pages/releases.py",
        "pages/audit.py",
    ],
)
def test_a_rerun_with_no_change_computes_no_read_model_again(
    demo_workspace: Workspace, page: str
) -> None:
    from ui.state import workspace

    at = app_as("steward", page)
    no_exception(at)
    with statements(workspace().engine) as rerun:
        at.run()
    no_exception(at)
    recomputed = [s for s in rerun if s.lstrip().upper().startswith("SELECT")]
    recomputed = [s for s in recomputed if not PER_RUN.search(s)]
    assert not recomputed, recomputed
