"""Reads at scale (issue 16): reads that do not wait for writers, paging and projection in
SQL, a constant number of queries per page, no hashing on a rerun, incremental audit
verification and caches keyed by a per-product change counter.

Behaviour only (rows loaded, statements issued, objects hashed, who waits for whom), never
wall-clock time: the timings live in ``bench/app_responsiveness.py``.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import pytest
from _statements import statements
from click.testing import CliRunner
from sqlalchemy import event, insert, text

from geomesh.cli import cli
from geomesh.models import Item, ItemState
from geomesh.services import gates, promotion, queries, signoff, users
from geomesh.workspace import Workspace

pytest_plugins = ("_app_fixtures",)
PID = "sf-sentinel2-l2a"
#: a safety net for a thread that never returns, not a timing assertion
STUCK = 60.0


def _queued(ws: Workspace, tile: str) -> str:
    ids = [q["id"] for q in queries.review_queue(ws, PID) if f"_{tile}.tif" in q["source"]]
    assert len(ids) == 1, ids
    return ids[0]


def _state(ws: Workspace, item_id: str) -> str:
    with ws.read() as session:
        item = session.get(Item, item_id)
        assert item is not None
        return ItemState(item.state).value


# ------------------------------------------------------------------ reads do not block


def test_read_models_answer_while_a_promote_holds_the_write_transaction(
    demo_workspace: Workspace,
) -> None:
    """A real promote is stopped inside its write transaction (release row inserted, not yet
    committed; SQLite holds its write lock from BEGIN IMMEDIATE, PostgreSQL its row locks). Meanwhile every read model
    of the app answers, from the snapshot before the promote, and the promote is still
    waiting when they are done: they did not wait for it. Then it commits."""
    ws = demo_workspace
    config = queries.product_config(ws, PID)
    item = _queued(ws, "r2c0")
    signoff.sign_off(ws, config, item, actor="steward", approve=True)
    holding, go_on = threading.Event(), threading.Event()

    def hold(*args: Any) -> None:
        """After the promote's INSERT of the release row: its transaction stays open."""
        if threading.current_thread().name != "promote" or holding.is_set():
            return
        if str(args[2]).lstrip().upper().startswith("INSERT INTO RELEASE"):
            holding.set()
            go_on.wait(STUCK)

    outcome: dict[str, Any] = {}

    def run_promote() -> None:
        try:
            outcome["result"] = promotion.promote(ws, config, [item], actor="steward")
        except Exception as exc:  # reported by the assertions below
            outcome["error"] = exc

    def run_reads() -> None:
        try:
            outcome["reads"] = {
                "version": queries.catalog_version(ws),
                "product_version": queries.product_version(ws, PID),
                "queue": [q["id"] for q in queries.review_queue(ws, PID)],
                "items": queries.list_items(ws, product_id=PID),
                "findings": queries.findings_page(ws, product_id=PID, limit=10)["total"],
                "overview": queries.overview(ws, PID),
                "map": queries.map_view(ws, PID, states=list(queries.MAP_STATES)),
                "audit": queries.audit_events(ws, limit=10),
                "chain": queries.audit_chain_status(ws),
                "detail": queries.review_item(ws, item),
            }
        except Exception as exc:
            outcome["read_error"] = exc

    event.listen(ws.engine, "after_cursor_execute", hold)
    promoter = threading.Thread(target=run_promote, name="promote")
    try:
        promoter.start()
        assert holding.wait(STUCK), f"the promote never reached its commit: {outcome}"
        reader = threading.Thread(target=run_reads, name="reader")
        reader.start()
        reader.join(STUCK)
        assert not reader.is_alive(), "the read models waited for the promote's transaction"
        assert promoter.is_alive() and not go_on.is_set(), "the promote was not in progress"
    finally:
        go_on.set()
        promoter.join(STUCK)
        event.remove(ws.engine, "after_cursor_execute", hold)
    assert "read_error" not in outcome, outcome.get("read_error")
    assert "error" not in outcome, outcome.get("error")
    reads = outcome["reads"]
    assert item in reads["queue"]  # the snapshot before the promote
    assert {i["id"]: i["state"] for i in reads["items"]}[item] == "validation"
    assert reads["chain"]["ok"]
    assert _state(ws, item) == "production"  # and the promote committed afterwards
    assert queries.product_version(ws, PID) > reads["product_version"]


# ------------------------------------------------------------------ constant queries


