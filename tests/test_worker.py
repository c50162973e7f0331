"""`geomesh worker`: leased outbox delivery across processes, re-clip tasks, clean shutdown.

Every worker here is a real `geomesh worker` process; receivers are real HTTP servers on
127.0.0.1. Nothing waits for wall-clock time: the tests poll for behaviour (a receiver's
keys, a row's state) with a generous deadline that only guards against a hang.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _worker_support import (
    dedup_receiver,
    run_geomesh,
    start_geomesh,
    stop,
    wait_for,
)
from sqlmodel import col, select

from geomesh.config import ProductConfig, load_config
from geomesh.models import (
    AuditEvent,
    FindingRecord,
    Item,
    ItemState,
    OutboxMessage,
    OutboxStatus,
    Task,
    TaskStatus,
)
from geomesh.services import history
from geomesh.services.outbox import idempotency_key
from geomesh.services.pipeline import ingest_rasters
from geomesh.services.products import register_product
from geomesh.services.reclip import DERIVED_PROPERTY
from geomesh.settings import Settings
from geomesh.workspace import Workspace

SYSTEM = "system"
SECRET = "worker-test-hmac-secret-0123456789"
DATED = {"TIFFTAG_DATETIME": "2024:06:12 19:03:21"}


# ------------------------------------------------------------------ outbox across processes


@pytest.fixture
def postgres_workspace(
    tmp_path: Path, migrated_postgres_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Workspace]:
    """A workspace on PostgreSQL (whatever the suite's backend): several workers need it."""
    monkeypatch.setenv("GEOMESH_STORAGE_ROOT", str(tmp_path / "pg-data"))
    monkeypatch.setenv("GEOMESH_OBJECT_STORE", "local")
    for k, v in migrated_postgres_env.items():
        monkeypatch.setenv(k, v)
    ws = Workspace.open(Settings())
    yield ws
    ws.close()


def _hook_config(write_config: Callable[..., Path], url: str) -> ProductConfig:
    return load_config(
        write_config(
            {
                "governance": {
                    "escalation": [
                        {"name": "ops", "url": url, "secret_env": "GEOMESH_TEST_WORKER_SECRET"}
                    ]
                }
            }
        )
    )


def _queue_messages(ws: Workspace, cfg: ProductConfig, n: int) -> list[str]:
    keys = []
    with ws.transaction() as session:
        register_product(session, cfg, actor=SYSTEM)
        for i in range(n):
            key = idempotency_key("load", cfg.product_id, str(i))
            keys.append(key)
            session.add(
                OutboxMessage(
                    idempotency_key=key,
                    product_id=cfg.product_id,
                    target_name="ops",
                    url="http://127.0.0.1/redacted",
                    event="finding",
                    payload={"n": i, "item_id": f"item-{i}", "worst_severity": "P2"},
                )
            )
    return keys


def _pending(ws: Workspace) -> int:
    with ws.read() as session:
        return len(
            session.exec(
                select(OutboxMessage.id).where(OutboxMessage.status != OutboxStatus.delivered)
            ).all()
        )


@pytest.mark.postgres
def test_two_workers_deliver_200_messages_while_one_is_killed(
    postgres_workspace: Workspace,
    write_config: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    ws = postgres_workspace
    monkeypatch.setenv("GEOMESH_TEST_WORKER_SECRET", SECRET)
    with dedup_receiver(delay_s=0.02) as receiver:
        cfg = _hook_config(write_config, receiver.url)
        keys = _queue_messages(ws, cfg, 200)
        args = ["worker", "--poll", "0.1", "--send-timeout", "1"]
        victim = start_geomesh([*args, "--name", "victim"], tmp_path / "victim.log")
        survivor = start_geomesh([*args, "--name", "survivor"], tmp_path / "survivor.log")
        try:
            wait_for(lambda: receiver.requests >= 60, "60 deliveries before the kill")
            victim.send_signal(signal.SIGKILL)  # midway, possibly inside a send
            assert victim.wait(timeout=30) == -signal.SIGKILL
            at_kill = receiver.requests
            wait_for(lambda: receiver.keys() >= set(keys), "all 200 keys at the receiver")
            # a message the victim sent but could not record is sent again once its lease
            # (from the database clock) has run out: wait until every row says delivered
            wait_for(lambda: _pending(ws) == 0, "every outbox row recorded as delivered")
        finally:
            code = stop(survivor)
            if victim.poll() is None:
                victim.kill()
                victim.wait(timeout=30)
        assert code == 0, (tmp_path / "survivor.log").read_text()
        assert at_kill < 200  # the kill did happen midway
        dupes = sum(receiver.duplicates.values())
        # at least once, never lost: every key arrived; a duplicate is only possible for a
        # message the victim sent but could not record (its lease then ran out)
        assert receiver.keys() == set(keys)
        report = f"{dupes} duplicate request(s) after the SIGKILL: {receiver.duplicates}"
        record_property("duplicates", dupes)
        with capsys.disabled():
            sys.stdout.write(f"\n[200 messages, 2 workers, 1 SIGKILLed] {report}\n")
        assert dupes <= 1, report
    with ws.read() as session:
        rows = session.exec(select(OutboxMessage)).all()
        assert {r.status for r in rows} == {OutboxStatus.delivered}
        delivered = session.exec(
            select(AuditEvent).where(AuditEvent.action == "outbox.delivered")
        ).all()
    by_worker: dict[str, int] = {}
    for ev in delivered:
        who = ev.details["channel"]["worker"]
        by_worker[who] = by_worker.get(who, 0) + 1
    assert set(by_worker) == {"victim", "survivor"}, by_worker  # both took part
    assert sum(by_worker.values()) == 200  # each message recorded delivered exactly once
    assert history.verify_audit(ws) == []  # the chain holds across workers and the kill
    survivor_log = (tmp_path / "survivor.log").read_text()
    assert '"event": "stopped"' in survivor_log


def test_a_sigterm_stops_an_idle_worker_cleanly(workspace: Workspace, tmp_path: Path) -> None:
    proc = start_geomesh(["worker", "--poll", "30"], tmp_path / "w.log")
    try:
        wait_for(lambda: '"started"' in (tmp_path / "w.log").read_text(), "the worker to start")
    finally:
        code = stop(proc)  # the 30 s idle wait is interrupted, not waited out
    out = (tmp_path / "w.log").read_text()
    assert code == 0, out
    assert '"event": "stopped"' in out


def test_worker_once_delivers_on_sqlite_or_postgres(
    workspace: Workspace,
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEOMESH_TEST_WORKER_SECRET", SECRET)
    with dedup_receiver() as receiver:
        cfg = _hook_config(write_config, receiver.url)
        keys = _queue_messages(workspace, cfg, 5)
        proc = run_geomesh(["worker", "--once"])
        assert proc.returncode == 0, proc.stderr
        assert receiver.keys() == set(keys) and not receiver.duplicates
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        assert summary["delivered"] == 5


# ------------------------------------------------------------------ re-clip


@pytest.fixture
def strict_boundary(write_config: Callable[..., Path]) -> ProductConfig:
    """A product that treats a partly-outside tile as P1 (routing: rollback + re-clip)."""
    return load_config(
        write_config({"validation": {"severity_overrides": {"GM-BOUNDARY-002": "P1"}}})
    )


def _straddling(make_raster: Callable[..., Path], name: str = "straddle.tif") -> Path:
    # west edge 542000 m, the domain's west edge is near 544018 m (UTM 10N): part outside
    return make_raster(
        name, width=128, height=128, count=1, res=40.0, origin=(542000.0, 4185000.0), tags=DATED
    )


def _rolled_back(ws: Workspace, cfg: ProductConfig, source: Path) -> tuple[str, int]:
    (res,) = ingest_rasters(ws, cfg, [source], actor=SYSTEM).results
    assert res.item_id is not None and res.route == "rollback", res
    with ws.read() as s:
        (task,) = s.exec(select(Task).where(Task.item_id == res.item_id)).all()
    assert (task.kind, task.status) == ("reclip", TaskStatus.queued.value)
    assert task.id is not None
    return res.item_id, task.id


def _audit(ws: Workspace, *actions: str) -> list[AuditEvent]:
    with ws.read() as s:
        return list(
            s.exec(
                select(AuditEvent)
                .where(col(AuditEvent.action).in_(actions))
                .order_by(col(AuditEvent.seq))
            ).all()
        )


def test_a_p1_boundary_tile_comes_back_clipped_and_staged_without_a_manual_step(
    workspace: Workspace, strict_boundary: ProductConfig, make_raster: Callable[..., Path]
) -> None:
    old_id, task_id = _rolled_back(workspace, strict_boundary, _straddling(make_raster))

    proc = run_geomesh(["worker", "--once"])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    with workspace.read() as s:
        task = s.get(Task, task_id)
        assert task is not None and task.status == TaskStatus.done.value, task
        assert task.result is not None
        new = s.get(Item, task.result["item_id"])
        old = s.get(Item, old_id)
    assert new is not None and old is not None
    assert old.state is ItemState.rolled_back  # untouched
    assert new.id != old_id and new.derived_from == old_id and new.supersedes == old_id
    # routed like any tile: the clipped footprint lies inside the domain, so it proceeds
    assert new.state is ItemState.validation, new.state
    assert task.result["route"] in ("proceed", "warn")
    links = [ln for ln in new.stac["links"] if ln["rel"] == "derived_from"]
    assert len(links) == 1 and links[0]["href"].endswith(f"{old_id}.json")
    assert new.stac["properties"][DERIVED_PROPERTY] == old_id
    assert new.stac["properties"]["proj:code"] == "EPSG:4326"  # warped to the domain CRS
    with workspace.read() as s:
        rules = {
            f.rule_id
            for f in s.exec(
                select(FindingRecord).where(
                    FindingRecord.item_id == new.id, col(FindingRecord.open).is_(True)
                )
            ).all()
        }
    assert not rules & {"GM-BOUNDARY-001", "GM-BOUNDARY-002"}, rules
    story = [e.action for e in _audit(workspace, "task.start", "ingest", "reclip.staged",
                                       "validate", "route.proceed", "task.done")]  # fmt: skip
    # the steps of the task, in order (after the original ingest + validation)
    tail = story[story.index("task.start") :]
    assert tail == ["task.start", "ingest", "reclip.staged", "validate", "route.proceed",
                    "task.done"], story  # fmt: skip

    again = run_geomesh(["worker", "--once"])  # nothing is due any more
    assert again.returncode == 0
    with workspace.read() as s:
        assert len(s.exec(select(Item)).all()) == 2


def test_an_unreadable_source_fails_the_task_with_a_finding_for_the_steward(
    workspace: Workspace, strict_boundary: ProductConfig, make_raster: Callable[..., Path]
) -> None:
    source = _straddling(make_raster, "gone.tif")
    old_id, task_id = _rolled_back(workspace, strict_boundary, source)
    source.unlink()  # the source can no longer be read

    proc = run_geomesh(["worker", "--once"])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    with workspace.read() as s:
        task = s.get(Task, task_id)
        assert task is not None and task.status == TaskStatus.failed.value
        assert task.attempts == 1  # a refusal is not retried blindly
        assert task.last_error and "gone.tif" in task.last_error
        (finding,) = s.exec(
            select(FindingRecord).where(
                FindingRecord.item_id == old_id, FindingRecord.rule_id == "GM-RECLIP-001"
            )
        ).all()
        assert finding.open and finding.severity == "P2"
        assert f"task {task_id}" in finding.message
        assert len(s.exec(select(Item)).all()) == 1  # nothing new staged
    (failed,) = _audit(workspace, "reclip.failed")
    assert failed.target == old_id and failed.details["task_id"] == task_id
    assert [e.action for e in _audit(workspace, "task.start", "task.failed")] == [
        "task.start",
        "task.failed",
    ]

    listed = run_geomesh(["tasks", "list", "--status", "failed", "--json"])
    rows: list[dict[str, Any]] = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [task_id]


def test_a_tile_wholly_outside_the_domain_is_not_reread(
    workspace: Workspace, strict_boundary: ProductConfig, make_raster: Callable[..., Path]
) -> None:
    outside = make_raster(
        "outside.tif", width=64, height=64, count=1, origin=(245000.0, 4185000.0), tags=DATED
    )
    old_id, task_id = _rolled_back(workspace, strict_boundary, outside)
    outside.unlink()  # never read again: clipping a tile with no overlap cannot help

    proc = run_geomesh(["worker", "--once"])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    with workspace.read() as s:
        task = s.get(Task, task_id)
        assert task is not None and task.status == TaskStatus.done.value
        assert task.result is not None and task.result["item_id"] is None
        assert "clipping cannot help" in task.result["skipped"]
        assert len(s.exec(select(Item)).all()) == 1
        assert not s.exec(
            select(FindingRecord).where(FindingRecord.rule_id == "GM-RECLIP-001")
        ).all()
    (skipped,) = _audit(workspace, "reclip.skipped")
    assert skipped.target == old_id
