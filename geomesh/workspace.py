"""The workspace every service call receives: settings, database and object store.

Not a STAC catalog: a workspace is where a deployment keeps its database and objects; the
published STAC catalogs of releases live inside its object store (see `geomesh.releases`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection, Engine

from geomesh import audit_info, db
from geomesh.errors import AuditKeyError, ConfigError, StorageError
from geomesh.settings import Settings, load_settings
from geomesh.storage import TMP_PREFIX, LocalStore, ObjectStore

if TYPE_CHECKING:  # a config: only read by the caller that loaded one; the ORM: see db.session
    from sqlmodel import Session

    from geomesh.config import ProductConfig

log = logging.getLogger(__name__)


@dataclass
class Workspace:
    """Open once per process (``Workspace.open()``) and pass to service functions."""

    settings: Settings
    root: Path
    engine: Engine
    store: ObjectStore
    schema_dir: Path
    #: the audit chain's HMAC key (never in the database, never logged)
    audit_key: bytes = field(repr=False)
    _migrated: bool = field(default=False, repr=False)
    #: where changes come from (``{"name": "app"}``, ``{"name": "cli", "os_user", "host"}``):
    #: every audit event of this workspace records it (``audit_info.CHANNEL_INFO``)
    channel: dict[str, str] = field(default_factory=dict)

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
            audit_key=load_audit_key(settings, root),
        )
        if migrate:
            db.migrate(engine)
            ws._migrated = True
        return ws

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work; commits on success, rolls back on any exception.

        When it appended audit events, the new chain head is then stored as a write-once
        checkpoint (``audit_info.write_checkpoint``); a failure there is logged, never raised,
        since the change itself has committed.
        """
        info = {**audit_info.keyed(self.audit_key), audit_info.CHANNEL_INFO: self.channel}
        with db.transaction(self.engine, info=info) as session:
            yield session
        head = session.info.get(audit_info.HEAD_INFO)
        if head is not None:
            seq, head_hash = head
            try:
                audit_info.write_checkpoint(self.store, self.audit_key, seq, head_hash)
            except StorageError as exc:
                log.warning("audit checkpoint #%s not stored: %s", seq, exc)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session over one consistent snapshot that does not wait for writers
        (``db.read_engine``: SQLite deferred in WAL mode, PostgreSQL ``READ ONLY``); a
        lost or refused connection is ``DatabaseError`` (``db.database_errors``)."""
        with (
            db.database_errors(self.engine),
            db.session(db.read_engine(self.engine)) as session,
        ):
            yield session

    @contextmanager
    def read_rows(self) -> Iterator[Connection]:
        """:meth:`read` without the ORM: a Core connection over the same read-only snapshot,
        for statements over :mod:`geomesh.tables` (``geomesh items list`` starts without
        SQLModel); rolled back at the end."""
        with db.database_errors(self.engine), db.read_engine(self.engine).connect() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()


def load_audit_key(settings: Settings, root: Path) -> bytes:
    """``GEOMESH_AUDIT_KEY``, else the key file, created (mode 0600) on first start."""
    if settings.audit_key is not None:
        key = settings.audit_key.get_secret_value().encode()
    else:
        path = settings.resolved_audit_key_file(root)
        if not path.exists():
            _create_key_file(path)
        key = _read_key_file(path)
    audit_info.keyed(key)  # refuses a key too short to be a secret
    return key


def _create_key_file(path: Path) -> None:
    """Write a new random key; a concurrent first start keeps whichever file landed first."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise AuditKeyError(
            f"cannot create the audit key file {path} ({exc.strerror})",
            hint="make its folder writable, or set GEOMESH_AUDIT_KEY",
        ) from None


def _read_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise AuditKeyError(
                f"the audit key file {path} can be read by other users "
                f"(mode {stat.S_IMODE(mode):o})",
                hint=f"chmod 600 {path}",
            )
        return path.read_text().strip().encode()
    except OSError as exc:
        raise AuditKeyError(
            f"cannot read the audit key file {path} ({exc.strerror})",
            hint="check its owner and mode (0600), or set GEOMESH_AUDIT_KEY",
        ) from None


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
