"""Proven identity in tests: add users the way a real workspace gets them, and act as one.

``add_users`` bootstraps the first admin (the ``system`` principal may add only that one,
on an empty user table) and adds the rest as that admin. ``token_env`` creates an API token
for a user through the real service and returns the environment a CLI run needs to act as
that user (``GEOMESH_TOKEN``): the one way the CLI tests prove who acts.
"""

from __future__ import annotations

from collections.abc import Mapping

from geomesh.auth import SYSTEM
from geomesh.services import tokens, users
from geomesh.workspace import Workspace

ADMIN = "root"


def add_users(
    ws: Workspace, roles: Mapping[str, str], *, admin: str = ADMIN, password: str | None = None
) -> None:
    """Create ``roles`` (name -> role); ``admin`` is bootstrapped first when no user exists."""
    existing = {u.name for u in users.list_users(ws)}
    if not existing:
        users.add_user(ws, actor=SYSTEM, name=admin, role="admin", password=password)
    for name, role in roles.items():
        if name != admin or existing:
            users.add_user(ws, actor=admin, name=name, role=role, password=password)


def token_env(ws: Workspace, name: str) -> dict[str, str]:
    """The environment of a CLI run proven as ``name`` (a fresh API token of that user).

    The token is proven once here, so its ``last_used_at`` is set before the test runs a
    command (tests that compare every row before and after a command see no change).
    """
    token, _info = tokens.create_token(ws, actor=name, name=name)
    assert tokens.prove_token(ws, token) == name
    return {"GEOMESH_TOKEN": token}
