"""`geomesh users add|list`."""

from __future__ import annotations

import sys

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
)
from geomesh.config import ProductConfig
from geomesh.errors import PermissionDenied
from geomesh.models import Role
from geomesh.services import users

_config_option = click.option(
    "--config",
    "config",
    default=None,
    type=click.Path(dir_okay=False),
    help="Product config whose storage settings to use (default: environment).",
)


def _cfg(config: str | None) -> ProductConfig | None:
    return load(config) if config else None


@cli.group("users")
def users_group() -> None:
    """Users and roles (admin, steward, analyst, viewer)."""


@users_group.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@_config_option
@actor_option("Who adds the user (an admin; default: $GEOMESH_USER).")
@json_option
def users_add(
    name: str,
    role: str,
    password_stdin: bool,
    config: str | None,
    actor: str | None,
    as_json: bool,
) -> None:
    """Add user NAME with ROLE."""
    with errors_at_edge():
        password = None
        if password_stdin:
            password = sys.stdin.read().rstrip("\r\n")
            if not password:
                raise PermissionDenied("--password-stdin was given but stdin is empty")
        ws = open_workspace(_cfg(config))
        user = users.add_user(
            ws, actor=resolve_actor(actor), name=name, role=role, password=password
        )
        if as_json:
            echo_json(user.model_dump(mode="json"))
        else:
            click.echo(f"{user.name} ({user.role.value})")


@users_group.command("list")
@_config_option
@json_option
def users_list(config: str | None, as_json: bool) -> None:
    """Every user with its role."""
    with errors_at_edge():
        rows = users.list_users(open_workspace(_cfg(config)))
        if as_json:
            echo_json([u.model_dump(mode="json") for u in rows])
            return
        for u in rows:
            click.echo(f"{u.name:<24} {u.role.value:<8} {u.created_at.isoformat()}")
