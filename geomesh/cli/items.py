"""`geomesh items list|show`: read-only, so it loads neither GDAL nor the ingest pipeline;
`items list` reads with Core statements (``queries.item_list``) and never loads the ORM."""

from __future__ import annotations

import click

from geomesh.cli._base import cli, echo_json, echo_json_array, errors_at_edge, json_option
from geomesh.cli._session import open_workspace
from geomesh.enums import ItemState
from geomesh.services import queries


@cli.group("items")
def items_group() -> None:
    """List and show staged, quarantined and published items."""


@items_group.command("list")
@click.option("--product", default=None, help="Only this product id.")
@click.option(
    "--state",
    type=click.Choice([s.value for s in ItemState]),
    default=None,
    help="Only items in this state.",
)
@json_option
def items_list(product: str | None, state: str | None, as_json: bool) -> None:
    """List items with their state, source, checksum and findings per severity."""
    with errors_at_edge():
        ws = open_workspace()
        rows = queries.iter_items(ws, product_id=product, state=state)  # streamed
        if as_json:
            echo_json_array(rows)
            return
        for r in rows:
            f = r.get("findings") or {}
            counts = " ".join(f"{k}:{v}" for k, v in sorted(f.items()) if v)
            click.echo(f"{r['state']:<12} {r['id']:<48} {counts:<16} {r['source']}")


@items_group.command("show")
@click.argument("item_id")
def items_show(item_id: str) -> None:
    """Print one item's STAC JSON."""
    with errors_at_edge():
        ws = open_workspace()
        echo_json(queries.get_item(ws, item_id)["stac"])
