"""`geomesh validate`, `geomesh rules`, `geomesh remediate`, `geomesh schemas sync`, `geomesh outbox`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from geomesh.cli._base import actor_option, cli, echo_json, errors_at_edge, json_option
from geomesh.cli._identity import prove_actor
from geomesh.cli._session import open_workspace
from geomesh.config import ProductConfig, load_config
from geomesh.errors import DeliveryError, ValidationError
from geomesh.services.outbox import deliver_outbox, list_outbox, retry_outbox
from geomesh.services.pipeline import validate_and_route
from geomesh.services.remediation import remediate_item
from geomesh.settings import load_settings
from geomesh.validation.engine import FileResult, iter_json_files, load_document, validate_file
from geomesh.validation.findings import Finding, count_by_severity, exit_code, worst_severity
from geomesh.validation.registry import RULES, Policy
from geomesh.validation.schemas import DEFAULT_SCHEMA_URLS, extension_urls, sync_schemas

_COLOURS = {"P1": "red", "P2": "yellow", "P3": "cyan"}


def _schema_store(config: ProductConfig | None, override: str | None) -> Path:
    if override:
        return Path(override).expanduser().resolve()
    settings = load_settings()
    root = settings.resolved_storage_root(config.storage.root if config else None)
    return settings.resolved_schema_dir(root)


def echo_finding(f: Finding, indent: str = "  ") -> None:
    click.secho(f"{indent}{f.severity.value} {f.rule_id} ", fg=_COLOURS[f.severity.value], nl=False)
    click.echo(f"{f.path or '(item)'}: {f.message}")
    click.echo(f"{indent}   fix: {f.remediation}")


@cli.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--config",
    "config_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Product config: also check its contract, boundary and block size.",
)
@click.option("--strict", is_flag=True, help="Raise P3 findings to P2.")
@click.option(
    "--schema-dir",
    default=None,
    help="Offline STAC schema store (default: $GEOMESH_SCHEMA_DIR or <root>/stac-schemas).",
)
@json_option
def validate_cmd(
    paths: tuple[Path, ...],
    config_path: str | None,
    strict: bool,
    schema_dir: str | None,
    as_json: bool,
) -> None:
    """Validate STAC item JSON files (or folders of them), offline.

    Exit status by worst finding: 0 clean, 1 P3 only, 2 P2, 3 P1.
    """
    with errors_at_edge():
        cfg = load_config(config_path) if config_path else None
        policy = Policy.from_config(cfg, strict=strict)
        store = _schema_store(cfg, schema_dir)
        files = list(iter_json_files(paths))
        if not files:
            raise ValidationError(
                f"no .json files found in {', '.join(map(str, paths))}",
                hint="give STAC item files or folders that contain them",
            )
        # asset hrefs are read only inside the item's folder or the storage root
        root = load_settings().resolved_storage_root(cfg.storage.root if cfg else None)
        results = [
            validate_file(p, config=cfg, schema_dir=store, policy=policy, allowed_roots=[root])
            for p in files
        ]
    every = [f for r in results for f in r.findings]
    code = exit_code(every)
    if as_json:
        worst = worst_severity(every)
        echo_json(
            {
                "files": [r.to_json() for r in results],
                "summary": {
                    "files": len(results),
                    "worst_severity": worst.value if worst else None,
                    "counts": count_by_severity(every),
                    "exit_code": code,
                },
            }
        )
    else:
        for r in results:
            _print_result(r)
        counts = count_by_severity(every)
        click.echo(
            f"summary: {len(results)} file(s); " + ", ".join(f"{k}: {v}" for k, v in counts.items())
        )
    sys.exit(code)


def _print_result(r: FileResult) -> None:
    if not r.findings:
        click.secho(f"ok   {r.path} (item {r.item_id})", fg="green")
        return
    worst = worst_severity(r.findings)
    label = worst.value if worst else "ok"
    click.secho(f"{label:<4} {r.path} (item {r.item_id})", fg=_COLOURS.get(label), bold=True)
    for f in r.findings:
        echo_finding(f)


@cli.command("rules")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False))
@click.option("--strict", is_flag=True, help="Show severities as --strict would.")
@json_option
def rules_cmd(config_path: str | None, strict: bool, as_json: bool) -> None:
    """List the validation rules with their (product's) severity and remediation hint."""
    with errors_at_edge():
        cfg = load_config(config_path) if config_path else None
        policy = Policy.from_config(cfg, strict=strict)
    rows = [
        {
            "id": r.id,
            "severity": policy.severity_of(r.id).value,
            "default_severity": r.severity.value,
            "enabled": policy.enabled(r.id),
            "scope": r.scope,
            "description": r.description,
            "remediation": r.remediation,
        }
        for r in RULES.values()
    ]
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        state = "" if row["enabled"] else " (disabled)"
        click.echo(f"{row['id']:<16} {row['severity']}{state}  {row['description']}")


@cli.command("remediate")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("item_id")
@actor_option("Who remediates (steward or admin; default: $GEOMESH_USER).")
@click.option("--no-route", is_flag=True, help="Create the new version only; do not validate it.")
@json_option
def remediate_cmd(
    config: str, item_id: str, actor: str | None, no_route: bool, as_json: bool
) -> None:
    """Derive missing or drifted proj:* fields of ITEM_ID from its raster into a new version.

    The old version becomes superseded; the new one (derived_from = old id) is validated
    and routed like a fresh ingest.
    """
    with errors_at_edge():
        cfg = load_config(config)
        ws = open_workspace(cfg)
        who = prove_actor(ws, actor)
        result = remediate_item(ws, cfg, item_id, actor=who)
        outcome = None
        if not no_route and result.created:
            outcome = validate_and_route(ws, cfg, result.new_item_id, actor=who)
    if as_json:
        data: dict[str, Any] = result.to_json()
        data["route"] = outcome.to_json() if outcome else None
        echo_json(data)
        return
    if not result.created:
        click.echo(f"{item_id} was already remediated into {result.new_item_id}")
        return
    click.echo(f"{item_id} → {result.new_item_id} (derived {', '.join(result.fields)})")
    click.echo(f"{item_id} is now superseded")
    if outcome is not None:
        click.echo(f"{result.new_item_id}: {outcome.action} → {outcome.state}")
        for f in outcome.findings:
            echo_finding(f)


# --------------------------------------------------------------------------- schemas


@cli.group("schemas")
def schemas_group() -> None:
    """The offline STAC schema store."""


@schemas_group.command("sync")
@click.argument("items", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--store", default=None, help="Schema store (default: $GEOMESH_SCHEMA_DIR).")
@click.option(
    "--mirror",
    default=None,
    help="Fetch from this base URL laid out like the store (e.g. an internal mirror).",
)
@click.option("--timeout", default=5.0, show_default=True, help="Seconds per download.")
@json_option
def schemas_sync(
    items: tuple[Path, ...], store: str | None, mirror: str | None, timeout: float, as_json: bool
) -> None:
    """Download the schemas ITEMS reference (default: those geomesh writes) into the store."""
    with errors_at_edge():
        target = _schema_store(None, store)
        if items:
            docs = [load_document(p).doc for p in iter_json_files(items)]
            urls = extension_urls(d for d in docs if d is not None)
        else:
            urls = list(DEFAULT_SCHEMA_URLS)
        report = sync_schemas(target, urls, mirror=mirror, timeout=timeout)
    if as_json:
        echo_json({"store": str(target), **report.to_json()})
    else:
        click.echo(f"store {target}: {len(report.fetched)} fetched, {len(report.present)} present")
        for url in report.fetched:
            click.echo(f"  fetched {url}")
        for url, why in report.failed.items():
            click.secho(f"  failed  {url}: {why}", fg="red", err=True)
    sys.exit(1 if report.failed else 0)


# --------------------------------------------------------------------------- outbox


@cli.group("outbox")
def outbox_group() -> None:
    """Escalation webhooks waiting, delivered or failed."""


@outbox_group.command("list")
@click.option("--status", default=None, help="pending, delivered or failed.")
@click.option("--product", default=None, help="Only this product id.")
@json_option
def outbox_list(status: str | None, product: str | None, as_json: bool) -> None:
    """List outbox messages, newest first."""
    with errors_at_edge():
        rows = list_outbox(open_workspace(), status=status, product_id=product)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        err = f"  {r['last_error']}" if r["last_error"] else ""
        click.echo(
            f"{r['id']:>5} {r['status']:<9} {r['event']:<10} {r['target']:<16} "
            f"attempts={r['attempts']}{err}"
        )


@outbox_group.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_failed", is_flag=True, help="Retry every failed message.")
@actor_option()
def outbox_retry(ids: tuple[int, ...], all_failed: bool, actor: str | None) -> None:
    """Queue failed messages IDS (or --all) for delivery again."""
    with errors_at_edge():
        if not ids and not all_failed:
            raise DeliveryError("give message ids or --all", hint="see `geomesh outbox list`")
        ws = open_workspace()
        retried = retry_outbox(ws, list(ids) if ids else None, actor=prove_actor(ws, actor))
    click.echo(f"{len(retried)} message(s) queued again: {', '.join(map(str, retried)) or '-'}")


@outbox_group.command("deliver")
@click.option(
    "--config",
    "config_paths",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Product config(s) holding inline webhook secrets (secret_env needs none).",
)
@click.option("--limit", default=100, show_default=True)
@click.option("--timeout", default=5.0, show_default=True, help="Seconds per request.")
@json_option
def outbox_deliver(
    config_paths: tuple[str, ...], limit: int, timeout: float, as_json: bool
) -> None:
    """Send the due pending messages once."""
    with errors_at_edge():
        cfgs = [load_config(p) for p in config_paths]
        ws = open_workspace(cfgs[0] if cfgs else None)
        report = deliver_outbox(ws, configs=cfgs, limit=limit, timeout=timeout)
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(
            f"delivered {len(report.delivered)}, retrying {len(report.retrying)}, "
            f"failed {len(report.failed)}"
        )
    sys.exit(1 if report.failed else 0)
