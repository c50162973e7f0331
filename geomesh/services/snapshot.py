"""The columnar snapshot of a release: stac-geoparquet for bulk readers, on demand.

Never on the promote path (a snapshot is O(items) by nature): a steward or a scheduled job
asks for it (`geomesh releases snapshot CONFIG [VERSION]`, the Releases page) once the
release is published. The file is immutable; the release row and the release index record
it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import select

from geomesh import audit, auth, faults, releases
from geomesh.models import Release
from geomesh.services.history import _resolve_release
from geomesh.services.publication import ensure_catalog, refresh_index
from geomesh.workspace import Workspace


@dataclass(frozen=True)
class SnapshotResult:
    product_id: str
    version: str
    release_id: str
    key: str
    #: True when the snapshot had been written and recorded already (nothing changed)
    already: bool

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def snapshot_release(
    ws: Workspace, product_id: str, ref: str = "current", *, actor: str
) -> SnapshotResult:
    """Write the release's stac-geoparquet snapshot and record it (idempotent).

    ``ref``: a release id, id prefix, version or 'current'. The file is written first
    (from the immutable published catalog), then one transaction records its key on the
    release row with an audit event, then the release index is rewritten; a crash between
    the steps leaves a complete file that the re-run reuses.
    """
    with ws.read() as session:
        auth.require(session, actor, "promote")
        row = _resolve_release(session, product_id, ref)
        release_id, version, recorded = row.id, row.version, row.snapshot_key
    if recorded is not None:
        refresh_index(ws, product_id)  # finish an interrupted run
        return SnapshotResult(product_id, version, release_id, recorded, already=True)
    ensure_catalog(ws, product_id, release_id)
    key = releases.write_snapshot(ws.store, product_id, version)
    faults.point("snapshot.stored")
    with ws.transaction() as session:
        auth.require(session, actor, "promote")
        row = session.exec(select(Release).where(Release.id == release_id)).one()
        if row.snapshot_key is None:
            row.snapshot_key = key
            session.add(row)
            audit.append(
                session,
                actor=actor,
                action="release.snapshot",
                target=release_id,
                product_id=product_id,
                digest=release_id,
                details={"version": version, "key": key, "format": "stac-geoparquet"},
            )
    faults.point("snapshot.committed")
    refresh_index(ws, product_id)
    return SnapshotResult(product_id, version, release_id, key, already=False)
