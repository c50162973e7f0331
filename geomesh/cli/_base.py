"""The root click group, shared options and error mapping for every command."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from geomesh.auth import SYSTEM
from geomesh.config import ProductConfig, load_config
from geomesh.errors import GeomeshError
from geomesh.settings import load_settings
from geomesh.workspace import Workspace

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geomesh")
def cli() -> None:
    """geomesh: governed ingestion of COG tiles into domain-scoped STAC data products."""


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="geomesh", standalone_mode=True)
    except GeomeshError as exc:  # pragma: no cover - handled in commands via `errors_at_edge`
        click.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(EXIT_ERROR)


@contextmanager
def errors_at_edge() -> Iterator[None]:
    """Turn a GeomeshError into one clear line on stderr and exit status 2."""
    try:
        yield
    except GeomeshError as exc:
        click.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(EXIT_ERROR)


def actor_option(help_text: str = "Who acts (default: $GEOMESH_USER).") -> Callable[[F], F]:
    return click.option("--actor", default=None, help=help_text)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def resolve_actor(actor: str | None) -> str:
    return actor or os.environ.get("GEOMESH_USER") or SYSTEM


def open_workspace(config: ProductConfig | None = None) -> Workspace:
    return Workspace.open(load_settings(), config=config)


def load(config_path: str | Path) -> ProductConfig:
    return load_config(config_path)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


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
