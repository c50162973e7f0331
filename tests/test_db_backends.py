"""The same database code on SQLite and PostgreSQL: migrations and concurrent audit appends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _concurrency import WorkerFailed, hammer
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, select

import geomesh.models  # noqa: F401  (registers the tables)
from geomesh import audit, audit_info, db
from geomesh.errors import ConfigError
from geomesh.models import AuditEvent, Item, ItemState

WORKERS = 4
#: the audit key of these engine-level tests (a workspace loads its own)
KEY = b"k" * 32
EVENTS_PER_WORKER = 25


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'geomesh.db'}"
    env: dict[str, str] = request.getfixturevalue("postgres_env")
    return env["GEOMESH_DATABASE_URL"]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = db.make_engine(database_url)
    yield eng
    eng.dispose()


def _head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


# ------------------------------------------------------------------ migrations


def test_migrate_creates_every_table_at_the_head_revision(engine: Engine) -> None:
    db.migrate(engine)
    tables = set(inspect(engine).get_table_names())
    assert set(SQLModel.metadata.tables) <= tables
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == (
            _head_revision()
        )


def test_migrate_twice_is_a_no_op_and_keeps_data(engine: Engine) -> None:
    db.migrate(engine)
    with db.transaction(engine, info=audit_info.keyed(KEY)) as s:
        audit.append(s, actor="alice", action="ingest", target="item-1")
    db.migrate(engine)
    with Session(engine) as s:
        assert len(s.exec(select(AuditEvent)).all()) == 1
        assert audit.verify(s, KEY) == []


def migrate_in_worker(index: int, url: str) -> str:
    """Hammer worker: run the migrations (engine connected in setup), report the revision."""
    engine = _ENGINES[url]
    try:
        db.migrate(engine)
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())
    finally:
        engine.dispose()


def test_replicas_starting_together_migrate_once(database_url: str, engine: Engine) -> None:
    """N processes call migrate on an empty database at the same instant: all succeed."""
    revisions = hammer(migrate_in_worker, 3, database_url, setup=connect_engine)
    assert revisions == [_head_revision()] * 3
    assert set(SQLModel.metadata.tables) <= set(inspect(engine).get_table_names())


def test_postgres_engine_is_postgres_and_sqlite_is_not(engine: Engine, database_url: str) -> None:
    assert db.is_postgres(engine) == database_url.startswith("postgresql")


def test_transaction_rolls_back_on_error(engine: Engine) -> None:
    db.migrate(engine)
    with pytest.raises(RuntimeError), db.transaction(engine, info=audit_info.keyed(KEY)) as s:
        audit.append(s, actor="alice", action="ingest", target="item-1")
        raise RuntimeError("boom")
    with Session(engine) as s:
        assert s.exec(select(AuditEvent)).all() == []
        assert audit.verify(s, KEY) == []


def test_invalid_url_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        db.make_engine("postgresql+psycopg://geomesh:hunter2-secret@db:notaport/geomesh")
    assert "hunter2-secret" not in str(info.value)
    assert "GEOMESH_DATABASE_URL" in str(info.value) or "database URL" in str(info.value)


# ------------------------------------------------------------------ concurrency


_ENGINES: dict[str, Engine] = {}  # per worker process: setup opens, the worker reuses


def connect_engine(index: int, url: str, *_: object) -> None:
    """Hammer setup: engine created and connected before the start barrier."""
    engine = _ENGINES[url] = db.make_engine(url)
    with engine.connect():
        pass


def append_events(index: int, url: str, count: int) -> list[str]:
    """Hammer worker: ``count`` audit events, one transaction each (runs in a child process)."""
    engine = _ENGINES.get(url) or db.make_engine(url)
    ids: list[str] = []
    try:
        for n in range(count):
            with db.transaction(engine, info=audit_info.keyed(KEY)) as s:
                event = audit.append(
                    s,
                    actor=f"worker-{index}",
                    action="hammer",
                    target=f"w{index}-{n}",
                    details={"worker": index, "n": n},
                )
                ids.append(event.event_id)
    finally:
        engine.dispose()
    return ids


def _assert_chain_complete(engine: Engine, ids_per_worker: list[list[str]], before: int) -> None:
    expected = before + sum(len(ids) for ids in ids_per_worker)
    with Session(engine) as s:
        events = s.exec(select(AuditEvent).order_by(col(AuditEvent.seq))).all()
        assert audit.verify(s, KEY) == []
    assert [e.seq for e in events] == list(range(1, expected + 1)), "gap or duplicate seq"
    stored = {e.event_id for e in events}
    for worker, ids in enumerate(ids_per_worker):
        assert len(ids) == EVENTS_PER_WORKER
        lost = [i for i in ids if i not in stored]
        assert not lost, f"worker {worker} lost {len(lost)} committed events"
        # each worker's own events are chained in the order it committed them
        mine = [e.details["n"] for e in events if e.actor == f"worker-{worker}"]
        assert mine == list(range(EVENTS_PER_WORKER))


def test_concurrent_appenders_lose_no_event(engine: Engine, database_url: str) -> None:
    db.migrate(engine)
    with db.transaction(
        engine, info=audit_info.keyed(KEY)
    ) as s:  # the chain head exists: steady state
        audit.append(s, actor="setup", action="seed", target="chain")
    ids = hammer(append_events, WORKERS, database_url, EVENTS_PER_WORKER, setup=connect_engine)
    _assert_chain_complete(engine, ids, before=1)


def test_concurrent_first_appenders_on_a_fresh_sqlite_database(tmp_path: Path) -> None:
    """Nobody has appended yet: the workers race to create the AuditHead row.

    (PostgreSQL: see the deterministic interleaving test below.)
    """
    database_url = f"sqlite:///{tmp_path / 'geomesh.db'}"
    engine = db.make_engine(database_url)
    db.migrate(engine)
    ids = hammer(append_events, WORKERS, database_url, EVENTS_PER_WORKER, setup=connect_engine)
    _assert_chain_complete(engine, ids, before=0)


def _wait_until_a_backend_waits_for_a_lock(engine: Engine, worker: threading.Thread) -> bool:
    """Poll pg_stat_activity until some session of this database waits on a lock."""
    deadline = time.monotonic() + 60  # a safety net, not a timing assertion
    with engine.connect() as conn:
        while worker.is_alive() and time.monotonic() < deadline:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
            conn.rollback()  # a fresh snapshot for the next poll
            if waiting:
                return True
            time.sleep(0.02)
    return False


@pytest.mark.postgres
@pytest.mark.parametrize(
    "fresh",
    [
        pytest.param(False, id="head-exists"),
        pytest.param(True, id="fresh-database"),
    ],
)
def test_postgres_second_appender_waits_for_the_first(
    postgres_env: dict[str, str], fresh: bool
) -> None:
    """Deterministic interleaving: B appends while A's append is uncommitted.

    B must block on the chain head until A commits, then chain after A's event.
    """
    engine = db.make_engine(postgres_env["GEOMESH_DATABASE_URL"])
    try:
        db.migrate(engine)
        before = 0
        if not fresh:
            with db.transaction(engine, info=audit_info.keyed(KEY)) as s:
                audit.append(s, actor="setup", action="seed", target="chain")
            before = 1
        outcome: dict[str, Any] = {}

        def second() -> None:
            try:
                with db.transaction(engine, info=audit_info.keyed(KEY)) as s:
                    outcome["seq"] = audit.append(s, actor="b", action="x", target="b").seq
            except Exception as exc:  # reported by the assertions below
                outcome["error"] = exc

        worker = threading.Thread(target=second, name="second-appender")
        with db.transaction(engine, info=audit_info.keyed(KEY)) as s:
            first = audit.append(s, actor="a", action="x", target="a")
            worker.start()
            blocked = _wait_until_a_backend_waits_for_a_lock(engine, worker)
        worker.join(timeout=60)
        assert not worker.is_alive(), "second appender still blocked after the first committed"
        assert "error" not in outcome, f"second appender failed: {outcome.get('error')!r}"
        assert blocked, "second appender did not wait for the chain head"
        assert first.seq == before + 1
        assert outcome["seq"] == before + 2
        with Session(engine) as s:
            assert audit.verify(s, KEY) == []
    finally:
        engine.dispose()


def test_hammer_reports_a_failing_worker() -> None:
    with pytest.raises(WorkerFailed, match="worker 1"):
        hammer(fail_in_worker_one, 2)


def fail_in_worker_one(index: int) -> int:
    if index == 1:
        raise RuntimeError("worker one fails on purpose")
    return index


# ------------------------------------------------------------------ data migrations


def _upgrade(engine: Engine, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_0002_moves_withdrawn_release_items_out_of_rolled_back(engine: Engine) -> None:
    """A database at 0001 with both meanings of ``rolled_back`` upgrades to head with each in
    its own state; a P1-routed tile keeps ``rolled_back``; ``lock_version`` is gone."""
    _upgrade(engine, "0001")
    with engine.begin() as conn:
        # the 0001 schema as deployed before 0002: a native enum on PostgreSQL, lock_version
        if engine.dialect.name == "postgresql":
            states = "', '".join(
                s
                for s in (
                    "staging",
                    "validation",
                    "production",
                    "quarantined",
                    "rolled_back",
                    "superseded",
                    "deprecated",
                    "discarded",
                )
            )
            conn.execute(text(f"CREATE TYPE itemstate AS ENUM ('{states}')"))
            conn.execute(
                text("ALTER TABLE item ALTER COLUMN state TYPE itemstate USING state::itemstate")
            )
        conn.execute(text("ALTER TABLE item ADD COLUMN lock_version INTEGER NOT NULL DEFAULT 0"))
        conn.execute(
            text(
                "INSERT INTO product (id, config_json, config_digest, version_counter, created_at, "
                "updated_at) VALUES ('p', '{}', 'd', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        for item_id, state in (
            ("routed", "rolled_back"),
            ("removed", "rolled_back"),
            ("restored", "production"),
        ):
            conn.execute(
                text(
                    "INSERT INTO item (id, product_id, source, source_key, content_digest, size,"
                    " object_key, stac_key, stac, state, submitted_by, created_at, updated_at)"
                    " VALUES (:id, 'p', 's', 'k', :id, 1, 'o', 's', '{}', :state, 'a',"
                    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"id": item_id, "state": state},
            )
        story = [  # (target, action, before, after)
            ("routed", "rollback", "staging", "rolled_back"),
            ("removed", "promote", "validation", "production"),
            ("removed", "rollback.item", "production", "rolled_back"),
            ("restored", "promote", "validation", "production"),
            ("restored", "rollback.release", "production", "rolled_back"),
            ("restored", "rollback.release", "rolled_back", "production"),
        ]
        for seq, (target, action, before, after) in enumerate(story, start=1):
            conn.execute(
                text(
                    "INSERT INTO auditevent (seq, event_id, timestamp, actor, action, product_id,"
                    " target, state_before, state_after, details, prev_hash, hash) VALUES"
                    " (:seq, :eid, CURRENT_TIMESTAMP, 'a', :action, 'p', :target, :before,"
                    " :after, '{}', 'x', :hash)"
                ),
                {
                    "seq": seq,
                    "eid": f"e{seq}",
                    "action": action,
                    "target": target,
                    "before": before,
                    "after": after,
                    "hash": f"h{seq}",
                },
            )
    db.migrate(engine)
    with engine.connect() as conn:
        states = dict(conn.execute(text("SELECT id, state FROM item")).all())
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == (
            _head_revision()
        )
    assert states == {"routed": "rolled_back", "removed": "withdrawn", "restored": "production"}
    assert "lock_version" not in {c["name"] for c in inspect(engine).get_columns("item")}
    with Session(engine) as session:  # the ORM reads every state back
        assert {i.id: i.state for i in session.exec(select(Item)).all()}["removed"] is (
            ItemState.withdrawn
        )


def test_migrations_match_the_models(engine: Engine) -> None:
    """``alembic check``: a database migrated to head has exactly the models' schema."""
    db.migrate(engine)
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.check(cfg)  # raises AutogenerateDiffsDetected on any drift


