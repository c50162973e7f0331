"""`geomesh signoff`, `promote`, `rollback` and `releases list|show|diff|catalog|snapshot`."""

from __future__ import annotations

import click

from geomesh.cli._base import actor_option, cli, echo_json, errors_at_edge, json_option
from geomesh.cli._identity import prove_actor
from geomesh.cli._session import open_workspace
from geomesh.config import load_config
from geomesh.errors import SignoffError
from geomesh.services import history, promotion, rollback, signoff, snapshot

#: printed on a successful (or already completed) rollback, for scripts to wait on
ROLLBACK_TOKEN = "PRODUCT_ROLLBACK_COMPLETE"
_CURRENT = "__current__"


@cli.command("signoff")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("item_id")
@click.option("--approve", "decision", flag_value="approve", help="Approve the item's content.")
@click.option("--reject", "decision", flag_value="reject", help="Reject it (needs --comment).")
@click.option("--request", "decision", flag_value="request", help="Ask stewards to review it.")
@click.option("--comment", default=None, help="Why (required with --reject).")
@actor_option("Who decides (a steward; default: $GEOMESH_USER).")
@json_option
def signoff_cmd(
    config: str,
    item_id: str,
    decision: str | None,
    comment: str | None,
    actor: str | None,
    as_json: bool,
) -> None:
    """Approve or reject ITEM_ID's current content, or request a review."""
    with errors_at_edge():
        if decision is None:
            raise SignoffError(
                f"say what to do with item {item_id}: --approve, --reject --comment TEXT "
                "or --request"
            )
        cfg = load_config(config)
        ws = open_workspace(cfg)
        who = prove_actor(ws, actor)
        if decision == "request":
            status = signoff.request_signoff(ws, cfg, item_id, actor=who)
        else:
            status = signoff.sign_off(
                ws, cfg, item_id, actor=who, approve=decision == "approve", comment=comment
            )
        if as_json:
            echo_json(status.to_json())
            return
        gate = status.gate()
        click.echo(f"{item_id}: {decision} recorded for digest {status.content_digest[:12]}…")
        click.echo(f"sign-off gate: {'met' if gate.ok else 'not met'} — {gate.detail}")


