"""`geomesh products update|approve|history|show`: the registered policy of a product."""

from __future__ import annotations

import click
import yaml

from geomesh.cli._base import actor_option, cli, echo_json, errors_at_edge, json_option
from geomesh.cli._identity import prove_actor
from geomesh.cli._session import open_workspace
from geomesh.config import load_config
from geomesh.errors import NotFound
from geomesh.services import policy
from geomesh.services.policy import PolicyChange, PolicyVersion


@cli.group("products")
def products_group() -> None:
    """The registered config (policy) of each product: change it, approve a change, history."""


def _echo_change(change: PolicyChange) -> None:
    click.echo(change.message)
    if change.version is not None and change.version.diff:
        click.echo(change.version.diff_text)


@products_group.command("update")
@click.argument("config", type=click.Path(dir_okay=False))
@actor_option("Who changes the policy (an admin; default: $GEOMESH_USER).")
@json_option
def products_update(config: str, actor: str | None, as_json: bool) -> None:
    """Change the registered config of CONFIG's product to CONFIG.

    A change that loosens governance (fewer approvals, a rule disabled, a severity lowered,
    a route softened, strict off, an escalation target removed) waits until another admin
    or steward runs `geomesh products approve PRODUCT_ID DIGEST`; others apply at once.
    """
    with errors_at_edge():
        cfg = load_config(config)
        ws = open_workspace(cfg)
        change = policy.update_config(ws, cfg, actor=prove_actor(ws, actor))
    if as_json:
        echo_json(change.to_json())
        return
    _echo_change(change)


@products_group.command("approve")
@click.argument("product_id")
@click.argument("digest")
@actor_option("Who approves (an admin or steward other than the proposer).")
@json_option
def products_approve(product_id: str, digest: str, actor: str | None, as_json: bool) -> None:
    """Approve the pending config change DIGEST of PRODUCT_ID (four eyes)."""
    with errors_at_edge():
        ws = open_workspace()
        change = policy.approve_config(ws, product_id, digest, actor=prove_actor(ws, actor))
    if as_json:
        echo_json(change.to_json())
        return
    _echo_change(change)


def _line(v: PolicyVersion) -> str:
    who = v.proposed_by + (f", approved by {v.approved_by}" if v.approved_by else "")
    spatial = (
        "  spatial contract changed (next release MAJOR)" if v.spatial_contract_changed else ""
    )
    return (
        f"v{v.version:<3} {v.status:<10} {v.change:<10} {v.digest[:12]}… "
        f"(was {v.previous_digest[:12] + '…' if v.previous_digest else '-'}) "
        f"{v.proposed_at:%Y-%m-%d %H:%M} {who}{spatial}"
    )


@products_group.command("history")
@click.argument("product_id")
@json_option
def products_history(product_id: str, as_json: bool) -> None:
    """Every version of PRODUCT_ID's registered config, newest first, with its diff."""
    with errors_at_edge():
        versions = policy.policy_history(open_workspace(), product_id)
    if as_json:
        echo_json([v.to_json() for v in versions])
        return
    for v in versions:
        click.echo(_line(v))
        for line in v.diff_text.splitlines():
            click.echo(f"      {line}")


@products_group.command("show")
@click.argument("product_id")
@click.option("--version", "number", type=int, default=None, help="A version (default: active).")
def products_show(product_id: str, number: int | None) -> None:
    """Print PRODUCT_ID's registered config as YAML (secrets masked): the config to pass."""
    with errors_at_edge():
        versions = policy.policy_history(open_workspace(), product_id)
        chosen = next(
            (
                v
                for v in versions
                if (v.version == number if number is not None else v.status == "active")
            ),
            None,
        )
        if chosen is None:
            raise NotFound(
                f"product {product_id!r} has no config version {number}",
                hint=f"see `geomesh products history {product_id}`",
            )
    click.echo(f"# {product_id} config version {chosen.version} ({chosen.status}) {chosen.digest}")
    click.echo(yaml.safe_dump(chosen.config, sort_keys=False), nl=False)
