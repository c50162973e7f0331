"""The re-clip task: a tile rolled back for a P1 boundary failure, ingested again clipped.

Routing queues a ``reclip`` task when a P1 boundary finding rolled a tile back and the
product does not clip (``services.routing``); ``geomesh worker`` runs it here:

1. the tile's source is read again with ``ingestion.clip`` forced on (the product's
   registered config otherwise: forcing the clip registers no new policy version);
2. the clipped COG is staged as a new item (``services.ingest.stage_tile``) whose STAC
   carries a ``derived_from`` link to the rolled-back item's JSON and the property
   ``geomesh:derived_from`` naming it; its row's ``derived_from`` names it too
   (``reclip.staged``, audited);
3. the new item is validated and routed like any tile.

Every step is idempotent, so a worker killed half-way leaves a task whose re-run converges
(the same source gives the same bytes, so staging finds the item it staged before). A
source that cannot be re-read fails the task for good, with a ``GM-RECLIP-001`` finding
on the rolled-back item that stewards see beside its boundary findings. A tile whose
footprint does not touch the domain at all (overlap 0) is not re-read: clipping cannot
help, and the task ends with that answer (:func:`skip_reclip`).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlmodel import Session

from geomesh import audit, auth
from geomesh.config import ProductConfig
from geomesh.errors import NotFound, TaskError
from geomesh.models import Item, Severity, Task, ValidationRun, utcnow
from geomesh.opening import OpeningPolicy
from geomesh.services.findings import latest_run
from geomesh.services.ingest import stage_tile
from geomesh.services.lookup import get_item
from geomesh.services.pipeline import validate_and_route
from geomesh.services.products import registered_config
from geomesh.services.validation import finding_record
from geomesh.storage import TMP_PREFIX
from geomesh.tiles import SourceMeta, object_href, prepare_tile, source_digest_for
from geomesh.validation.registry import make_finding
from geomesh.workspace import Workspace

RULE_ID: Final = "GM-RECLIP-001"
#: the STAC property naming the rolled-back item a re-clipped item was derived from
DERIVED_PROPERTY: Final = "geomesh:derived_from"
NOTHING_INSIDE: Final = "no part of the tile lies inside the domain: clipping cannot help"


@dataclass(frozen=True)
class ReclipResult:
    task_id: int
    rolled_back_id: str
    item_id: str
    state: str | None
    route: str | None
    #: True when this run staged the item (False: a previous run had staged it already)
    staged: bool

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def clip_forced(config: ProductConfig) -> ProductConfig:
    """The product's config with ``ingestion.clip`` on (for the file work only)."""
    return config.model_copy(
        update={"ingestion": config.ingestion.model_copy(update={"clip": True})}
    )


def run_reclip(
    ws: Workspace, task_id: int, item_id: str, *, actor: str = auth.SYSTEM
) -> ReclipResult:
    """Re-ingest the rolled-back item's source clipped to the domain, stage, link and route.

    Raises a ``GeomeshError`` when the source cannot be re-read or clipped (the worker then
    fails the task with :func:`record_failure`).
    """
    with ws.read() as session:
        auth.require(session, actor, "ingest")
        old = get_item(session, item_id)
        config = registered_config(session, old.product_id)
        source, stac_key = old.source, old.stac_key
    forced = clip_forced(config)
    policy = OpeningPolicy.operator(ws.settings, config)
    workdir = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}reclip-", dir=ws.root))
    try:
        prepared = prepare_tile(
            forced,
            source,
            workdir,
            source_digest=source_digest_for(source, forced),
            policy=policy,
            flush=ws.store.adopts_files,
        )
        prepared.source_meta = SourceMeta(
            source_item_id=None,
            source_etag=None,
            derived_from=object_href(ws.store, "staging", stac_key),
            properties={DERIVED_PROPERTY: item_id},
        )
        staged = stage_tile(ws, config, prepared, actor=actor)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert staged.item_id is not None
    _link(ws, staged.item_id, item_id, task_id, clipped=prepared.clipped, actor=actor)
    out = validate_and_route(ws, config, staged.item_id, actor=actor)
    return ReclipResult(
        task_id=task_id,
        rolled_back_id=item_id,
        item_id=staged.item_id,
        state=out.state,
        route=out.action,
        staged=staged.status == "staged",
    )


def skip_reclip(
    ws: Workspace, task_id: int, item_id: str, *, actor: str = auth.SYSTEM
) -> dict[str, Any]:
    """A tile with no part inside the domain: clipping cannot help, so nothing is re-read.
    The task ends ``done`` with that answer (audited ``reclip.skipped``); the rolled-back
    item keeps its GM-BOUNDARY-001 finding, which already says why."""
    with ws.transaction() as session:
        auth.require(session, actor, "ingest")
        item = get_item(session, item_id)
        audit.append(
            session,
            actor=actor,
            action="reclip.skipped",
            target=item.id,
            product_id=item.product_id,
            state_before=item.state.value,
            state_after=item.state.value,
            digest=item.content_digest,
            details={"task_id": task_id, "reason": NOTHING_INSIDE},
        )
    return {"rolled_back_id": item_id, "item_id": None, "skipped": NOTHING_INSIDE}


def _link(
    ws: Workspace, new_id: str, old_id: str, task_id: int, *, clipped: bool, actor: str
) -> None:
    """Record on the new item's row which rolled-back item it was derived from (once)."""
    with ws.transaction() as session:
        auth.require(session, actor, "ingest")
        item = get_item(session, new_id, lock=True)  # two runs of the task link it once
        if item.derived_from == old_id:
            return
        if item.derived_from is not None:
            raise TaskError(
                f"item {new_id} is already derived from {item.derived_from}, not {old_id}"
            )
        item.derived_from = old_id
        item.updated_at = utcnow()
        session.add(item)
        audit.append(
            session,
            actor=actor,
            action="reclip.staged",
            target=new_id,
            product_id=item.product_id,
            state_after=item.state.value,
            digest=item.content_digest,
            details={"derived_from": old_id, "task_id": task_id, "clipped": clipped},
        )


def record_failure(session: Session, task: Task, error: str) -> None:
    """In the task's failing transaction: a ``GM-RECLIP-001`` finding on the rolled-back
    item (added to its latest validation run, beside the boundary findings) and an audit
    event, so the Findings page and the item's history say why no re-clipped tile came."""
    if task.item_id is None:
        return
    item = session.get(Item, task.item_id)
    if item is None:
        raise NotFound(f"item {task.item_id!r} of task {task.id} does not exist")
    run = latest_run(session, item.id)
    if run is None:
        run = ValidationRun(
            item_id=item.id,
            content_digest=item.content_digest,
            passed=False,
            worst_severity=Severity.P2,
            actor=auth.SYSTEM,
        )
        session.add(run)
        session.flush()
    assert run.id is not None
    finding = make_finding(
        RULE_ID,
        item_id=item.id,
        path="assets",
        message=f"the automatic re-clip (task {task.id}) failed: {error}",
        context={"task_id": task.id, "source": item.source},
    )
    session.add(finding_record(run.id, item, finding))
    audit.append(
        session,
        actor=auth.SYSTEM,
        action="reclip.failed",
        target=item.id,
        product_id=item.product_id,
        state_before=item.state.value,
        state_after=item.state.value,
        digest=item.content_digest,
        details={"task_id": task.id, "error": error, "finding": RULE_ID},
    )
