"""`geomesh users add|list|passwd|role|disable|enable` and `geomesh users token create|list|revoke`.

Every change needs a proven admin (``GEOMESH_TOKEN``, ``--token-file`` or the admin's
password), except the bootstrap: on an empty user table, ``users add NAME --role admin
--password-stdin`` creates the first admin. A user may change its own password and manage
its own tokens.
"""

from __future__ import annotations

import sys

import click

from geomesh.cli._base import actor_option, cli, echo_json, errors_at_edge, json_option
from geomesh.cli._identity import prove_actor
from geomesh.cli._session import open_workspace
from geomesh.config import ProductConfig, load_config
from geomesh.errors import WeakPassword
from geomesh.models import Role, UserPublic
from geomesh.services import tokens, users

_config_option = click.option(
    "--config",
    "config",
    default=None,
    type=click.Path(dir_okay=False),
    help="Product config whose storage settings to use (default: environment).",
)


def _cfg(config: str | None) -> ProductConfig | None:
    return load_config(config) if config else None


def _new_password(from_stdin: bool, name: str) -> str:
    """The new password: one line of stdin, or typed twice on a terminal."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = click.prompt(
            f"new password for {name}", hide_input=True, confirmation_prompt=True, err=True
        )
    else:
        raise WeakPassword("no password given", hint="pipe it in with --password-stdin")
    if not password:
        raise WeakPassword("--password-stdin was given but stdin is empty")
    return password


def _echo_user(user: UserPublic, as_json: bool) -> None:
    if as_json:
        echo_json(user.model_dump(mode="json"))
    else:
        state = " (disabled)" if user.disabled else ""
        click.echo(f"{user.name} ({user.role.value}){state}")


@cli.group("users")
def users_group() -> None:
    """Users and roles (admin, steward, analyst, viewer), and their API tokens."""


@users_group.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--email", default=None, help="The e-mail an SSO sign-in must match exactly.")
@click.option("--password-stdin", is_flag=True, help="Read the new user's password from stdin.")
@_config_option
@actor_option("Who adds the user (an admin).", password_stdin=False)
@json_option
def users_add(
    name: str,
    role: str,
    email: str | None,
    password_stdin: bool,
    config: str | None,
    actor: str | None,
    as_json: bool,
) -> None:
    """Add user NAME with ROLE (the first user: an admin, no proof needed)."""
    with errors_at_edge():
        password = _new_password(True, name) if password_stdin else None
        ws = open_workspace(_cfg(config))
        who = prove_actor(ws, actor, system_ok=True)  # `system` only bootstraps
        user = users.add_user(ws, actor=who, name=name, role=role, password=password, email=email)
        _echo_user(user, as_json)


@users_group.command("list")
@_config_option
@json_option
def users_list(config: str | None, as_json: bool) -> None:
    """Every user with its role, e-mail and whether it is disabled."""
    with errors_at_edge():
        rows = users.list_users(open_workspace(_cfg(config)))
        if as_json:
            echo_json([u.model_dump(mode="json") for u in rows])
            return
        for u in rows:
            state = "disabled" if u.disabled else "enabled"
            click.echo(
                f"{u.name:<24} {u.role.value:<8} {state:<8} {u.email or '-':<32} "
                f"{u.created_at.isoformat()}"
            )


@users_group.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
@_config_option
@actor_option("Who changes it (the user itself, or an admin).", password_stdin=False)
@json_option
def users_passwd(
    name: str, password_stdin: bool, config: str | None, actor: str | None, as_json: bool
) -> None:
    """Set NAME's password (your own, proven by your current one or a token; or as an admin)."""
    with errors_at_edge():
        ws = open_workspace(_cfg(config))
        who = prove_actor(ws, actor, default=name)
        user = users.set_password(
            ws, actor=who, name=name, password=_new_password(password_stdin, name)
        )
        _echo_user(user, as_json)


