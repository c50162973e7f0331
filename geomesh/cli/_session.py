"""Who acts and where: the proven actor and the workspace of a CLI command.

Imported by the commands that touch a workspace (the heavy part of the CLI: the database,
the object store, the services); ``geomesh --help`` never loads it.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
from pathlib import Path
from typing import Any

import click

from geomesh.auth import SYSTEM, Channel
from geomesh.cli._base import PASSWORD_STDIN_META, PROOF_HINT, TOKEN_FILE_META
from geomesh.config import ProductConfig, load_config
from geomesh.errors import IdentityNotProven
from geomesh.services import auth_session, tokens
from geomesh.settings import load_settings
from geomesh.workspace import Workspace


def cli_channel() -> dict[str, str]:
    """The channel every audit event of this CLI process records: OS user and host."""
    try:
        os_user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        os_user = f"uid:{os.getuid()}"
    return {"name": Channel.cli.value, "os_user": os_user, "host": socket.gethostname()}


def _token(meta: dict[str, Any]) -> str | None:
    path = meta.get(TOKEN_FILE_META)
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise IdentityNotProven(f"--token-file {path} cannot be read ({why})") from None
    return os.environ.get("GEOMESH_TOKEN", "").strip() or None


def prove_actor(
    ws: Workspace,
    actor: str | None,
    *,
    system_ok: bool = False,
    default: str | None = None,
) -> str:
    """The proven user who acts: the one place the CLI resolves identity.

    A token (``--token-file``, else ``GEOMESH_TOKEN``) proves its own user, and only that
    user (``--actor`` naming anyone else is refused). Without a token, the claimed user
    (``--actor``, ``$GEOMESH_USER``, else ``default``) proves itself with its password,
    prompted on a terminal or read with ``--password-stdin``. With no claim at all the
    built-in ``system`` principal acts, only where ``system_ok`` (unproven ingest, the
    first admin's bootstrap); every other state change needs a proven user.
    """
    ctx = click.get_current_context(silent=True)
    meta: dict[str, Any] = ctx.meta if ctx is not None else {}
    claimed = actor or os.environ.get("GEOMESH_USER") or None
    token = _token(meta)
    if token is not None:
        name = tokens.prove_token(ws, token)
        if claimed is not None and claimed != name:
            raise IdentityNotProven(
                f"the API token proves {name!r}, not {claimed!r}",
                hint="one token is one actor: act as another user only with that user's proof",
            )
        return name
    claimed = claimed or default
    if claimed is None or claimed == SYSTEM:
        if system_ok:
            return SYSTEM
        raise IdentityNotProven(
            "this command changes state: who acts is not proven", hint=PROOF_HINT
        )
    if meta.get(PASSWORD_STDIN_META):
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = click.prompt(f"password for {claimed}", hide_input=True, err=True)
    else:
        raise IdentityNotProven(f"--actor {claimed} is claimed but not proven", hint=PROOF_HINT)
    channel = ws.channel or cli_channel()
    client = f"cli:{channel.get('os_user', '?')}@{channel.get('host', '?')}"
    return auth_session.sign_in(ws, claimed, password, client=client).name


def open_workspace(config: ProductConfig | None = None) -> Workspace:
    ws = Workspace.open(load_settings(), config=config)
    ws.channel = cli_channel()
    return ws


def load(config_path: str | Path) -> ProductConfig:
    return load_config(config_path)
