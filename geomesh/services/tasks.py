"""The work queue: ``task`` rows that ``geomesh worker`` claims with a lease.

A task is enqueued in the caller's transaction (:func:`enqueue`, e.g. by routing's P1
route) or on its own (:func:`enqueue_task`). A worker claims one due task at a time
(:func:`claim_task`): ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several
workers never take the same row, with the lease's end computed from the DATABASE clock at
the moment of the claim. While the task runs, its worker renews the lease
(:func:`renew_lease`, every third of it: ``services.worker``), so a task may run longer
than its lease. A worker that dies (SIGKILL, lost host) simply stops renewing: once its
lease has ended the task is claimable again. A finished task is ``done``; a
failure is retried with exponential backoff until ``max_attempts``, then the task is
``failed`` (the dead-letter state; :func:`retry_tasks` puts it back). Every step is audited.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlmodel import Session, col, func, or_, select

from geomesh import audit, auth
from geomesh.db import db_now
from geomesh.errors import NotFound, TaskError
from geomesh.models import OutboxMessage, OutboxStatus, Task, TaskStatus, as_utc, utcnow
from geomesh.redact import redact
from geomesh.workspace import Workspace

#: task kind -> the permission whoever runs (or enqueues) it needs
KIND_PERMISSIONS: Final[dict[str, str]] = {
    "reclip": "ingest",
    "snapshot": "promote",
    "preview": "validate",
}
DEFAULT_LEASE_S: Final = 600.0
MAX_BACKOFF_S: Final = 3600.0
MAX_ERROR_CHARS: Final = 2000


def _permission(kind: str) -> str:
    try:
        return KIND_PERMISSIONS[kind]
    except KeyError:
        allowed = ", ".join(sorted(KIND_PERMISSIONS))
        raise TaskError(f"unknown task kind {kind!r}; known kinds: {allowed}") from None


def enqueue(
    session: Session,
    *,
    kind: str,
    product_id: str,
    item_id: str | None = None,
    details: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = 3,
) -> Task:
    """Queue a task in the caller's transaction; the same ``dedupe_key`` is queued once."""
    _permission(kind)
    if dedupe_key is not None:
        existing = session.exec(select(Task).where(Task.dedupe_key == dedupe_key)).first()
        if existing is not None:
            return existing
    task = Task(
        kind=kind,
        product_id=product_id,
        item_id=item_id,
        details=dict(details or {}),
        dedupe_key=dedupe_key,
        max_attempts=max_attempts,
    )
    session.add(task)
    session.flush()
    return task


def enqueue_task(
    ws: Workspace,
    kind: str,
    product_id: str,
    *,
    actor: str,
    item_id: str | None = None,
    details: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
) -> int:
    """Queue a task on its own (role of the task's kind checked; audited). Idempotent by
    ``dedupe_key``."""
    with ws.transaction() as session:
        auth.require(session, actor, _permission(kind))
        task = enqueue(
            session,
            kind=kind,
            product_id=product_id,
            item_id=item_id,
            details=details,
            dedupe_key=dedupe_key,
        )
        assert task.id is not None
        _audit(session, task, "enqueue", actor=actor, item_id=item_id, dedupe_key=dedupe_key)
        return task.id


@dataclass(frozen=True)
class Claimed:
    """A task a worker holds until ``lease_expires_at`` (a detached copy of the row)."""

    id: int
    kind: str
    product_id: str
    item_id: str | None
    details: dict[str, Any]
    attempt: int
    max_attempts: int
    lease_expires_at: datetime
    #: True when the previous holder's lease had ended (it died or hung)
    reclaimed: bool


