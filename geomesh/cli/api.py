"""`geomesh api`: serve the inbound governance webhook (Starlette on uvicorn)."""

from __future__ import annotations

import ipaddress
import signal
from typing import Any

import click
import uvicorn

from geomesh.api import create_app
from geomesh.cli._base import cli, errors_at_edge
from geomesh.cli._session import open_workspace


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@cli.command("api")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8600, show_default=True, type=int)
def api_cmd(host: str, port: int) -> None:
    """Serve POST /v1/signoff (signed decisions from approval tools), GET /v1/health and
    read-only release and item status. Put it behind TLS when it listens beyond loopback."""
    with errors_at_edge():
        ws = open_workspace()
    if not _loopback(host):
        click.secho(
            f"warning: listening on {host}: terminate TLS in front of it (a reverse proxy)",
            err=True,
            fg="yellow",
        )
    # uvicorn shuts down gracefully on SIGTERM / Ctrl-C and then re-raises the signal to
    # the handler it found: a no-op one makes that graceful stop exit 0
    signal.signal(signal.SIGTERM, _after_shutdown)
    signal.signal(signal.SIGINT, _after_shutdown)
    uvicorn.run(create_app(ws), host=host, port=port, log_level="warning", access_log=False)
    ws.close()


def _after_shutdown(_signum: int, _frame: Any) -> None:
    return None
