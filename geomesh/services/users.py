"""User management: add users with a role (audited) and list them."""

from __future__ import annotations

from sqlmodel import col, select

from geomesh import audit, auth
from geomesh.errors import AlreadyExists, PermissionDenied
from geomesh.models import Role, User, UserPublic
from geomesh.workspace import Workspace


def _public(user: User) -> UserPublic:
    return UserPublic.model_validate(user, from_attributes=True)


def add_user(
    ws: Workspace, *, actor: str, name: str, role: Role | str, password: str | None = None
) -> UserPublic:
    """Create a user. Only admins (or the built-in system principal, to bootstrap) may.

    Idempotent: adding an existing user with the same role is a no-op (the password is
    left unchanged); with a different role it raises AlreadyExists.
    """
    try:
        wanted = Role(role)
    except ValueError as exc:
        allowed = ", ".join(r.value for r in Role)
        raise PermissionDenied(f"{role!r} is not a role; use one of: {allowed}") from exc
    with ws.transaction() as session:
        auth.require(session, actor, "users.manage")
        existing = auth.get_user(session, name)
        if existing is not None:
            if existing.role == wanted:
                return _public(existing)
            raise AlreadyExists(
                f"user {name!r} already exists with role {existing.role.value!r}",
                hint="user roles are not changed by `users add`",
            )
        user = auth.create_user(session, name=name, role=wanted, password=password)
        audit.append(
            session,
            actor=actor,
            action="user.add",
            target=name,
            state_after=wanted.value,
            details={"role": wanted.value, "password": password is not None},
        )
        return _public(user)


def list_users(ws: Workspace) -> list[UserPublic]:
    with ws.read() as session:
        return [_public(u) for u in session.exec(select(User).order_by(col(User.name))).all()]
