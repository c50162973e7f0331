"""What one pass of ``geomesh worker`` does: deliver the due outbox, run the due tasks.

:func:`run_once` is the unit the CLI loop repeats (and ``geomesh worker --once`` runs
until nothing is due). It acts as the built-in ``system`` principal: every step goes
through the services, which check that role and audit. A task's handler returns its
result (``done``); a ``GeomeshError`` (a deterministic refusal: the source is gone, the
policy says no) fails the task at once, anything else is retried with backoff up to the
task's ``max_attempts``. While a handler runs, a heartbeat thread renews the task's lease
every third of it (:func:`lease_heartbeat`), so a task longer than ``--lease`` stays with
its worker; only a worker that stops renewing (dead, hung, cut off from the database for
a whole lease) loses it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from geomesh import auth
from geomesh.errors import GeomeshError, TaskError
from geomesh.redact import redact
from geomesh.services import reclip, snapshot, tasks
from geomesh.services.outbox import DeliveryReport, deliver_outbox
from geomesh.workspace import Workspace

log = logging.getLogger(__name__)

#: (workspace, claimed task, actor) -> the task's result
Handler = Callable[[Workspace, tasks.Claimed, str], dict[str, Any]]


def _reclip(ws: Workspace, task: tasks.Claimed, actor: str) -> dict[str, Any]:
    if task.item_id is None:
        raise TaskError(f"reclip task {task.id} names no item")
    if task.details.get("overlap_fraction") == 0:
        return reclip.skip_reclip(ws, task.id, task.item_id, actor=actor)
    return reclip.run_reclip(ws, task.id, task.item_id, actor=actor).to_json()


def _snapshot(ws: Workspace, task: tasks.Claimed, actor: str) -> dict[str, Any]:
    ref = str(task.details.get("ref", "current"))
    return snapshot.snapshot_release(ws, task.product_id, ref, actor=actor).to_json()


#: the handlers of the service layer; the CLI adds those of the layers beside it (previews)
HANDLERS: Final[Mapping[str, Handler]] = {"reclip": _reclip, "snapshot": _snapshot}
#: extra work in a task's failing transaction, per kind
ON_FAILURE: Final[Mapping[str, tasks.OnFailure]] = {"reclip": reclip.record_failure}


@dataclass
class PassReport:
    """What one pass did."""

    outbox: DeliveryReport = field(default_factory=DeliveryReport)
    done: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    #: tasks whose lease this worker lost before it could record the outcome
    lost: list[int] = field(default_factory=list)

    @property
    def idle(self) -> bool:
        """Nothing was due: the loop may sleep."""
        return self.outbox.count == 0 and not (self.done or self.failed or self.retrying)

    def to_json(self) -> dict[str, Any]:
        return {
            "outbox": self.outbox.to_json(),
            "tasks": {
                "done": self.done,
                "failed": self.failed,
                "retrying": self.retrying,
                "lost": self.lost,
            },
        }


@contextmanager
def lease_heartbeat(
    ws: Workspace, claimed: tasks.Claimed, owner: str, *, lease_s: float, actor: str
) -> Iterator[None]:
    """Renew ``claimed``'s lease every third of ``lease_s`` while the body runs (a daemon
    thread, stopped and joined before the body's outcome is recorded).

    A renewal that fails (the database briefly unreachable) is logged and tried again at
    the next beat, with a third of the lease still left; a lost lease (another worker took
    the task over) stops the beats, and recording the outcome then reports it lost.
    """
    stop = threading.Event()
    every = max(lease_s / 3, 0.05)

    def beat() -> None:
        while not stop.wait(every):
            try:
                held = tasks.renew_lease(ws, claimed.id, owner, lease_s=lease_s, actor=actor)
            except GeomeshError as exc:
                log.warning("task %s: lease not renewed: %s", claimed.id, redact(str(exc)))
                continue
            if not held:
                log.warning("task %s: lease lost to another worker", claimed.id)
                return

    thread = threading.Thread(target=beat, name=f"lease-task-{claimed.id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_task(
    ws: Workspace,
    claimed: tasks.Claimed,
    owner: str,
    handler: Handler,
    *,
    actor: str = auth.SYSTEM,
    report: PassReport | None = None,
    backoff_s: float = 30.0,
    lease_s: float = tasks.DEFAULT_LEASE_S,
) -> str | None:
    """Run one claimed task (its lease renewed meanwhile) and record its outcome; returns
    the task's new status."""
    report = report if report is not None else PassReport()
    try:
        with lease_heartbeat(ws, claimed, owner, lease_s=lease_s, actor=actor):
            result = handler(ws, claimed, actor)
    except GeomeshError as exc:
        status = tasks.fail_task(
            ws,
            claimed.id,
            owner,
            redact(str(exc)),
            permanent=True,
            actor=actor,
            on_failure=ON_FAILURE.get(claimed.kind),
        )
    except Exception as exc:  # a bug or a transient fault: try again later, keep the worker
        log.exception("task %s (%s) raised", claimed.id, claimed.kind)
        status = tasks.fail_task(
            ws,
            claimed.id,
            owner,
            redact(f"{type(exc).__name__}: {exc}"),
            permanent=False,
            actor=actor,
            backoff_s=backoff_s,
            on_failure=ON_FAILURE.get(claimed.kind),
        )
    else:
        status = "done" if tasks.complete_task(ws, claimed.id, owner, result, actor=actor) else None
    {"done": report.done, "failed": report.failed, "queued": report.retrying}.get(
        status or "", report.lost
    ).append(claimed.id)
    return status


def run_once(
    ws: Workspace,
    *,
    owner: str,
    actor: str = auth.SYSTEM,
    handlers: Mapping[str, Handler] | None = None,
    outbox_limit: int = 50,
    task_limit: int = 10,
    lease_s: float = tasks.DEFAULT_LEASE_S,
    stop: Callable[[], bool] | None = None,
    send_timeout: float = 5.0,
) -> PassReport:
    """One pass: deliver up to ``outbox_limit`` due messages, then run up to
    ``task_limit`` due tasks (one at a time, each under its own lease). ``stop`` is asked
    between units of work (SIGTERM: finish the current one, start no other)."""
    should_stop = stop or (lambda: False)
    table = dict(HANDLERS) if handlers is None else dict(handlers)
    report = PassReport()
    report.outbox = deliver_outbox(
        ws, owner=owner, actor=actor, limit=outbox_limit, stop=stop, timeout=send_timeout
    )
    for _ in range(task_limit):
        if should_stop():
            break
        claimed = tasks.claim_task(ws, owner, actor=actor, lease_s=lease_s, kinds=table)
        if claimed is None:
            break
        run_task(
            ws, claimed, owner, table[claimed.kind], actor=actor, report=report, lease_s=lease_s
        )
    return report