def claim_task(
    ws: Workspace,
    owner: str,
    *,
    actor: str = auth.SYSTEM,
    lease_s: float = DEFAULT_LEASE_S,
    kinds: Iterable[str] | None = None,
    now: datetime | None = None,
) -> Claimed | None:
    """Take the oldest due task (queued and due, or running with an ended lease), or None.

    One short transaction: the row is locked with ``SKIP LOCKED`` (PostgreSQL; SQLite's
    ``BEGIN IMMEDIATE`` serialises writers), and the lease runs from the database clock.
    """
    wanted = sorted(set(kinds)) if kinds is not None else sorted(KIND_PERMISSIONS)
    with ws.transaction() as session:
        clock = now or db_now(session)
        stmt = (
            select(Task)
            .where(col(Task.kind).in_(wanted))
            .where(
                or_(
                    (col(Task.status) == TaskStatus.queued.value) & (col(Task.run_after) <= clock),
                    (col(Task.status) == TaskStatus.running.value)
                    & (col(Task.lease_expires_at) < clock),
                )
            )
            .order_by(col(Task.id))
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        task = session.exec(stmt).first()
        if task is None:
            return None
        assert task.id is not None
        auth.require(session, actor, _permission(task.kind))
        reclaimed = task.status == TaskStatus.running.value
        previous_owner = task.lease_owner
        if reclaimed and task.attempts >= task.max_attempts:
            # every attempt died with its worker: give up rather than kill workers forever
            _finish_failed(
                session,
                task,
                f"the lease of attempt {task.attempts} ended without a result "
                f"(worker {previous_owner} stopped); giving up after {task.attempts} attempts",
                actor=actor,
            )
            return None
        task.status = TaskStatus.running.value
        task.lease_owner = owner
        task.lease_expires_at = clock + timedelta(seconds=lease_s)
        task.attempts += 1
        _save(
            session,
            task,
            "start",
            actor=actor,
            item_id=task.item_id,
            attempt=task.attempts,
            worker=owner,
            reclaimed_from=previous_owner if reclaimed else None,
        )
        return Claimed(
            id=task.id,
            kind=task.kind,
            product_id=task.product_id,
            item_id=task.item_id,
            details=dict(task.details),
            attempt=task.attempts,
            max_attempts=task.max_attempts,
            lease_expires_at=as_utc(task.lease_expires_at),
            reclaimed=reclaimed,
        )


def _save(session: Session, task: Task, action: str, *, actor: str, **details: Any) -> None:
    """Save the changed task row and write its audit event, in the caller's transaction."""
    task.updated_at = utcnow()
    session.add(task)
    _audit(session, task, action, actor=actor, **details)


def _audit(session: Session, task: Task, action: str, *, actor: str, **details: Any) -> None:
    """The audit event ``task.<action>`` of ``task``: its kind and ``details``."""
    audit.append(
        session,
        actor=actor,
        action=f"task.{action}",
        target=f"task:{task.id}",
        product_id=task.product_id,
        details={"kind": task.kind, **details},
    )


def _held(session: Session, task_id: int, owner: str) -> Task | None:
    """The task row while ``owner`` still holds its lease (None: it was lost or finished)."""
    task = session.exec(select(Task).where(Task.id == task_id).with_for_update()).first()
    if task is None or task.status != TaskStatus.running.value or task.lease_owner != owner:
        return None
    return task


def renew_lease(
    ws: Workspace,
    task_id: int,
    owner: str,
    *,
    lease_s: float = DEFAULT_LEASE_S,
    actor: str = auth.SYSTEM,
) -> bool:
    """Extend the lease of a task ``owner`` still holds to the database clock + ``lease_s``
    (audited ``task.renew``); False when the lease was lost (it ended and another worker
    took the task over, or the task is finished)."""
    with ws.transaction() as session:
        task = _held(session, task_id, owner)
        if task is None:
            return False
        auth.require(session, actor, _permission(task.kind))
        task.lease_expires_at = db_now(session) + timedelta(seconds=lease_s)
        _save(session, task, "renew", actor=actor, attempt=task.attempts, lease_s=lease_s)
        return True


def complete_task(
    ws: Workspace,
    task_id: int,
    owner: str,
    result: dict[str, Any],
    *,
    actor: str = auth.SYSTEM,
) -> bool:
    """Mark a held task done with its result (audited); False if the lease was lost."""
    with ws.transaction() as session:
        task = _held(session, task_id, owner)
        if task is None:
            return False
        auth.require(session, actor, _permission(task.kind))
        task.status = TaskStatus.done.value
        task.result = result
        task.lease_owner = None
        task.lease_expires_at = None
        task.last_error = None
        _save(session, task, "done", actor=actor, attempt=task.attempts, result=result)
        return True


#: extra work in the failing transaction (e.g. the re-clip's finding for the steward)
OnFailure = Callable[[Session, Task, str], None]


def fail_task(
    ws: Workspace,
    task_id: int,
    owner: str,
    error: str,
    *,
    permanent: bool,
    actor: str = auth.SYSTEM,
    backoff_s: float = 30.0,
    on_failure: OnFailure | None = None,
) -> str | None:
    """Record a failed attempt of a held task: queued again after a backoff, or ``failed``
    when ``permanent`` or out of attempts (then ``on_failure`` runs in the same
    transaction). Returns the new status, None if the lease was lost."""
    error = redact(error)[:MAX_ERROR_CHARS]
    with ws.transaction() as session:
        task = _held(session, task_id, owner)
        if task is None:
            return None
        auth.require(session, actor, _permission(task.kind))
        if permanent or task.attempts >= task.max_attempts:
            _finish_failed(session, task, error, actor=actor)
            if on_failure is not None:
                on_failure(session, task, error)
            return TaskStatus.failed.value
        delay = min(backoff_s * 2 ** (task.attempts - 1), MAX_BACKOFF_S)
        task.status = TaskStatus.queued.value
        task.run_after = db_now(session) + timedelta(seconds=delay)
        task.lease_owner = None
        task.lease_expires_at = None
        task.last_error = error
        _save(
            session,
            task,
            "retry_later",
            actor=actor,
            attempt=task.attempts,
            error=error,
            delay_s=delay,
        )
        return TaskStatus.queued.value


def _finish_failed(session: Session, task: Task, error: str, *, actor: str) -> None:
    task.status = TaskStatus.failed.value
    task.last_error = error
    task.lease_owner = None
    task.lease_expires_at = None
    _save(
        session,
        task,
        "failed",
        actor=actor,
        item_id=task.item_id,
        attempts=task.attempts,
        error=error,
    )


def retry_tasks(ws: Workspace, ids: Iterable[int] | None = None, *, actor: str) -> list[int]:
    """Queue failed tasks again (all failed ones without ``ids``); audited. Idempotent."""
    wanted = sorted(set(ids)) if ids is not None else None
    with ws.transaction() as session:
        auth.require(session, actor, "outbox.retry")
        stmt = select(Task).where(Task.status == TaskStatus.failed.value)
        if wanted is not None:
            found = set(session.exec(select(Task.id).where(col(Task.id).in_(wanted))).all())
            missing = sorted(set(wanted) - found)
            if missing:
                raise NotFound(
                    f"no task with id {', '.join(map(str, missing))}",
                    hint="see `geomesh tasks list`",
                )
            stmt = stmt.where(col(Task.id).in_(wanted))
        retried: list[int] = []
        for task in session.exec(stmt.order_by(col(Task.id))).all():
            assert task.id is not None
            task.status = TaskStatus.queued.value
            task.attempts = 0
            task.run_after = db_now(session)
            retried.append(task.id)
            _save(session, task, "retry", actor=actor, last_error=task.last_error)
        return retried


def task_to_json(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "kind": task.kind,
        "product_id": task.product_id,
        "item_id": task.item_id,
        "status": task.status,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "lease_owner": task.lease_owner,
        "last_error": task.last_error,
        "result": task.result,
        "details": task.details,
        "created_at": task.created_at.isoformat(),
        "updated_at": task.updated_at.isoformat(),
    }


def list_tasks(
    ws: Workspace,
    *,
    status: str | None = None,
    product_id: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Tasks, newest first."""
    with ws.read() as session:
        stmt = select(Task).order_by(col(Task.id).desc()).limit(limit)
        if status is not None:
            if status not in {s.value for s in TaskStatus}:
                allowed = ", ".join(s.value for s in TaskStatus)
                raise TaskError(f"unknown task status {status!r}; use one of {allowed}")
            stmt = stmt.where(Task.status == status)
        if product_id is not None:
            stmt = stmt.where(Task.product_id == product_id)
        return [task_to_json(t) for t in session.exec(stmt).all()]


def get_task(ws: Workspace, task_id: int) -> dict[str, Any]:
    with ws.read() as session:
        task = session.get(Task, task_id)
        if task is None:
            raise NotFound(f"no task with id {task_id}", hint="see `geomesh tasks list`")
        return task_to_json(task)


def queue_depth(ws: Workspace) -> dict[str, Any]:
    """What the app's worker panel shows: tasks and outbox messages per status, and the
    failed tasks (newest first)."""
    with ws.read() as session:
        tasks = {
            str(status): int(n)
            for status, n in session.exec(
                select(Task.status, func.count()).group_by(col(Task.status))
            ).all()
        }
        outbox = {
            OutboxStatus(status).value: int(n)
            for status, n in session.exec(
                select(OutboxMessage.status, func.count()).group_by(col(OutboxMessage.status))
            ).all()
        }
        failed = session.exec(
            select(Task)
            .where(Task.status == TaskStatus.failed.value)
            .order_by(col(Task.id).desc())
            .limit(50)
        ).all()
        return {
            "tasks": {s.value: tasks.get(s.value, 0) for s in TaskStatus},
            "outbox": {s.value: outbox.get(s.value, 0) for s in OutboxStatus},
            "failed_tasks": [task_to_json(t) for t in failed],
        }
