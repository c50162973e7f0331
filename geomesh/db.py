"""Engine creation, transactions and Alembic migrations (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lazy_loader
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)

from geomesh import faults
from geomesh.errors import ConfigError, DatabaseError

if TYPE_CHECKING:
    import sqlmodel
else:  # the ORM loads with a first session: a read-only CLI call (`items list`) never does
    sqlmodel = lazy_loader.load("sqlmodel")

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: PostgreSQL advisory lock serialising concurrent `migrate` calls ("geom" in ASCII)
MIGRATION_LOCK_KEY = 0x67656F6D
#: execution option of read-only engines (``read_engine``): SQLite begins them deferred
READ_ONLY = "geomesh_read_only"
#: ids per ``IN (...)`` clause: well below SQLite's 32,766 and PostgreSQL's 65,535 parameters
IN_CHUNK = 500


def chunks(values: Sequence[T], n: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """``values`` in consecutive slices of at most ``n`` (one ``IN (...)`` clause each)."""
    for i in range(0, len(values), n):
        yield values[i : i + n]


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
            if conn.get_execution_options().get(READ_ONLY):
                # a reader: a deferred transaction reads one WAL snapshot and never takes
                # the write lock, so it neither waits for a writer nor makes one wait
                conn.exec_driver_sql("BEGIN DEFERRED")
                return
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


def read_engine(engine: Engine) -> Engine:
    """``engine`` for read-only sessions (same pool): on SQLite a deferred transaction over
    one WAL snapshot instead of ``BEGIN IMMEDIATE``; on PostgreSQL a ``READ ONLY``
    transaction, which takes no row lock and so never waits for a writer's."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(**{READ_ONLY: True, "postgresql_readonly": True})
    return engine.execution_options(**{READ_ONLY: True})


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def head_revision() -> str:
    """The newest revision, read from the file names (``NNNN_<what>.py``, revision "NNNN"):
    knowing it costs no Alembic import (tests keep it equal to Alembic's own head)."""
    names = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    return names[-1][:4]


def _at_head(engine: Engine) -> bool:
    """True when the database is already at :func:`head_revision` (one cheap query)."""
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except (OperationalError, ProgrammingError):
        return False  # no database or no alembic_version table yet
    return found == [head_revision()]


def migrate(engine: Engine) -> None:
    """Create or upgrade the schema to the newest Alembic revision.

    A database already at the head costs one query; Alembic (and its migration scripts) is
    loaded only when there is something to do, so a CLI call or an app start stays light.
    """
    if _at_head(engine):
        return
    from alembic import command  # only when there is something to migrate
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


def session(engine: Engine, *, info: dict[str, Any] | None = None) -> sqlmodel.Session:
    """An ORM session on ``engine`` whose objects stay readable after commit (SQLModel is
    imported here, with the first session of the process)."""
    return sqlmodel.Session(engine, expire_on_commit=False, info=info)


@contextmanager
def transaction(
    engine: Engine, *, info: dict[str, Any] | None = None
) -> Iterator[sqlmodel.Session]:
    """One unit of work: commit on success, roll back on any exception.

    ``info`` travels with the session (``Session.info``): the audit key rides there. A
    lost connection or a transaction the server refused is ``DatabaseError``.
    """
    with database_errors(engine), session(engine, info=info) as unit:
        with unit.begin():
            yield unit
            unit.flush()
            faults.point("db.before_commit")
        faults.point("db.after_commit")


@contextmanager
def database_errors(engine: Engine) -> Iterator[None]:
    """Name the database when it fails under a unit of work: a connection refused or lost
    (the server stopped, the network cut it mid-transaction) or a transaction the server
    refused (deadlock, lock or statement timeout) becomes ``DatabaseError``, which the CLI
    and the app show as one line. Integrity and programming errors are not the database
    failing and pass through (``retry_on_conflict`` handles the former).
    """
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        # `from None`: the driver's exception carries the statement and its parameters
        raise _database_error(engine, exc) from None
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        raise _database_error(engine, exc) from None


def _database_error(engine: Engine, exc: DBAPIError) -> DatabaseError:
    where = engine.url.render_as_string(hide_password=True)
    detail = str(exc.orig if exc.orig is not None else exc).strip()
    reason = detail.splitlines()[0][:300] if detail else type(exc).__name__
    lost = exc.connection_invalidated or isinstance(exc, InterfaceError)
    what = "the connection to the database was lost" if lost else "the database failed"
    return DatabaseError(
        f"{what} ({where}): {reason}",
        hint="check that the database server is running and reachable "
        "(GEOMESH_DATABASE_URL); a transaction commits whole or not at all, so re-run the "
        "command: it carries on from what was committed",
    )


def retry_on_conflict(unit_of_work: Callable[[bool], T], *, attempts: int = 3) -> T:
    """Run ``unit_of_work`` (one whole transaction) again when a unique row it inserts was
    committed by a concurrent writer first (``IntegrityError``).

    It is called with ``retry=False`` first, ``True`` after a conflict: the retry reads
    again and finds that row, so two workers racing on the same content end as one
    inserted it and the other found it, as in a serial run. A conflict that persists after
    ``attempts`` runs is not a race and propagates.
    """
    for attempt in range(1, attempts + 1):
        try:
            return unit_of_work(attempt > 1)
        except IntegrityError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def advisory_lock(session: sqlmodel.Session, name: str) -> None:
    """Serialise, until they end, the transactions that take the lock ``name``: for
    decisions that no single row stands for, such as "the user table is empty" (the first
    admin's bootstrap) or "this is the last enabled admin".

    A transaction-level advisory lock on PostgreSQL (released at commit or rollback; a
    waiting transaction then reads what the first one committed); nothing on SQLite, whose
    ``BEGIN IMMEDIATE`` already serialises writers. Take it first in the transaction,
    before any row lock and before the audit chain's head.
    """
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def db_now(session: sqlmodel.Session) -> datetime:
    """The database's clock (PostgreSQL ``clock_timestamp()``), for leases that several
    hosts compare; on SQLite (one host) the local UTC clock."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        value = session.execute(text("SELECT clock_timestamp()")).scalar_one()
        assert isinstance(value, datetime)
        return value
    return datetime.now(UTC)