def _more_queued(ws: Workspace, n: int) -> list[str]:
    """``n`` more items awaiting sign-off: copies of a queued row (same object, new ids)."""
    template = _queued(ws, "r2c0")
    with ws.transaction() as session:
        row = session.get(Item, template)
        assert row is not None
        data = row.model_dump()
        ids = [f"{PID}-bulk{k:05d}" for k in range(n)]
        session.execute(
            insert(Item),
            [{**data, "id": i, "source_key": f"bulk-{k}"} for k, i in enumerate(ids)],
        )
    return ids


def test_review_queue_and_promotion_plan_cost_the_same_queries_for_any_queue_length(
    demo_workspace: Workspace,
) -> None:
    ws = demo_workspace
    config = queries.product_config(ws, PID)
    queries.review_queue(ws, PID)  # every object hashed once (first sight)
    with statements(ws.engine) as small_queue:
        before = queries.review_queue(ws, PID)
    with statements(ws.engine) as small_plan:
        promotion.plan_promotion(ws, config, verify_checksums=False)
    _more_queued(ws, 40)
    with statements(ws.engine) as big_queue:
        after = queries.review_queue(ws, PID)
    with statements(ws.engine) as big_plan:
        plan = promotion.plan_promotion(ws, config, verify_checksums=False)
    assert len(after) == len(before) + 40 and len(plan.items) == len(after)
    assert len(big_queue) == len(small_queue), (small_queue, big_queue)
    assert len(big_plan) == len(small_plan), (small_plan, big_plan)
    # the list views select no STAC JSON they do not show
    with statements(ws.engine) as listed:
        rows = queries.list_items(ws, product_id=PID)
    assert rows and all("stac" not in r for r in rows)
    whole_column = re.compile(r"(SELECT|,)\s*item\.stac\s*(,|FROM)")  # not a JSON path in it
    assert not [s for s in listed if whole_column.search(s)], listed