@cli.command("promote")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("item_ids", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Show the gates and the computed version only.")
@actor_option("Who promotes (admin or steward; default: $GEOMESH_USER).")
@json_option
def promote_cmd(
    config: str, item_ids: tuple[str, ...], dry_run: bool, actor: str | None, as_json: bool
) -> None:
    """Release items whose gates are met (default: every eligible item) as a new version."""
    with errors_at_edge():
        cfg = load_config(config)
        ws = open_workspace(cfg)
        ids = list(item_ids) or None
        if dry_run:
            plan = promotion.plan_promotion(ws, cfg, ids)
            if as_json:
                echo_json(plan.to_json())
                return
            for p in plan.items:
                mark = "eligible" if p.eligible else "blocked "
                click.echo(f"{mark} {p.item_id}")
                for reason in p.reasons:
                    click.echo(f"         {reason}")
            click.echo(
                f"next version: {plan.next_version or '-'}"
                + (
                    f" ({plan.bump.value} bump from {plan.current_version or '-'})"
                    if plan.bump
                    else ""
                )
            )
            return
        result = promotion.promote(ws, cfg, ids, actor=prove_actor(ws, actor))
        if as_json:
            echo_json(result.to_json())
            return
        if result.release is None or result.already:
            click.echo(result.message)
            return
        click.echo(result.release.version)
        click.echo(
            f"{result.message}: {len(result.promoted)} promoted, "
            f"{len(result.superseded)} superseded; catalog {result.catalog_key}",
            err=True,
        )


@cli.command("rollback")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--item", "item_id", default=None, help="Remove this item from the current release.")
@click.option(
    "--release",
    "release",
    is_flag=False,
    flag_value=_CURRENT,
    default=None,
    help="Roll back the latest release (a repeat is a no-op); or name the current release "
    "(id or version) to roll it back.",
)
@actor_option("Who rolls back (admin or steward; default: $GEOMESH_USER).")
@json_option
def rollback_cmd(
    config: str, item_id: str | None, release: str | None, actor: str | None, as_json: bool
) -> None:
    """Roll back one item (a new PATCH release) or the whole current release."""
    with errors_at_edge():
        if (item_id is None) == (release is None):
            raise click.UsageError("give exactly one of --item ITEM_ID or --release [RELEASE]")
        cfg = load_config(config)
        ws = open_workspace(cfg)
        who = prove_actor(ws, actor)
        if item_id is not None:
            result = rollback.rollback_item(ws, cfg, item_id, actor=who)
        else:
            target = None if release == _CURRENT else release
            result = rollback.rollback_release(ws, cfg, actor=who, release_id=target)
        if as_json:
            echo_json(result.to_json())
        else:
            click.echo(result.message)
        click.echo(f"{ROLLBACK_TOKEN}: {result.current_release_id or '-'}")


@cli.group("releases")
def releases_group() -> None:
    """Release history: list, show, diff, and the catalog at a version."""


@releases_group.command("list")
@click.argument("config", type=click.Path(dir_okay=False))
@json_option
def releases_list(config: str, as_json: bool) -> None:
    """Every release of the product, oldest first."""
    with errors_at_edge():
        cfg = load_config(config)
        infos = history.list_releases(open_workspace(cfg), cfg.product_id)
        if as_json:
            echo_json([i.to_json() for i in infos])
            return
        if infos and not any(i.current for i in infos):
            click.echo(f"no current release: {cfg.product_id} was withdrawn", err=True)
        for i in infos:
            flags = " ".join(
                f
                for f, on in (
                    ("current", i.current),
                    ("rolled-back", i.deprecated),
                    ("geoparquet", i.snapshot_key is not None),
                )
                if on
            )
            click.echo(
                f"{i.version:<10} {i.id[:12]}  {i.kind:<13} {i.item_count:>6} items  "
                f"+{i.added} -{i.removed} ~{i.changed}  {i.actor:<12} {i.created_at}  {flags}"
            )


@releases_group.command("show")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("release", default="current")
@json_option
def releases_show(config: str, release: str, as_json: bool) -> None:
    """One release (id, id prefix, version or 'current') with its manifest."""
    with errors_at_edge():
        cfg = load_config(config)
        shown = history.show_release(open_workspace(cfg), cfg.product_id, release)
        if as_json:
            echo_json(shown)
            return
        for k in ("version", "id", "parent_id", "kind", "actor", "created_at", "item_count"):
            click.echo(f"{k:<11} {shown[k]}")
        click.echo(f"{'current':<11} {shown['current']}")
        click.echo(f"{'rolled back':<11} {shown['deprecated']}")
        for item in shown["manifest"]["items"]:
            click.echo(f"  {item['id']}  sha256:{item['digest'][:16]}…")


@releases_group.command("diff")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("from_release")
@click.argument("to_release")
@json_option
def releases_diff(config: str, from_release: str, to_release: str, as_json: bool) -> None:
    """Items added, removed and changed (with changed item fields) between two releases."""
    with errors_at_edge():
        cfg = load_config(config)
        diff = history.diff_releases(open_workspace(cfg), cfg.product_id, from_release, to_release)
        if as_json:
            echo_json(diff.to_json())
            return
        click.echo(f"{diff.from_version} → {diff.to_version}")
        if diff.spatial_contract_changed:
            click.echo("! spatial contract changed")
        for i in diff.added:
            click.echo(f"+ {i}")
        for i in diff.removed:
            click.echo(f"- {i}")
        for c in diff.changed:
            click.echo(f"~ {c.from_id} → {c.to_id}")
            for path in c.fields:
                click.echo(f"    {path}")


@releases_group.command("catalog")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("version", default="current")
@json_option
def releases_catalog(config: str, version: str, as_json: bool) -> None:
    """Where the static STAC catalog of a release is (path or key)."""
    with errors_at_edge():
        cfg = load_config(config)
        at = history.catalog_at(open_workspace(cfg), cfg.product_id, version)
        if as_json:
            echo_json(
                {
                    "version": at.version,
                    "release_id": at.release_id,
                    "key": at.key,
                    "path": str(at.path) if at.path else None,
                }
            )
            return
        click.echo(str(at.path) if at.path else f"production/{at.key}")


@releases_group.command("snapshot")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("version", default="current")
@actor_option("Who writes it (admin or steward; default: $GEOMESH_USER).")
@json_option
def releases_snapshot(config: str, version: str, actor: str | None, as_json: bool) -> None:
    """Write the stac-geoparquet snapshot of a release (on demand; a repeat is a no-op)."""
    with errors_at_edge():
        cfg = load_config(config)
        ws = open_workspace(cfg)
        who = prove_actor(ws, actor)
        result = snapshot.snapshot_release(ws, cfg.product_id, version, actor=who)
        if as_json:
            echo_json(result.to_json())
            return
        click.echo(f"production/{result.key}")
