"""Engine creation, transactions and Alembic migrations (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlmodel import Session, create_engine

from geomesh import faults
from geomesh.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: PostgreSQL advisory lock serialising concurrent `migrate` calls ("geom" in ASCII)
MIGRATION_LOCK_KEY = 0x67656F6D


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys, a busy timeout and BEGIN IMMEDIATE."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError and ValueError alike
        raise ConfigError(
            f"database URL is not valid ({type(exc).__name__}); "
            "use sqlite:///path.db or postgresql+psycopg://user@host/db"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the folder of the database {parsed.database}: {exc.strerror}",
                    hint="check GEOMESH_DATABASE_URL / GEOMESH_STORAGE_ROOT",
                ) from None
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # take the write lock up front: no deadlocked lock upgrades between writers
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except (ImportError, ArgumentError) as exc:  # no such dialect, or its driver is missing
        raise ConfigError(
            f"cannot use the database {parsed.render_as_string(hide_password=True)}: no "
            f"installed driver for {parsed.drivername!r} ({type(exc).__name__})",
            hint="use sqlite:///path.db or postgresql+psycopg://user@host/db",
        ) from None


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # replicas starting together: one migrates, the others wait here, then find
                # the schema at head (SQLite: BEGIN IMMEDIATE already serialises)
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except OperationalError as exc:
        where = engine.url.render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise ConfigError(
            f"cannot open the database {where}: {reason}",
            hint="check GEOMESH_DATABASE_URL and that the server is running",
        ) from None


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        with session.begin():
            yield session
            session.flush()
            faults.point("db.before_commit")
        faults.point("db.after_commit")