def test_promotion_plan_reads_each_object_once(
    demo_workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan reads the current release's partition of each queued tile to name what it
    replaces, then derives the next manifest from those same partitions: each is read once."""
    ws = demo_workspace
    config = queries.product_config(ws, PID)
    for q in queries.review_queue(ws, PID):  # every queued tile eligible: derive touches it
        signoff.sign_off(ws, config, q["id"], actor="steward", approve=True)
    read: list[str] = []
    get_bytes = ws.store.get_bytes

    def counted(area: Any, key: str) -> bytes:
        read.append(key)
        return get_bytes(area, key)

    monkeypatch.setattr(ws.store, "get_bytes", counted)
    plan = promotion.plan_promotion(ws, config, verify_checksums=False)
    assert any(p.eligible and p.replaces for p in plan.items)  # a tile of the release again
    parts = [k for k in read if "/parts/" in k]
    assert parts, read
    assert sorted(read) == sorted(set(read)), read


# ------------------------------------------------------------------ no hashing on rerun


def test_checksums_are_cached_per_object_stamp_and_reverified_on_demand(
    demo_workspace: Workspace,
) -> None:
    ws = demo_workspace
    first = {q["id"]: q["checksum"] for q in queries.review_queue(ws, PID)}
    corrupt = next(i for i, c in first.items() if c == "MISMATCH")
    good = next(i for i, c in first.items() if c == "verified")
    with ws.read() as session:
        item = session.get(Item, good)
        assert item is not None
    stamp = ws.store.stamp("staging", item.object_key)
    cached = gates.cached_hash(ws, item.object_key, stamp)
    assert cached is not None and cached.sha256 == item.content_digest
    # a rerun reads the cache: nothing is hashed again (the check time stays)
    again = {q["id"]: q["checksum"] for q in queries.review_queue(ws, PID, verify_limit=0)}
    assert again == first
    assert gates.cached_hash(ws, item.object_key, stamp) == cached
    detail = queries.review_item(ws, good)["checksum_now"]
    assert detail["ok"] and f"(checked {cached.checked_at}Z)" in detail["detail"]
    # the object changes (another stamp): the cached hash no longer counts
    path = ws.root / "staging" / item.object_key
    if path.is_file():  # local store: rewrite the bytes in place
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        new_stamp = ws.store.stamp("staging", item.object_key)
        assert new_stamp != stamp and gates.cached_hash(ws, item.object_key, new_stamp) is None
        rows = {q["id"]: q["checksum"] for q in queries.review_queue(ws, PID, verify_limit=0)}
        assert rows[good] == "not verified"
        assert queries.verify_checksums(ws, [good])[good]["ok"] is False  # "Verify now"
        rows = {q["id"]: q["checksum"] for q in queries.review_queue(ws, PID, verify_limit=0)}
        assert rows[good] == "MISMATCH"
    # a forged cache entry (not signed with the workspace's key) is ignored
    key = f"{gates.HASH_CACHE_PREFIX}{item.object_key}.json"
    doc = json.loads(ws.store.get_bytes("meta", key))
    doc["sha256"] = "0" * 64
    ws.store.put_bytes("meta", key, json.dumps(doc).encode(), overwrite=True)
    assert gates.cached_hash(ws, item.object_key, doc["stamp"]) is None
    # promotion never trusts the cache: the corrupt item stays blocked
    plan = promotion.plan_promotion(ws, queries.product_config(ws, PID), [corrupt])
    assert "corrupt" in " ".join(plan.items[0].reasons)


# ------------------------------------------------------------------ audit, caches, streams


def test_audit_verification_is_incremental_from_the_verified_head(
    demo_workspace: Workspace,
) -> None:
    ws = demo_workspace
    first = queries.audit_chain_status(ws)
    assert first["ok"] and first["from_seq"] == 1 and first["full"]
    users.add_user(ws, actor="admin", name="newcomer", role="viewer")
    second = queries.audit_chain_status(ws)
    assert second["ok"] and second["from_seq"] == first["events"] + 1
    assert second["events"] > first["events"]
    # an edit of an event after the verified head is found incrementally
    users.add_user(ws, actor="admin", name="later", role="viewer")
    with ws.engine.begin() as conn:
        conn.execute(
            text("UPDATE auditevent SET actor = 'mallory' WHERE seq = :s"),
            {"s": second["events"] + 1},
        )
    third = queries.audit_chain_status(ws)
    assert not third["ok"] and any("edited" in p for p in third["problems"])
    # an edit before it needs the full re-verify, which finds it
    with ws.engine.begin() as conn:
        conn.execute(
            text("UPDATE auditevent SET actor = actor WHERE seq = :s"), {"s": second["events"] + 1}
        )
        conn.execute(text("UPDATE auditevent SET actor = 'mallory' WHERE seq = 2"))
    full = queries.audit_chain_status(ws, full=True)
    assert full["full"] and any("#2 " in p and "edited" in p for p in full["problems"])
    # the verified head itself rewritten: the next check starts over from the first event
    with ws.engine.begin() as conn:
        conn.execute(
            # flip the first hex digit (a constant 'f' left a hash starting with 'f' as it was)
            text(
                "UPDATE auditevent SET hash = CASE WHEN substr(hash, 1, 1) = 'f' THEN 'e' "
                "ELSE 'f' END || substr(hash, 2) WHERE seq = :s"
            ),
            {"s": second["events"]},
        )
    again = queries.audit_chain_status(ws)
    assert again["full"] and not again["ok"]


def test_change_counter_moves_with_its_product_only(demo_workspace: Workspace) -> None:
    ws = demo_workspace
    version = queries.product_version(ws, PID)
    users.add_user(ws, actor="admin", name="bystander", role="viewer")  # not a product change
    assert queries.product_version(ws, PID) == version
    assert queries.catalog_version(ws) > version
    signoff.sign_off(
        ws, queries.product_config(ws, PID), _queued(ws, "r2c0"), actor="steward", approve=True
    )
    assert queries.product_version(ws, PID) == queries.catalog_version(ws) > version
    assert queries.product_version(ws, "no-such-product") == 0


def test_items_list_and_findings_export_stream_every_row(demo_workspace: Workspace) -> None:
    """(the CLI opens the same workspace: the fixtures set GEOMESH_* for this test)"""
    ws = demo_workspace
    _more_queued(ws, 30)
    runner = CliRunner()
    listed = runner.invoke(cli, ["items", "list", "--json", "--product", PID])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [r["id"] for r in rows] == [r["id"] for r in queries.list_items(ws, product_id=PID)]
    assert all(r["checksum"].startswith("1220") for r in rows)
    exported = runner.invoke(cli, ["findings", "export", "--product", PID, "--format", "json"])
    assert exported.exit_code == 0, exported.output
    table = queries.findings_page(ws, product_id=PID)
    assert len(json.loads(exported.output)) == table["total"]
    as_csv = runner.invoke(cli, ["findings", "export", "--product", PID, "--severity", "P1"])
    assert as_csv.output.count("\n") == table["counts"]["P1"] + 1
    # batches of 2: every row once, in id order
    small = list(queries.iter_findings(ws, product_id=PID, batch=2))
    assert len(small) == table["total"]
