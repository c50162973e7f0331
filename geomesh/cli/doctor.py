"""`geomesh doctor`: consistency check of database, objects, manifests and catalogs."""

from __future__ import annotations

import sys

import click

from geomesh.auth import SYSTEM
from geomesh.cli._base import actor_option, cli, echo_json, errors_at_edge, json_option
from geomesh.cli._identity import prove_actor
from geomesh.cli._session import open_workspace
from geomesh.doctor import run_doctor


@cli.command("doctor")
@click.option("--gc", is_flag=True, help="Remove leftover temporary files of interrupted writes.")
@click.option("--deep", is_flag=True, help="Also re-hash every stored object.")
@click.option(
    "--min-age",
    type=float,
    default=3600.0,
    show_default=True,
    help="Only collect temporary files older than this many seconds.",
)
@actor_option("Who collects with --gc (an admin; default: $GEOMESH_USER).")
@json_option
def doctor_cmd(gc: bool, deep: bool, min_age: float, actor: str | None, as_json: bool) -> None:
    """Check database ↔ objects ↔ manifests ↔ published catalogs; exit 1 if inconsistent."""
    with errors_at_edge():
        ws = open_workspace()
        who = prove_actor(ws, actor) if gc else SYSTEM  # only --gc changes anything
        report = run_doctor(ws, gc=gc, deep=deep, min_age_s=min_age, actor=who)
        if as_json:
            echo_json(report.to_json())
        else:
            for p in report.problems:
                colour = {"error": "red", "warning": "yellow"}.get(p.level)
                click.secho(f"{p.level:<8} {p.kind:<26} {p.target}: {p.message}", fg=colour)
            for c in report.collected:
                click.echo(f"removed  {c}")
            checked = ", ".join(f"{v} {k}" for k, v in report.checked.items())
            state = "consistent" if report.consistent else "INCONSISTENT"
            click.secho(f"{state} ({checked})", fg="green" if report.consistent else "red")
        sys.exit(0 if report.consistent else 1)
