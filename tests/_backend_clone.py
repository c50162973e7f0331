"""Isolated catalogs on either backend, and one picture of a catalog's state for both.

The module-scoped ``places`` fixture (conftest) is a :class:`Places`: it makes *places*. A
place is one catalog:

- sqlite-local: a storage root (the SQLite file and the object areas live inside it);
- postgres-s3: a storage root (audit key file, run logs, temporary work folders), a
  PostgreSQL database and a SeaweedFS bucket pair (main + quarantine).

``places.fresh(root)`` makes an empty one; ``places.clone(template, root)`` copies a
prepared one: the root is copied (the only step on sqlite-local), the database is
``CREATE DATABASE … TEMPLATE <template's>`` and the place's own bucket pair is made to hold
exactly the template's objects, through obstore. PostgreSQL clones only a database nobody is connected
to, so the first clone ends any session left on the template and forbids new ones: from
then on the template's database is read-only, and its objects are read once and cached
(write nothing to a template after its first clone). ``places.drop(place)`` removes one: its root at once,
its database on a background thread, and its buckets go back to the session's
:class:`BucketPool`, which hands them to the next place or test (``s3_env``), reset to what
that one must hold (a new bucket costs SeaweedFS a volume, 0.2-1 s on its first write).

Costs measured on the 2-core machine (PostgreSQL 15, SeaweedFS), a template of two
releases (75 objects): the first clone ~2 s (new buckets), every further one 0.05-0.2 s
(``CREATE DATABASE … TEMPLATE`` most of it, then the objects the last place changed).

:func:`catalog_state` is what "nothing changed" compares, the same things on both
backends: every row of every table (SQL), every object of every area as ``area/key`` ->
SHA-256 (through the store API, ``ObjectStore.list`` / ``get_bytes``), and every local file
under the root that is not a store object (run logs, the audit key, temporary files) as
path -> SHA-256. :func:`stored_bytes` is everything a place keeps, for grepping.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import threading
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import SQLModel

from geomesh.settings import Settings
from geomesh.storage import AREAS, Area, LocalStore, ObjectStore
from geomesh.workspace import Workspace

from conftest import BACKEND, POSTGRES_ADMIN_URL, S3Service, require_service

#: the SQLite database and its WAL / shared-memory / journal files
_DB_FILE = "geomesh.db"
#: objects copied (and hashed) at a time against S3
_IO_THREADS = 8
#: a bucket's objects: path -> (ETag, bytes)
Objects = dict[str, tuple[str | None, bytes]]


@dataclass
class Place:
    """One catalog: where it lives and the ``GEOMESH_*`` variables that reach it."""

    root: Path
    #: GEOMESH_STORAGE_ROOT, GEOMESH_SCHEMA_DIR and, on postgres-s3, the database URL and
    #: the GEOMESH_S3_* variables (as conftest's ``S3Service.env`` builds them)
    env: dict[str, str]
    database: str | None = None
    buckets: tuple[str, ...] = ()
    frozen: bool = field(default=False, repr=False)

    @property
    def database_url(self) -> str:
        return self.env.get("GEOMESH_DATABASE_URL", f"sqlite:///{self.root / _DB_FILE}")

    def settings(self) -> Settings:
        fields = {k.removeprefix("GEOMESH_").lower(): v for k, v in self.env.items()}
        return Settings(**fields)

    def open(self, *, migrate: bool = True) -> Workspace:
        return Workspace.open(self.settings(), migrate=migrate)

    def process_env(self, **extra: str) -> dict[str, str]:
        """The environment of a CLI child on this place (see :func:`child_env`)."""
        return child_env({**self.env, **extra})


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any GEOMESH_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOMESH_")}
    env.update(extra or {})
    return env


class BucketPool:
    """The session's S3 bucket pairs (main + quarantine), reused from test to test.

    SeaweedFS gives each new bucket a collection and grows a volume for it on the first
    write: 0.2 s per bucket on this machine, up to a second on a loaded one. A pair given
    back goes to the next taker with what its last user changed put back
    (:meth:`_make_hold`): usually a few deletes.
    """

    def __init__(self, s3: S3Service) -> None:
        self.s3 = s3
        self._spare: list[tuple[str, ...]] = []
        self._lock = threading.Lock()

    def take(self, objects: list[Objects] | None = None) -> tuple[str, ...]:
        """A pair holding exactly ``objects`` (one dict per bucket; both empty when None)."""
        with self._lock:
            pair = self._spare.pop() if self._spare else None
        if pair is None:
            bucket = f"gm-{uuid.uuid4().hex[:16]}"
            pair = (bucket, f"{bucket}-quarantine")
            for name in pair:
                self.s3.create_bucket(name)
        for bucket, wanted in zip(pair, objects or [{}, {}], strict=True):
            self._make_hold(bucket, wanted)
        return pair

    def give_back(self, pair: tuple[str, ...]) -> None:
        with self._lock:
            self._spare.append(pair)

    def close(self) -> None:
        for bucket in (b for pair in self._spare for b in pair):
            try:
                self.s3.delete_bucket(bucket)
            except OSError as exc:  # cleanup only: the session's SeaweedFS data goes too
                warnings.warn(f"could not delete test bucket {bucket}: {exc}", stacklevel=1)

    def _make_hold(self, bucket: str, wanted: Objects) -> None:
        """Make ``bucket`` hold exactly ``wanted``: delete what is extra, put what is missing
        or differs (by ETag: the MD5 of a plainly PUT object's bytes)."""
        import obstore

        store = self.s3.obstore(bucket)
        have = {meta["path"]: meta.get("e_tag") for chunk in obstore.list(store) for meta in chunk}
        extra = [path for path in have if path not in wanted]
        stale = [
            path for path, (etag, _) in wanted.items() if etag is None or have.get(path) != etag
        ]
        with ThreadPoolExecutor(max_workers=_IO_THREADS) as pool:
            list(pool.map(lambda path: obstore.delete(store, path), extra))
            list(pool.map(lambda path: obstore.put(store, path, wanted[path][1]), stale))


class Places:
    """Makes, clones and drops places on the selected backend (see the module docstring)."""

    def __init__(self, schema_dir: Path | None, buckets: BucketPool | None) -> None:
        self.schema_dir = schema_dir
        self.buckets = buckets
        self.s3 = buckets.s3 if buckets is not None else None
        self._live: dict[int, Place] = {}
        #: databases of dropped places, dropped by a background thread (see drop)
        self._doomed: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._dropper: threading.Thread | None = None
        self._drop_errors: list[str] = []
        #: each template's objects, per bucket: path -> (ETag, bytes) (read once: read-only)
        self._template_objects: dict[str, list[Objects]] = {}
        self._lock = threading.Lock()
        self._admin: Any = None
        if BACKEND == "postgres-s3":
            import psycopg

            try:
                self._admin = psycopg.connect(
                    POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5
                )
            except psycopg.OperationalError as exc:
                from sqlalchemy.engine import make_url

                where = make_url(POSTGRES_ADMIN_URL).render_as_string(hide_password=True)
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                require_service(f"PostgreSQL not reachable at {where}: {first}")

    # ------------------------------------------------------------------ making places

    def fresh(self, root: Path) -> Place:
        """An empty catalog at ``root`` (its database and buckets created, nothing else)."""
        env = self._base_env(root)
        if self._admin is None:
            return self._keep(Place(root, env))
        name = f"gm_{uuid.uuid4().hex[:20]}"
        self._sql("CREATE DATABASE {}", name)
        return self._keep(self._remote(root, env, name, [{}, {}]))

    def clone(self, template: Place, root: Path) -> Place:
        """A copy of ``template`` at ``root``; the template is frozen afterwards."""
        shutil.copytree(template.root, root, symlinks=True)
        env = self._base_env(root)
        if template.database is None:
            return self._keep(Place(root, env))
        self.freeze(template)
        name = f"gm_{uuid.uuid4().hex[:20]}"
        self._sql("CREATE DATABASE {} TEMPLATE {}", name, template.database)
        return self._keep(self._remote(root, env, name, self._objects_of(template)))

    def freeze(self, place: Place) -> None:
        """End every session on the place's database and refuse new ones (a template)."""
        if place.database is None or place.frozen:
            return
        self._sql("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false", place.database)
        self._end_sessions(place.database)
        place.frozen = True

    def drop(self, place: Place) -> None:
        """Remove the place: its root now, its database on a background thread, its
        buckets kept for the next place made (see the module docstring)."""
        with self._lock:
            self._live.pop(id(place), None)
        shutil.rmtree(place.root, ignore_errors=True)
        if place.database is not None:
            self._end_sessions(place.database)
            self._drop_later(place.database)
        if place.buckets:
            assert self.buckets is not None
            self.buckets.give_back(place.buckets)

    def close(self) -> None:
        for place in list(self._live.values()):
            self.drop(place)
        if self._dropper is not None:
            self._doomed.put(None)
            self._dropper.join()
        for error in self._drop_errors:  # cleanup only: reported, not failed
            warnings.warn(error, stacklevel=1)
        if self._admin is not None:
            self._admin.close()

    # ------------------------------------------------------------------ internals

    def _base_env(self, root: Path) -> dict[str, str]:
        env = {"GEOMESH_STORAGE_ROOT": str(root)}
        if self.schema_dir is not None:
            env["GEOMESH_SCHEMA_DIR"] = str(self.schema_dir)
        return env

    def _remote(
        self,
        root: Path,
        env: dict[str, str],
        database: str,
        objects: list[Objects],
    ) -> Place:
        """A postgres-s3 place on ``database`` whose buckets hold exactly ``objects``."""
        from sqlalchemy.engine import make_url

        assert self.buckets is not None
        url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+psycopg", database=database)
        buckets = self.buckets.take(objects)
        env["GEOMESH_DATABASE_URL"] = url.render_as_string(hide_password=False)
        env.update(self.buckets.s3.env(*buckets))
        return Place(root, env, database, buckets)

    def _objects_of(self, template: Place) -> list[Objects]:
        """The template's objects per bucket (read once: a template is read-only)."""
        assert self.s3 is not None and template.database is not None
        with self._lock:
            cached = self._template_objects.get(template.database)
        if cached is not None:
            return cached
        objects = [_bucket_objects(self.s3.obstore(bucket)) for bucket in template.buckets]
        with self._lock:
            self._template_objects[template.database] = objects
        return objects

    def _drop_later(self, database: str) -> None:
        """``DROP DATABASE`` on a thread of its own: it waits for a checkpoint (0.2-1 s on
        this machine), which the next case need not wait for."""
        with self._lock:
            if self._dropper is None:
                self._dropper = threading.Thread(target=self._drop_databases, daemon=True)
                self._dropper.start()
        self._doomed.put(database)

    def _drop_databases(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            while (name := self._doomed.get()) is not None:
                statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                try:
                    conn.execute(statement.format(sql.Identifier(name)))
                except psycopg.Error as exc:
                    self._drop_errors.append(f"could not drop test database {name}: {exc}")

    def _keep(self, place: Place) -> Place:
        with self._lock:
            self._live[id(place)] = place
        return place

    def _sql(self, statement: str, *databases: str) -> None:
        """A statement on the maintenance connection, ``{}`` = database names (quoted)."""
        from psycopg import sql

        names = [sql.Identifier(d) for d in databases]
        with self._lock:
            self._admin.execute(sql.SQL(statement).format(*names))

    def _end_sessions(self, database: str) -> None:
        with self._lock:
            self._admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )


def _bucket_objects(store: Any) -> Objects:
    """Every object of a bucket (listed raw: not only the store's areas)."""
    import obstore

    metas = [meta for chunk in obstore.list(store) for meta in chunk]
    with ThreadPoolExecutor(max_workers=_IO_THREADS) as pool:
        data = list(pool.map(lambda m: bytes(obstore.get(store, m["path"]).bytes()), metas))
    return {m["path"]: (m.get("e_tag"), d) for m, d in zip(metas, data, strict=True)}


# ------------------------------------------------------------------ what a catalog holds


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_objects(store: ObjectStore) -> Iterator[tuple[str, str, bytes]]:
    """(area, key, bytes) of every object of every area, through the store API."""
    keys = [(area, key) for area in AREAS for key in store.list(area)]
    with ThreadPoolExecutor(max_workers=_IO_THREADS) as pool:
        for (area, key), data in zip(
            keys, pool.map(lambda ak: store.get_bytes(*ak), keys), strict=True
        ):
            yield area, key, data


def table_rows(ws: Workspace) -> dict[str, list[str]]:
    """Every row of every table of the schema, per table (sorted ``repr`` of the row)."""
    with ws.read() as s:
        return {
            table.name: sorted(repr(tuple(r)) for r in s.execute(table.select()))
            for table in SQLModel.metadata.sorted_tables
        }


def _local_files(ws: Workspace, objects: Iterable[tuple[Area, str]]) -> Iterator[Path]:
    """Files under the root that are neither the SQLite database nor a store object."""
    stored: set[Path] = set()
    if isinstance(ws.store, LocalStore):
        store = ws.store
        stored = {store.root / store.prefixes[area] / key for area, key in objects}
    for p in sorted(ws.root.rglob("*")):
        if p.is_file() and not p.name.startswith(_DB_FILE) and p not in stored:
            yield p


def catalog_state(ws: Workspace, *, skip_local: tuple[str, ...] = ()) -> dict[str, Any]:
    """Rows, objects (``area/key`` -> SHA-256) and other local files (path -> SHA-256);
    ``skip_local`` names top-level folders of the root to leave out (e.g. ``logs``)."""
    objects = {(a, k): _sha256(data) for a, k, data in stored_objects(ws.store)}
    local = {
        rel: _sha256(p.read_bytes())
        for p in _local_files(ws, objects)
        if (rel := p.relative_to(ws.root).as_posix()).split("/", 1)[0] not in skip_local
    }
    return {
        "rows": table_rows(ws),
        "objects": {f"{a}/{k}": digest for (a, k), digest in sorted(objects.items())},
        "local": local,
    }


def place_state(place: Place, *, skip_local: tuple[str, ...] = ()) -> dict[str, Any]:
    """:func:`catalog_state` of a place, on a workspace opened (and closed) for it."""
    ws = place.open(migrate=False)
    try:
        return catalog_state(ws, skip_local=skip_local)
    finally:
        ws.close()


def _database_dump(place: Place) -> Iterator[bytes]:
    """Every value of every column of every table of a PostgreSQL place: ``bytea`` as its
    raw bytes, anything else as PostgreSQL's text form (json, text, numbers, times, …)."""
    import psycopg
    from psycopg import sql

    url = place.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        ).fetchall()
        for table, column, kind in columns:
            value = sql.Identifier(column)
            if kind != "bytea":
                value = sql.SQL("{}::text").format(value)
            query = sql.SQL("SELECT {} FROM {}").format(value, sql.Identifier(table))
            for (cell,) in conn.execute(query):
                if cell is not None:
                    yield bytes(cell) if kind == "bytea" else str(cell).encode()


def stored_bytes(places: Places, place: Place) -> bytes:
    """Everything the place keeps, for grepping: every file under the root (the SQLite
    database and its WAL included), and on postgres-s3 a dump of every column of every
    table and every object of both buckets (listed raw, not only the store's areas)."""
    parts = [p.read_bytes() for p in sorted(place.root.rglob("*")) if p.is_file()]
    if place.database is not None:
        parts.extend(_database_dump(place))
    for bucket in place.buckets:
        assert places.s3 is not None
        parts.extend(data for _, data in _bucket_objects(places.s3.obstore(bucket)).values())
    return b"\n".join(parts)
