"""Who acts: the one place the CLI proves the actor of a state change.

Loaded only by the commands that change state (a token or a password check imports the
identity services); read-only commands open a workspace with :mod:`geomesh.cli._session`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from geomesh.auth import SYSTEM
from geomesh.cli._base import PASSWORD_STDIN_META, PROOF_HINT, TOKEN_FILE_META
from geomesh.cli._session import cli_channel
from geomesh.errors import IdentityNotProven
from geomesh.services import auth_session, tokens
from geomesh.workspace import Workspace


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
