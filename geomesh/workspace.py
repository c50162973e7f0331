"""The workspace every service call receives: settings, database and object store.

Not a STAC catalog: a workspace is where a deployment keeps its database and objects; the
published STAC catalogs of releases live inside its object store (see `geomesh.releases`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session

from geomesh import db
from geomesh.config import ProductConfig
from geomesh.errors import ConfigError
from geomesh.settings import Settings, load_settings
from geomesh.storage import LocalStore, ObjectStore


@dataclass
class Workspace:
    """Open once per process (``Workspace.open()``) and pass to service functions."""

    settings: Settings
    root: Path
    engine: Engine
    store: ObjectStore
    schema_dir: Path
    _migrated: bool = field(default=False, repr=False)

    @classmethod
    def open(
        cls,
        settings: Settings | None = None,
        *,
        config: ProductConfig | None = None,
        migrate: bool = True,
    ) -> Workspace:
        settings = settings or load_settings()
        root = settings.resolved_storage_root(config.storage.root if config else None)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"the storage root {root} cannot be used as a folder ({exc.strerror})",
                hint="set GEOMESH_STORAGE_ROOT (or storage.root in the config) to a folder",
            ) from None
        url = settings.resolved_database_url(root, config.storage.database_url if config else None)
        engine = db.make_engine(url)
        store = make_store(settings, root)
        ws = cls(
            settings=settings,
            root=root,
            engine=engine,
            store=store,
            schema_dir=settings.resolved_schema_dir(root),
        )
        if migrate:
            db.migrate(engine)
            ws._migrated = True
        return ws

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work; commits on success, rolls back on any exception."""
        with db.transaction(self.engine) as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session (no implicit BEGIN IMMEDIATE on SQLite until a write)."""
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()


def make_store(settings: Settings, root: Path) -> ObjectStore:
    prefixes = {
        "staging": settings.staging_prefix,
        "quarantine": settings.quarantine_prefix,
        "production": settings.production_prefix,
        "meta": "meta",
    }
    if settings.object_store == "s3":
        from geomesh.s3 import S3Store  # optional backend, imported only when configured

        return S3Store.from_settings(settings)
    return LocalStore(root, prefixes)  # type: ignore[arg-type]
