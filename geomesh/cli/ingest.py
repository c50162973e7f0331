"""`geomesh ingest`, `geomesh inspect`."""

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
    tile_progress,
)
from geomesh.cli._identity import prove_actor
from geomesh.cli._session import open_workspace
from geomesh.cli.sources import run_ingest_from_stac
from geomesh.config import load_config
from geomesh.errors import ConfigError
from geomesh.opening import OpeningPolicy
from geomesh.raster import inspect as inspect_raster
from geomesh.raster import parse_datetime
from geomesh.services.ingest import IngestReport
from geomesh.services.pipeline import ingest_rasters
from geomesh.settings import load_settings


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
    type=click.IntRange(min=0),
    default=None,
    help="Workers for the file work (default: GEOMESH_WORKERS, else 0): 0 = automatic (a batch of at least 64 MiB in one "
    "single-threaded process per core, else serial with every GDAL thread; --from-stac: "
    "4 threads per core); 1 = serial; N = N processes sharing the cores' GDAL threads.",
)
@click.option(
    "--scheduler",
    default=None,
    help="Dask scheduler address tcp://host:port (default: GEOMESH_SCHEDULER).",
)
@click.option(
    "--allow-driver",
    "allow_drivers",
    multiple=True,
    metavar="NAME",
    help="Also let GDAL open RASTERS with this driver (e.g. VRT); repeatable. Only for files "
    "you trust: indirection formats read whatever they point at.",
)
@click.option(
    "--untrusted",
    is_flag=True,
    help="Treat RASTERS as untrusted (as the app does): local files only under "
    "GEOMESH_IMPORT_DIRS, no --allow-driver.",
)
@actor_option("Who submits the tiles (default: $GEOMESH_USER).")
@json_option
def ingest_cmd(
    config: str,
    rasters: tuple[str, ...],
    dry_run: bool,
    acquired: str | None,
    workers: int | None,
    scheduler: str | None,
    actor: str | None,
    as_json: bool,
    from_stac: bool = False,
    allow_drivers: tuple[str, ...] = (),
    untrusted: bool = False,
) -> None:
    """Ingest RASTERS (paths, http(s):// or s3:// URLs) into the product CONFIG.

    With --from-stac, ingest the new scenes of the config's STAC `source` instead (always
    under the untrusted opening policy). URLs must match GEOMESH_ALLOWED_SOURCES.
    """
    if (from_stac or untrusted) and allow_drivers:
        raise click.UsageError(
            "--allow-driver widens what the operator's own RASTERS may be; it cannot be "
            "combined with --from-stac or --untrusted"
        )
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
        cfg = load_config(config)
        ws = open_workspace(cfg)
        policy = (
            OpeningPolicy.untrusted(ws.settings, cfg, context="--untrusted input")
            if untrusted
            else OpeningPolicy.operator(ws.settings, cfg, extra_drivers=allow_drivers)
        )
        with tile_progress(len(rasters), enabled=not as_json and len(rasters) > 1) as tick:
            report = ingest_rasters(
                ws,
                cfg,
                rasters,
                actor=prove_actor(ws, actor, system_ok=True),
                dry_run=dry_run,
                acquired=_parse_dt(acquired),
                progress=tick,
                workers=workers,
                scheduler=scheduler,
                policy=policy,
            )
        if as_json:
            echo_json(report.to_json())
        else:
            _print_report(report)
        sys.exit(0 if report.ok else 1)


@cli.command("inspect")
@click.argument("raster")
@click.option("--domain-crs", default=None, help="Also reproject the footprint to this CRS.")
@click.option(
    "--allow-driver",
    "allow_drivers",
    multiple=True,
    metavar="NAME",
    help="Also let GDAL open RASTER with this driver (default: GTiff only); repeatable.",
)
@json_option
def inspect_cmd(
    raster: str, domain_crs: str | None, as_json: bool, allow_drivers: tuple[str, ...] = ()
) -> None:
    """Show what `rio info` shows plus what the product contract needs."""
    with errors_at_edge():
        policy = OpeningPolicy.operator(load_settings(), extra_drivers=allow_drivers)
        checked = policy.check(raster)
        with policy.gdal_env():
            info = inspect_raster(
                checked.gdal_path, domain_crs=domain_crs, drivers=policy.drivers, name=raster
            )
        data = info.to_json()
        if as_json:
            echo_json(data)
            return
        for key, value in data.items():
            if key == "footprint_4326" and value:
                value = f"{value['type']} with {len(value['coordinates'][0])} vertices"
            click.echo(f"{key:<15} {value}")
