"""`geomesh ingest`, `geomesh inspect`, `geomesh items list`."""

from __future__ import annotations

import sys
from datetime import datetime

import click

from geomesh.cli._base import (
    actor_option,
    cli,
    echo_json,
    errors_at_edge,
    json_option,
    load,
    open_workspace,
    resolve_actor,
    tile_progress,
)
from geomesh.cli.sources import run_ingest_from_stac
from geomesh.errors import ConfigError
from geomesh.raster import inspect as inspect_raster
from geomesh.raster import parse_datetime
from geomesh.services import queries
from geomesh.services.ingest import IngestReport
from geomesh.services.pipeline import ingest_rasters


def _parse_dt(value: str | None) -> datetime | None:
    if value is None:
        return None
    dt = parse_datetime(value)
    if dt is None:
        raise ConfigError(
            f"--datetime {value!r} is not an ISO 8601 datetime (e.g. 2024-06-12T19:03:21Z)"
        )
    return dt


def _print_report(report: IngestReport) -> None:
    for r in report.results:
        colour = {"failed": "red", "exists": "yellow", "would-stage": "cyan"}.get(r.status, "green")
        line = f"{r.status:<11} {r.item_id or '-':<48} {r.source}"
        click.secho(line, fg=colour)
        if r.error:
            click.secho(f"            {r.error}", fg="red")
        if r.status == "would-stage":
            click.echo(f"            would write object {r.object_key} ({r.size} bytes)")
            click.echo(f"            would write item   {r.stac_key}")
        if r.findings:
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(r.findings.items()))
            click.echo(
                f"            findings {counts}; route: {r.route or 'none'}; state: {r.state}"
            )
    c = report.counts()
    click.echo("summary: " + ", ".join(f"{v} {k}" for k, v in sorted(c.items())))


@cli.command("ingest")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("rasters", nargs=-1, required=False)
@click.option(
    "--from-stac",
    "from_stac",
    is_flag=True,
    help="Ingest the new scenes of the config's STAC `source` (see `geomesh discover`).",
)
@click.option("--dry-run", is_flag=True, help="Do every read and check; write nothing.")
@click.option(
    "--datetime",
    "acquired",
    default=None,
    help="Acquisition datetime (ISO 8601) when the raster carries none.",
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Parallel worker processes for the file work.",
)
@click.option("--scheduler", default=None, help="Dask scheduler address (tcp://host:port).")
@actor_option("Who submits the tiles (default: $GEOMESH_USER).")
@json_option
def ingest_cmd(
    config: str,
    rasters: tuple[str, ...],
    dry_run: bool,
    acquired: str | None,
    workers: int,
    scheduler: str | None,
    actor: str | None,
    as_json: bool,
    from_stac: bool = False,
) -> None:
    """Ingest RASTERS (paths, http(s):// or s3:// URLs) into the product CONFIG.

    With --from-stac, ingest the new scenes of the config's STAC `source` instead.
    """
    if from_stac or not rasters:
        run_ingest_from_stac(
            config,
            from_stac=from_stac,
            rasters=rasters,
            workers=workers,
            scheduler=scheduler,
            dry_run=dry_run,
            acquired=acquired,
            actor=actor,
            as_json=as_json,
            print_report=_print_report,
        )
        return
    with errors_at_edge():
        cfg = load(config)
        ws = open_workspace(cfg)
        with tile_progress(len(rasters), enabled=not as_json and len(rasters) > 1) as tick:
            report = ingest_rasters(
                ws,
                cfg,
                rasters,
                actor=resolve_actor(actor),
                dry_run=dry_run,
                acquired=_parse_dt(acquired),
                progress=tick,
                workers=workers,
                scheduler=scheduler,
            )
        if as_json:
            echo_json(report.to_json())
        else:
            _print_report(report)
        sys.exit(0 if report.ok else 1)


@cli.command("inspect")
@click.argument("raster")
@click.option("--domain-crs", default=None, help="Also reproject the footprint to this CRS.")
@json_option
def inspect_cmd(raster: str, domain_crs: str | None, as_json: bool) -> None:
    """Show what `rio info` shows plus what the product contract needs."""
    with errors_at_edge():
        info = inspect_raster(raster, domain_crs=domain_crs)
        data = info.to_json()
        if as_json:
            echo_json(data)
            return
        for key, value in data.items():
            if key == "footprint_4326" and value:
                value = f"{value['type']} with {len(value['coordinates'][0])} vertices"
            click.echo(f"{key:<15} {value}")


@cli.group("items")
def items_group() -> None:
    """List and show staged, quarantined and published items."""


@items_group.command("list")
@click.option("--product", default=None, help="Only this product id.")
@click.option("--state", default=None, help="Only items in this state.")
@json_option
def items_list(product: str | None, state: str | None, as_json: bool) -> None:
    """List items with their state, source, checksum and findings per severity."""
    with errors_at_edge():
        ws = open_workspace()
        rows = queries.list_items(ws, product_id=product, state=state)
        if as_json:
            echo_json(rows)
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