@users_group.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice([r.value for r in Role]))
@_config_option
@actor_option("Who changes it (an admin).")
@json_option
def users_role(name: str, role: str, config: str | None, actor: str | None, as_json: bool) -> None:
    """Give NAME the role ROLE."""
    with errors_at_edge():
        ws = open_workspace(_cfg(config))
        _echo_user(users.set_role(ws, actor=prove_actor(ws, actor), name=name, role=role), as_json)


@users_group.command("disable")
@click.argument("name")
@_config_option
@actor_option("Who disables (an admin).")
@json_option
def users_disable(name: str, config: str | None, actor: str | None, as_json: bool) -> None:
    """Disable NAME: no sign-in, no token, no action; its history stays readable."""
    with errors_at_edge():
        ws = open_workspace(_cfg(config))
        who = prove_actor(ws, actor)
        _echo_user(users.set_disabled(ws, actor=who, name=name, disabled=True), as_json)


@users_group.command("enable")
@click.argument("name")
@_config_option
@actor_option("Who enables (an admin).")
@json_option
def users_enable(name: str, config: str | None, actor: str | None, as_json: bool) -> None:
    """Enable NAME again."""
    with errors_at_edge():
        ws = open_workspace(_cfg(config))
        who = prove_actor(ws, actor)
        _echo_user(users.set_disabled(ws, actor=who, name=name, disabled=False), as_json)


@users_group.group("token")
def token_group() -> None:
    """API tokens: how the CLI proves who acts (GEOMESH_TOKEN or --token-file)."""


@token_group.command("create")
@click.argument("name")
@click.option(
    "--expires-days",
    type=int,
    default=tokens.DEFAULT_EXPIRES_DAYS,
    show_default=True,
    help="Days until the token expires.",
)
@click.option("--label", default=None, help="What the token is for (shown by `token list`).")
@_config_option
@actor_option("Who creates it (the user itself, or an admin).")
@json_option
def token_create(
    name: str,
    expires_days: int,
    label: str | None,
    config: str | None,
    actor: str | None,
    as_json: bool,
) -> None:
    """Create an API token for NAME and print it once (only its digest is stored)."""
    with errors_at_edge():
        ws = open_workspace(_cfg(config))
        who = prove_actor(ws, actor, default=name)
        token, info = tokens.create_token(
            ws, actor=who, name=name, expires_days=expires_days, label=label
        )
        if as_json:
            echo_json(
                {
                    "token": token,
                    "id": info.id,
                    "user": info.user,
                    "expires_at": info.to_json()["expires_at"],
                }
            )
            return
        click.echo(token)
        click.echo(
            f"token #{info.id} for {info.user}, expires {info.to_json()['expires_at']}; "
            "it is shown only now: keep it in a file (--token-file) or GEOMESH_TOKEN",
            err=True,
        )


@token_group.command("list")
@click.argument("name", required=False)
@_config_option
@json_option
def token_list(name: str | None, config: str | None, as_json: bool) -> None:
    """Token ids and metadata (of NAME, or of everyone); never a token."""
    with errors_at_edge():
        rows = tokens.list_tokens(open_workspace(_cfg(config)), name)
        if as_json:
            echo_json([t.to_json() for t in rows])
            return
        for t in rows:
            d = t.to_json()
            click.echo(
                f"#{t.id:<5} {t.user:<24} {d['status']:<8} expires {d['expires_at']}  "
                f"last used {d['last_used_at'] or '-'}  {t.label or ''}"
            )


@token_group.command("revoke")
@click.argument("token_id", type=int)
@_config_option
@actor_option("Who revokes it (its user, or an admin).")
@json_option
def token_revoke(token_id: int, config: str | None, actor: str | None, as_json: bool) -> None:
    """Revoke token TOKEN_ID (see `geomesh users token list`)."""
    with errors_at_edge():
        ws = open_workspace(_cfg(config))
        info = tokens.revoke_token(ws, actor=prove_actor(ws, actor), token_id=token_id)
        if as_json:
            echo_json(info.to_json())
        else:
            click.echo(f"token #{info.id} of {info.user}: {info.status()}")
