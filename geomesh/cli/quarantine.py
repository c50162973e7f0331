"""`geomesh quarantine list|show|revalidate|release|discard`."""

from __future__ import annotations

import click

from geomesh.cli._base import actor_option, cli, echo_json, errors_at_edge, json_option
from geomesh.cli._identity import prove_actor
from geomesh.cli._session import open_workspace
from geomesh.cli.validate import echo_finding
from geomesh.config import load_config
from geomesh.services import quarantine as q
from geomesh.validation.findings import Finding


@cli.group("quarantine")
def quarantine_group() -> None:
    """Inspect, re-validate, release or discard quarantined items."""


@quarantine_group.command("list")
@click.option("--product", default=None, help="Only this product id.")
@json_option
def quarantine_list(product: str | None, as_json: bool) -> None:
    """List quarantined items with their reason."""
    with errors_at_edge():
        rows = q.list_quarantined(open_workspace(), product_id=product)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no quarantined items")
    for r in rows:
        click.echo(f"{r['id']:<48} {r['worst_severity'] or '-':<3} {r['quarantine_reason']}")


@quarantine_group.command("show")
@click.argument("item_id")
@json_option
def quarantine_show(item_id: str, as_json: bool) -> None:
    """Show one item's quarantine record, open findings and history."""
    with errors_at_edge():
        data = q.show_quarantined(open_workspace(), item_id)
    if as_json:
        echo_json(data)
        return
    click.echo(f"{data['id']}  state={data['state']}  product={data['product_id']}")
    click.echo(f"reason: {data['quarantine_reason'] or '-'}")
    for f in data["open_findings"]:
        echo_finding(Finding.from_json(f))
    for ev in data["history"]:
        click.echo(
            f"  {ev['timestamp']} {ev['actor']:<12} {ev['action']:<20} "
            f"{ev['state_before'] or '-'} → {ev['state_after'] or '-'}"
        )


@quarantine_group.command("revalidate")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("item_id")
@click.option("--strict", is_flag=True, help="Raise P3 findings to P2.")
@actor_option()
@json_option
def quarantine_revalidate(
    config: str, item_id: str, strict: bool, actor: str | None, as_json: bool
) -> None:
    """Validate a quarantined item again after a fix (it stays quarantined)."""
    with errors_at_edge():
        cfg = load_config(config)
        ws = open_workspace(cfg)
        result = q.revalidate(ws, cfg, item_id, actor=prove_actor(ws, actor), strict=strict)
    if as_json:
        echo_json(result.to_json())
        return
    verdict = "can be released" if result.releasable else f"still routes to {result.route}"
    click.echo(f"{item_id}: {verdict}")
    for f in result.findings:
        echo_finding(f)


@quarantine_group.command("release")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("item_id")
@click.option("--note", default=None, help="Why it may go back (kept in the audit trail).")
@actor_option()
def quarantine_release(config: str, item_id: str, note: str | None, actor: str | None) -> None:
    """Move a re-validated quarantined item back to staging."""
    with errors_at_edge():
        cfg = load_config(config)
        ws = open_workspace(cfg)
        state = q.release(ws, cfg, item_id, actor=prove_actor(ws, actor), note=note)
    click.echo(f"{item_id}: {state}")


@quarantine_group.command("discard")
@click.argument("item_id")
@click.option("--reason", required=True, help="Why the item is discarded (audited).")
@actor_option()
def quarantine_discard(item_id: str, reason: str, actor: str | None) -> None:
    """Discard a quarantined item for good."""
    with errors_at_edge():
        ws = open_workspace()
        state = q.discard(ws, item_id, actor=prove_actor(ws, actor), reason=reason)
    click.echo(f"{item_id}: {state}")
