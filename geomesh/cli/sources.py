"""`geomesh discover` and the `geomesh ingest --from-stac` path (STAC API sources)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from geomesh.cli._base import cli, echo_json, errors_at_edge, json_option, tile_progress
from geomesh.cli._identity import prove_actor
from geomesh.cli._session import open_workspace
from geomesh.config import load_config
from geomesh.errors import ConfigError
from geomesh.raster import parse_datetime
from geomesh.remote import Candidate, require_source
from geomesh.services.ingest import IngestReport
from geomesh.services.sources import discover, ingest_from_stac


def _discover_json(product_id: str, candidates: list[Candidate]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for c in candidates:
        counts[c.status] = counts.get(c.status, 0) + 1
    return {
        "product_id": product_id,
        "counts": counts,
        "candidates": [c.to_json() for c in candidates],
    }


def _print_candidates(candidates: list[Candidate]) -> None:
    colours = {"new": "green", "ingested": "yellow", "unavailable": "red"}
    for c in candidates:
        when = c.datetime.isoformat() if c.datetime else "-"
        cloud = f"{c.cloud_cover:6.2f}%" if c.cloud_cover is not None else "     -"
        assets = ", ".join(f"{k}:{s}" for k, s in c.asset_status.items()) or "no configured asset"
        click.secho(
            f"{c.status:<11} {c.item_id:<56} {when:<32} {cloud}  {assets}", fg=colours.get(c.status)
        )
        for key, err in c.errors.items():
            click.secho(f"            {key}: {err}", fg="red")
    counts: dict[str, int] = {}
    for c in candidates:
        counts[c.status] = counts.get(c.status, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no scenes found"
    click.echo(f"summary: {summary}")


@cli.command("discover")
@click.argument("config", type=click.Path(dir_okay=False))
@json_option
def discover_cmd(config: str, as_json: bool) -> None:
    """List the scenes the config's STAC `source` offers over the domain (no pixel reads).

    Each scene is `new` or `ingested` (by source item id + asset checksum/ETag).
    """
    with errors_at_edge():
        cfg = load_config(config)
        require_source(cfg)
        ws = open_workspace(cfg)
        candidates = discover(ws, cfg)
        if as_json:
            echo_json(_discover_json(cfg.product_id, candidates))
        else:
            _print_candidates(candidates)


def run_ingest_from_stac(
    config: str,
    *,
    from_stac: bool,
    rasters: tuple[str, ...],
    workers: int | None,
    scheduler: str | None,
    dry_run: bool,
    acquired: str | None,
    actor: str | None,
    as_json: bool,
    print_report: Callable[[IngestReport], None],
) -> None:
    """`geomesh ingest --from-stac CONFIG`: ingest the new assets of the source's scenes.

    ``--dry-run`` lists what would be ingested (the discover step) and reads no pixels.
    Exits 0 when every asset was staged or already present, 1 otherwise.
    """
    if not from_stac:
        raise click.UsageError(
            "give one or more RASTERS, or --from-stac to ingest from the config's STAC source"
        )
    if rasters:
        raise click.UsageError(
            f"--from-stac reads the scenes from the config's source section; "
            f"drop the RASTERS ({' '.join(rasters[:3])}{' …' if len(rasters) > 3 else ''})"
        )
    if scheduler:
        raise click.UsageError("--from-stac reads ranges on local threads: drop --scheduler")
    with errors_at_edge():
        when = None
        if acquired is not None:
            when = parse_datetime(acquired)
            if when is None:
                raise ConfigError(
                    f"--datetime {acquired!r} is not an ISO 8601 datetime "
                    "(e.g. 2024-06-12T19:03:21Z)"
                )
        cfg = load_config(config)
        require_source(cfg)
        ws = open_workspace(cfg)
        candidates = discover(ws, cfg)
        if dry_run:
            if as_json:
                echo_json(_discover_json(cfg.product_id, candidates))
            else:
                _print_candidates(candidates)
            return
        todo = sum(1 for c in candidates for _ in (c.assets or {"": ""}))
        with tile_progress(todo, enabled=not as_json and todo > 1) as tick:
            report: IngestReport = ingest_from_stac(
                ws,
                cfg,
                actor=prove_actor(ws, actor, system_ok=True),
                candidates=candidates,
                acquired=when,
                progress=tick,
                workers=workers or None,
            )
        if as_json:
            echo_json(report.to_json())
        else:
            print_report(report)
        sys.exit(0 if report.ok else 1)
