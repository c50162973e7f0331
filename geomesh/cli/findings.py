"""`geomesh findings export`: every finding matching the filters, streamed (issue 16)."""

from __future__ import annotations

import sys

import click

from geomesh.cli._base import cli, errors_at_edge
from geomesh.cli._session import open_workspace
from geomesh.services import queries


@cli.group("findings")
def findings_group() -> None:
    """Read persisted validation findings."""


@findings_group.command("export")
@click.option("--product", default=None, help="Only this product id.")
@click.option("--severity", "severities", multiple=True, help="P1, P2 or P3 (repeatable).")
@click.option("--rule", "rules", multiple=True, help="Only this rule id (repeatable).")
@click.option("--state", "states", multiple=True, help="Only items in this state (repeatable).")
@click.option("--all", "include_closed", is_flag=True, help="Include closed findings.")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
def findings_export(
    product: str | None,
    severities: tuple[str, ...],
    rules: tuple[str, ...],
    states: tuple[str, ...],
    include_closed: bool,
    fmt: str,
) -> None:
    """Print every matching finding as CSV or a JSON array, in batches (bounded memory)."""
    with errors_at_edge():
        ws = open_workspace()
        rows = queries.iter_findings(
            ws,
            product_id=product,
            severities=severities,
            rules=rules,
            states=states,
            open_only=not include_closed,
        )
        queries.write_findings(rows, sys.stdout, fmt=fmt)
