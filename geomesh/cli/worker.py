"""`geomesh worker` (the queue and the outbox), `geomesh tasks …`, `geomesh integrations …`."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from typing import Any

import click

from geomesh.auth import SYSTEM
from geomesh.cli._base import actor_option, cli, echo_json, errors_at_edge, json_option
from geomesh.cli._identity import prove_actor
from geomesh.cli._session import cli_channel, open_workspace
from geomesh.errors import ConfigError, TaskError
from geomesh.preview import item_preview
from geomesh.services import integrations, tasks, worker
from geomesh.workspace import Workspace


def _preview(ws: Workspace, task: tasks.Claimed, _actor: str) -> dict[str, Any]:
    """Render (and cache) an item's preview: the app then shows it at once."""
    if task.item_id is None:
        raise TaskError(f"preview task {task.id} names no item")
    size = int(task.details.get("max_size", 512))
    preview = item_preview(ws, task.item_id, max_size=size)
    return {"item_id": task.item_id, "max_size": size, "cached": preview.cached}


#: every kind this worker runs: the service layer's plus previews (geomesh.preview)
HANDLERS: dict[str, worker.Handler] = {**worker.HANDLERS, "preview": _preview}


@cli.command("worker")
@click.option("--once", is_flag=True, help="Do what is due, then exit (scripts, tests).")
@click.option("--name", default=None, help="This worker's id in leases (default host:pid).")
@click.option(
    "--poll", type=float, default=None, help="Seconds to wait when idle (GEOMESH_WORKER_POLL_S)."
)
@click.option(
    "--lease",
    type=float,
    default=tasks.DEFAULT_LEASE_S,
    show_default=True,
    help="Seconds a claimed task is held; renewed every third of it while the task runs, so "
    "another worker takes it over only from a worker that stopped.",
)
@click.option(
    "--send-timeout",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds per webhook request (a message's delivery lease is about 3x this).",
)
def worker_cmd(
    once: bool, name: str | None, poll: float | None, lease: float, send_timeout: float
) -> None:
    """Deliver the outbox and run queued tasks (re-clips, snapshots, previews) until SIGTERM.

    Several workers may share one PostgreSQL database (leases, SKIP LOCKED); on SQLite run
    one. SIGTERM or Ctrl-C: the current message or task is finished, then the worker exits
    0. A worker killed outright leaves leases that run out; another worker takes them over.
    """
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    owner = name or f"{socket.gethostname()}:{os.getpid()}"
    with errors_at_edge():
        ws = open_workspace()
        ws.channel = {**cli_channel(), "process": "worker", "worker": owner}
        wait = poll if poll is not None else ws.settings.worker_poll_s
        click.echo(json.dumps({"worker": owner, "event": "started"}), err=True)
        totals = {"delivered": 0, "done": 0, "failed": 0}
        while not stop.is_set():
            report = worker.run_once(
                ws,
                owner=owner,
                actor=SYSTEM,
                handlers=HANDLERS,
                lease_s=lease,
                stop=stop.is_set,
                send_timeout=send_timeout,
            )
            totals["delivered"] += len(report.outbox.delivered)
            totals["done"] += len(report.done)
            totals["failed"] += len(report.failed) + len(report.outbox.failed)
            if not report.idle:
                click.echo(json.dumps({"worker": owner, **report.to_json()}), err=True)
            elif once:
                break
            else:
                stop.wait(wait)
        ws.close()
    click.echo(json.dumps({"worker": owner, "event": "stopped", **totals}))
    sys.exit(0)


# ------------------------------------------------------------------ tasks


@cli.group("tasks")
def tasks_group() -> None:
    """The work queue the worker runs (re-clips, snapshots, previews)."""


@tasks_group.command("list")
@click.option("--status", default=None, help="queued, running, done or failed.")
@click.option("--product", default=None)
@json_option
def tasks_list(status: str | None, product: str | None, as_json: bool) -> None:
    """List tasks, newest first."""
    with errors_at_edge():
        rows = tasks.list_tasks(open_workspace(), status=status, product_id=product)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        err = f"  {r['last_error']}" if r["last_error"] else ""
        click.echo(
            f"{r['id']:>5} {r['status']:<8} {r['kind']:<9} {r['item_id'] or r['product_id']} "
            f"attempts={r['attempts']}{err}"
        )


@tasks_group.command("add")
@click.argument("kind", type=click.Choice(sorted(HANDLERS)))
@click.option("--product", required=True, help="The product id.")
@click.option("--item", default=None, help="The item (reclip, preview).")
@click.option("--ref", default=None, help="The release (snapshot; default current).")
@actor_option()
def tasks_add(
    kind: str, product: str, item: str | None, ref: str | None, actor: str | None
) -> None:
    """Queue a task for the worker."""
    with errors_at_edge():
        if kind in ("reclip", "preview") and item is None:
            raise TaskError(f"a {kind} task needs --item")
        ws = open_workspace()
        details = {"ref": ref or "current"} if kind == "snapshot" else {}
        key = f"{kind}:{item}" if kind == "preview" else None
        task_id = tasks.enqueue_task(
            ws,
            kind,
            product,
            item_id=item,
            details=details,
            dedupe_key=key,
            actor=prove_actor(ws, actor),
        )
    click.echo(f"task {task_id} queued")


@tasks_group.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_failed", is_flag=True, help="Retry every failed task.")
@actor_option()
def tasks_retry(ids: tuple[int, ...], all_failed: bool, actor: str | None) -> None:
    """Queue failed tasks IDS (or --all) again."""
    with errors_at_edge():
        if not ids and not all_failed:
            raise TaskError("give task ids or --all", hint="see `geomesh tasks list`")
        ws = open_workspace()
        retried = tasks.retry_tasks(ws, list(ids) if ids else None, actor=prove_actor(ws, actor))
    click.echo(f"{len(retried)} task(s) queued again: {', '.join(map(str, retried)) or '-'}")


# ------------------------------------------------------------------ integrations


@cli.group("integrations")
def integrations_group() -> None:
    """Approval tools allowed to call the inbound governance webhook (`geomesh api`)."""


def _approvers(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        external, sep, user = pair.rpartition("=")
        if not sep or not external or not user:
            raise ConfigError(f"--approver {pair!r} must be TOOL_ID=USER")
        out[external] = user
    return out


@integrations_group.command("add")
@click.argument("name")
@click.option(
    "--secret-env",
    required=True,
    help="Environment variable holding the HMAC secret (on the `geomesh api` host).",
)
@click.option(
    "--approver", "approvers", multiple=True, help="TOOL_ID=USER: who a tool approver is."
)
@click.option("--product", "products", multiple=True, help="Limit it to these products.")
@actor_option("Who adds it (an admin).")
@json_option
def integrations_add(
    name: str,
    secret_env: str,
    approvers: tuple[str, ...],
    products: tuple[str, ...],
    actor: str | None,
    as_json: bool,
) -> None:
    """Register an approval tool and map its approvers to geomesh users."""
    with errors_at_edge():
        ws = open_workspace()
        row = integrations.add_integration(
            ws,
            name,
            secret_env=secret_env,
            approvers=_approvers(approvers),
            products=products,
            actor=prove_actor(ws, actor),
        )
    if as_json:
        echo_json(row.to_json())
    else:
        click.echo(f"integration {row.name} added ({len(row.approvers)} approver(s))")


@integrations_group.command("list")
@json_option
def integrations_list(as_json: bool) -> None:
    """List the registered approval tools (secrets are never stored)."""
    with errors_at_edge():
        rows = [r.to_json() for r in integrations.list_integrations(open_workspace())]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        state = " (disabled)" if r["disabled"] else ""
        click.echo(f"{r['name']}{state}: secret in ${r['secret_env']}, approvers {r['approvers']}")


@integrations_group.command("disable")
@click.argument("name")
@actor_option("Who disables it (an admin).")
def integrations_disable(name: str, actor: str | None) -> None:
    """Refuse every further request of an approval tool."""
    with errors_at_edge():
        ws = open_workspace()
        integrations.set_disabled(ws, name, True, actor=prove_actor(ws, actor))
    click.echo(f"integration {name} disabled")