#: the read indexes of migration 0007 (issue 16) and the table each belongs to
READ_INDEXES = {
    "ix_auditevent_target_seq": "auditevent",
    "ix_auditevent_product_seq": "auditevent",
    "ix_finding_product_open_order": "finding",
    "ix_finding_product_rule": "finding",
    "ix_finding_item_open_severity": "finding",
    "ix_item_product_state_created": "item",
    "ix_item_product_source_state": "item",
}


def _plan(engine: Engine, sql: str, params: dict[str, Any]) -> str:
    """The query plan of ``sql`` as one text (PostgreSQL: sequential scans switched off, so
    a tiny table still shows whether an index can serve the query)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))
            rows = conn.execute(text(f"EXPLAIN {sql}"), params).all()
        else:
            rows = conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"), params).all()
    return "\n".join(" ".join(str(c) for c in row) for row in rows)


def test_0007_indexes_a_database_created_at_0001_and_keeps_its_rows(engine: Engine) -> None:
    """A database created at 0001 holding items, a run, findings and audit events upgrades
    to head: every row is still there, each read index exists, and the item-history, findings
    and queue queries are served by them (not a scan of the table)."""
    _upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO product (id, config_json, config_digest, version_counter, created_at, "
                "updated_at) VALUES ('p', '{}', 'd', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        for n, state in enumerate(("validation", "validation", "production")):
            conn.execute(
                text(
                    "INSERT INTO item (id, product_id, source, source_key, content_digest, size,"
                    " object_key, stac_key, stac, state, submitted_by, created_at, updated_at)"
                    " VALUES (:id, 'p', 's', :key, :id, 1, 'o', 's', '{}', :state, 'a',"
                    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"id": f"item-{n}", "key": f"tile-{n % 2}", "state": state},
            )
        conn.execute(
            text(
                "INSERT INTO validationrun (id, item_id, content_digest, passed, strict, actor,"
                " created_at) VALUES (1, 'item-0', 'item-0', false, false, 'a', CURRENT_TIMESTAMP)"
            )
        )
        for n, (rule, severity, is_open) in enumerate(
            (("GM-A", "P1", True), ("GM-B", "P3", True), ("GM-B", "P3", False))
        ):
            conn.execute(
                text(
                    "INSERT INTO finding (id, run_id, item_id, product_id, rule_id, severity, path,"
                    f" message, remediation, context, open, created_at) VALUES (:id, 1, 'item-0',"
                    f" 'p', :rule, '{severity}', 'x', 'm', 'r', '{{}}', :open, CURRENT_TIMESTAMP)"
                ),
                {"id": n + 1, "rule": rule, "open": is_open},
            )
        for seq in (1, 2, 3):
            conn.execute(
                text(
                    "INSERT INTO auditevent (seq, event_id, timestamp, actor, action, product_id,"
                    " target, details, prev_hash, hash) VALUES (:seq, :eid, CURRENT_TIMESTAMP,"
                    " 'a', 'ingest', 'p', :target, '{}', 'x', :hash)"
                ),
                {"seq": seq, "eid": f"e{seq}", "target": f"item-{seq % 2}", "hash": f"h{seq}"},
            )
    db.migrate(engine)
    found = {
        ix["name"]: table
        for table in set(READ_INDEXES.values())
        for ix in inspect(engine).get_indexes(table)
    }
    assert {name: found.get(name) for name in READ_INDEXES} == READ_INDEXES
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM item")).scalar_one() == 3
        assert conn.execute(
            text("SELECT rule_id FROM finding WHERE product_id = 'p' AND open ORDER BY id")
        ).scalars().all() == ["GM-A", "GM-B"]
        assert conn.execute(
            text("SELECT seq FROM auditevent WHERE target = 'item-1' ORDER BY seq")
        ).scalars().all() == [1, 3]
        assert (
            conn.execute(
                text("SELECT max(seq) FROM auditevent WHERE product_id = 'p'")
            ).scalar_one()
            == 3
        )
    history = _plan(
        engine, "SELECT seq FROM auditevent WHERE target = :t ORDER BY seq", {"t": "item-1"}
    )
    assert "ix_auditevent_target_seq" in history, history
    findings = _plan(
        engine,
        "SELECT id FROM finding WHERE product_id = :p AND open = :o"
        " ORDER BY severity, rule_id, id LIMIT 50",
        {"p": "p", "o": True},
    )
    assert "ix_finding_product_open_order" in findings, findings
    queue = _plan(
        engine,
        "SELECT id FROM item WHERE product_id = :p AND state = :s ORDER BY created_at, id",
        {"p": "p", "s": "validation"},
    )
    assert "ix_item_product_state_created" in queue, queue


def test_0008_derives_the_signoff_times_of_the_approvals_already_recorded(
    engine: Engine,
) -> None:
    """A database at 0007 holding approvals upgrades to head with one ``signoff_time`` row
    per item version approved on its content (the first such approval, never below 0 s),
    none for an item only rejected or approved on other content, and the overview's
    indexes in place."""
    _upgrade(engine, "0007")
    staged = "2026-01-01 00:00:00"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO product (id, config_json, config_digest, version_counter, created_at, "
                "updated_at) VALUES ('p', '{}', 'd', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        for n in range(4):
            conn.execute(
                text(
                    "INSERT INTO item (id, product_id, source, source_key, content_digest, size,"
                    " object_key, stac_key, stac, state, submitted_by, created_at, updated_at)"
                    " VALUES (:id, 'p', 's', :id, :id, 1, 'o', 's', '{}', 'validation', 'a',"
                    " :staged, :staged)"
                ),
                {"id": f"item-{n}", "staged": staged},
            )
        approvals = (  # (item, actor, digest, decision, time)
            ("item-0", "bob", "item-0", "approve", "2026-01-01 00:10:00"),
            ("item-0", "eve", "item-0", "approve", "2026-01-01 00:05:00"),  # the first
            ("item-1", "bob", "item-1", "reject", "2026-01-01 00:01:00"),
            ("item-2", "bob", "other", "approve", "2026-01-01 00:01:00"),  # other content
            ("item-3", "bob", "item-3", "approve", "2025-12-31 23:00:00"),  # clock skew
        )
        for item, actor, digest, decision, at in approvals:
            conn.execute(
                text(
                    "INSERT INTO approval (item_id, content_digest, actor, decision, created_at)"
                    " VALUES (:item, :digest, :actor, :decision, :at)"
                ),
                {"item": item, "digest": digest, "actor": actor, "decision": decision, "at": at},
            )
    db.migrate(engine)
    with engine.connect() as conn:
        kept = dict(
            conn.execute(text("SELECT item_id, seconds FROM signoff_time WHERE product_id = 'p'"))
            .tuples()
            .all()
        )
    assert kept == {"item-0": pytest.approx(300.0, abs=1e-3), "item-3": 0.0}
    indexes = {
        ix["name"] for table in ("item", "finding") for ix in inspect(engine).get_indexes(table)
    }
    assert {"ix_item_product_worst_state", "ix_finding_product_open_rule_item"} <= indexes


def test_the_cheap_head_check_agrees_with_alembic(engine: Engine) -> None:
    """``db.migrate`` skips Alembic when the database is at ``head_revision()``: that must be
    Alembic's own head, and an older database must still be upgraded."""
    assert db.head_revision() == _head_revision()
    _upgrade(engine, "0001")
    assert not db._at_head(engine)
    db.migrate(engine)
    assert db._at_head(engine)
