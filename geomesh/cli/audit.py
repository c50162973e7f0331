"""`geomesh audit verify|export`."""

from __future__ import annotations

import json
from typing import TextIO

import click

from geomesh.cli._base import cli, errors_at_edge, json_option
from geomesh.cli._session import open_workspace
from geomesh.config import load_config
from geomesh.errors import AuditChainBroken
from geomesh.services import history


@cli.group("audit")
def audit_group() -> None:
    """The hash-chained audit trail."""


@audit_group.command("verify")
@click.argument("config", type=click.Path(dir_okay=False))
@json_option
def audit_verify(config: str, as_json: bool) -> None:
    """Recompute the chain; name every edited, inserted or deleted event (exit 2 if any)."""
    with errors_at_edge():
        ws = open_workspace(load_config(config))
        problems = history.verify_audit(ws)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "ok": not problems,
                        "problems": [
                            {"seq": p.seq, "event_id": p.event_id, "problem": p.problem}
                            for p in problems
                        ],
                    },
                    indent=2,
                )
            )
        else:
            for p in problems:
                click.echo(str(p), err=True)
        if problems:
            raise AuditChainBroken(
                f"the audit chain does not verify: {len(problems)} problem(s), first: {problems[0]}",
                hint="restore the database from a backup and investigate who changed it",
            )
        if not as_json:
            click.echo("audit chain verifies")


@audit_group.command("export")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option(
    "--output",
    "-o",
    type=click.File("w"),
    default="-",
    help="Write JSON lines here (default: stdout).",
)
@click.option("--product", "only_product", is_flag=True, help="Only this product's events.")
def audit_export(config: str, output: TextIO, only_product: bool) -> None:
    """Every audit event as one JSON object per line, oldest first."""
    with errors_at_edge():
        cfg = load_config(config)
        ws = open_workspace(cfg)
        pid = cfg.product_id if only_product else None
        for event in history.export_audit(ws, product_id=pid):
            click.echo(json.dumps(event, sort_keys=True), file=output)
