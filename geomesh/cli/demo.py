"""`geomesh demo seed`: the San Francisco demo product the review app opens with."""

from __future__ import annotations

import click

from geomesh import demo
from geomesh.cli._base import cli, echo_json, errors_at_edge, json_option
from geomesh.cli._session import open_workspace


@cli.group("demo")
def demo_group() -> None:
    """The generated demo product (San Francisco, Sentinel-2-like tiles)."""


@demo_group.command("seed")
@click.option(
    "--if-empty",
    is_flag=True,
    help="Seed only when the workspace has no product yet (what `make run` does).",
)
@json_option
def demo_seed(if_empty: bool, as_json: bool) -> None:
    """Generate the demo tiles and drive them through ingest, review and two releases.

    Idempotent: a second run changes nothing. The demo users and their passwords are
    listed in README.md ("Demo credentials").
    """
    with errors_at_edge():
        ws = open_workspace()

        def say(step: str) -> None:
            if not as_json:
                click.echo(f"seeding: {step}", err=True)

        report = demo.seed(ws, if_empty=if_empty, progress=say)
        if as_json:
            echo_json(report.to_json())
            return
        click.echo(report.message)
        if report.seeded:
            click.echo(f"config: {ws.root / 'demo' / 'product.yaml'}")
            click.echo("users:  " + ", ".join(f"{u.name} ({u.role})" for u in demo.USERS))
