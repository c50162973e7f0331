"""Users: the current role of a user by name (a read model for the app)."""

from __future__ import annotations

from geomesh.auth import get_user
from geomesh.workspace import Workspace


def user_role(ws: Workspace, name: str) -> str | None:
    """The current role of a user (None when the user does not exist)."""
    with ws.read() as session:
        user = get_user(session, name)
        return user.role.value if user is not None else None
