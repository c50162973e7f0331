"""The root click group, shared options and error mapping for every command.

Light on purpose: the root group knows each command by name and one-line help
(:data:`COMMANDS`) and imports a command's module only when that command runs, so
``geomesh --help`` loads neither the database layer nor GDAL. Workspace and identity live
in :mod:`geomesh.cli._session`, imported by the commands that need them.
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import click

from geomesh.errors import GeomeshError
from geomesh.redact import redact

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 2


#: every top-level command: name -> (module under geomesh.cli that registers it, one-line
#: help shown by ``geomesh --help``); tests/test_cli_startup.py keeps it equal to the commands
COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "api": (
        "api",
        "Serve POST /v1/signoff (signed decisions from approval tools), GET /v1/health and read-only release and item status.",
    ),
    "audit": ("audit", "The hash-chained audit trail."),
    "demo": ("demo", "The generated demo product (San Francisco, Sentinel-2-like tiles)."),
    "discover": (
        "sources",
        "List the scenes the config's STAC `source` offers over the domain (no pixel reads).",
    ),
    "doctor": (
        "doctor",
        "Check database ↔ objects ↔ manifests ↔ published catalogs; exit 1 if inconsistent.",
    ),
    "findings": ("findings", "Read persisted validation findings."),
    "ingest": (
        "ingest",
        "Ingest RASTERS (paths, http(s):// or s3:// URLs) into the product CONFIG.",
    ),
    "inspect": ("ingest", "Show what `rio info` shows plus what the product contract needs."),
    "integrations": (
        "worker",
        "Approval tools allowed to call the inbound governance webhook (`geomesh api`).",
    ),
    "items": ("items", "List and show staged, quarantined and published items."),
    "outbox": ("validate", "Escalation webhooks waiting, delivered or failed."),
    "products": (
        "products",
        "The registered config (policy) of each product: change it, approve a change, history.",
    ),
    "promote": (
        "governance",
        "Release items whose gates are met (default: every eligible item) as a new version.",
    ),
    "quarantine": ("quarantine", "Inspect, re-validate, release or discard quarantined items."),
    "releases": ("governance", "Release history: list, show, diff, and the catalog at a version."),
    "remediate": (
        "validate",
        "Derive missing or drifted proj:* fields of ITEM_ID from its raster into a new version.",
    ),
    "rollback": (
        "governance",
        "Roll back one item (a new PATCH release) or the whole current release.",
    ),
    "rules": (
        "validate",
        "List the validation rules with their (product's) severity and remediation hint.",
    ),
    "schemas": ("validate", "The offline STAC schema store."),
    "signoff": ("governance", "Approve or reject ITEM_ID's current content, or request a review."),
    "tasks": ("worker", "The work queue the worker runs (re-clips, snapshots, previews)."),
    "users": ("users", "Users and roles (admin, steward, analyst, viewer), and their API tokens."),
    "validate": ("validate", "Validate STAC item JSON files (or folders of them), offline."),
    "worker": (
        "worker",
        "Deliver the outbox and run queued tasks (re-clips, snapshots, previews) until SIGTERM.",
    ),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when they are used, not when it is built."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            # the command's module registers it on this group when imported; the cyclic
            # garbage collector pauses meanwhile (imports allocate much and free little:
            # ~10% of a command's start), and runs again before the command does
            gc.disable()
            try:
                importlib.import_module(f"geomesh.cli.{self.lazy[cmd_name][0]}")
            finally:
                gc.enable()
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the registry's help lines: nothing is imported."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            loaded = self.commands.get(name)
            if loaded is not None:
                rows.append((name, loaded.get_short_help_str(limit)))
            else:
                stub = click.Command(name, help=self.lazy[name][1])  # help text only
                rows.append((name, stub.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="geomesh")
def cli() -> None:
    """geomesh: governed ingestion of COG tiles into domain-scoped STAC data products."""


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="geomesh", standalone_mode=True)
    except GeomeshError as exc:  # pragma: no cover - handled in commands via `errors_at_edge`
        click.secho(f"error: {redact(str(exc))}", err=True, fg="red")
        sys.exit(EXIT_ERROR)


@contextmanager
def errors_at_edge() -> Iterator[None]:
    """Turn a GeomeshError into one clear line on stderr and exit status 2."""
    try:
        yield
    except GeomeshError as exc:
        click.secho(f"error: {redact(str(exc))}", err=True, fg="red")
        sys.exit(EXIT_ERROR)


TOKEN_FILE_META: Final = "geomesh.token_file"
PASSWORD_STDIN_META: Final = "geomesh.password_stdin"
PROOF_HINT: Final = (
    "prove who acts: GEOMESH_TOKEN or --token-file (`geomesh users token create NAME`), "
    "or --actor NAME with the password (prompted on a terminal, else --password-stdin)"
)


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        ctx.meta[key] = value
        return value

    return callback


def actor_option(
    help_text: str = "Who acts (default: $GEOMESH_USER).", *, password_stdin: bool = True
) -> Callable[[F], F]:
    """``--actor`` and the proof of it: ``--token-file`` and (unless the command reads
    something else from stdin) ``--password-stdin``; ``GEOMESH_TOKEN`` works everywhere."""

    def decorate(f: F) -> F:
        f = click.option(
            "--actor",
            default=None,
            help=f"{help_text} Proven by GEOMESH_TOKEN, --token-file or the user's password.",
        )(f)
        f = click.option(
            "--token-file",
            default=None,
            type=click.Path(dir_okay=False),
            expose_value=False,
            callback=_remember(TOKEN_FILE_META),
            help="Read the API token that proves who acts from this file.",
        )(f)
        if password_stdin:
            f = click.option(
                "--password-stdin",
                is_flag=True,
                expose_value=False,
                callback=_remember(PASSWORD_STDIN_META),
                help="Read the acting user's password from stdin (instead of a prompt).",
            )(f)
        return f

    return decorate


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def echo_json_array(rows: Iterable[Any]) -> None:
    """Print ``rows`` as one JSON array, a row at a time: memory stays one row, however
    many the iterable yields (``items list --json``, ``findings export --format json``)."""
    out = sys.stdout
    first = True
    out.write("[")
    for row in rows:
        body = json.dumps(row, indent=2, default=str).replace("\n", "\n  ")
        out.write(("\n  " if first else ",\n  ") + body)
        first = False
    out.write("]\n" if first else "\n]\n")
    out.flush()


@contextmanager
def tile_progress(total: int, *, enabled: bool) -> Iterator[Callable[[object], None]]:
    """A progress bar on stderr over ``total`` tiles; yields the per-tile callback.

    Disabled (JSON output, a single tile), the callback does nothing.
    """
    if not enabled:
        yield lambda _result: None
        return
    with click.progressbar(length=total, label="ingesting", file=sys.stderr, show_pos=True) as bar:
        yield lambda _result: bar.update(1)
