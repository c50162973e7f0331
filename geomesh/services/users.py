"""User management (audited): add, list, change password or role, disable and enable.

Users are disabled, never deleted, so the history that names them stays readable. Only an
admin manages users; the one exception is the bootstrap: while the user table is empty,
the built-in ``system`` principal may add the first admin (``geomesh users add NAME
--role admin --password-stdin``). The last enabled admin can be neither demoted nor
disabled, so a workspace never locks itself out.
"""

from __future__ import annotations

from sqlmodel import Session, col, func, select

from geomesh import audit, auth, db
from geomesh.auth import SYSTEM
from geomesh.errors import AlreadyExists, IdentityNotProven, NotFound, PermissionDenied
from geomesh.models import Role, User, UserPublic
from geomesh.workspace import Workspace

#: advisory lock of every change that counts users (bootstrap, the last enabled admin)
USERS_LOCK = "geomesh.users"


def _public(user: User) -> UserPublic:
    return UserPublic.model_validate(user, from_attributes=True)


def _role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError as exc:
        allowed = ", ".join(r.value for r in Role)
        raise PermissionDenied(f"{role!r} is not a role; use one of: {allowed}") from exc


def _user(session: Session, name: str) -> User:
    user = auth.get_user(session, name)
    if user is None:
        raise NotFound(f"no user {name!r}", hint="see `geomesh users list`")
    return user


def _user_count(session: Session) -> int:
    return int(session.exec(select(func.count()).select_from(User)).one())


def _enabled_admins(session: Session) -> int:
    stmt = select(func.count()).select_from(User).where(User.role == Role.admin)
    return int(session.exec(stmt.where(col(User.disabled).is_(False))).one())


def _require_manage(session: Session, actor: str, *, bootstrap_role: Role | None = None) -> bool:
    """Check ``users.manage``; True when this is the bootstrap of the first admin."""
    if actor == SYSTEM and bootstrap_role == Role.admin and _user_count(session) == 0:
        return True
    if actor == SYSTEM and _user_count(session) == 0:
        raise PermissionDenied(
            "the first user must be an admin",
            hint="`geomesh users add NAME --role admin --password-stdin`",
        )
    auth.require(session, actor, "users.manage")
    return False


def add_user(
    ws: Workspace,
    *,
    actor: str,
    name: str,
    role: Role | str,
    password: str | None = None,
    email: str | None = None,
) -> UserPublic:
    """Create a user (an admin's action; ``system`` only for the first admin).

    Idempotent: adding an existing user with the same role is a no-op (password and
    e-mail are left unchanged); with a different role it raises AlreadyExists.
    """
    wanted = _role(role)
    with ws.transaction() as session:
        # serialised: of two bootstraps on an empty table, the second finds the first
        # admin (and is refused); a user added twice at once is added once
        db.advisory_lock(session, USERS_LOCK)
        bootstrap = _require_manage(session, actor, bootstrap_role=wanted)
        existing = auth.get_user(session, name)
        if existing is not None:
            if existing.role == wanted:
                return _public(existing)
            raise AlreadyExists(
                f"user {name!r} already exists with role {existing.role.value!r}",
                hint=f"change it with `geomesh users role {name} {wanted.value}`",
            )
        user = auth.create_user(session, name=name, role=wanted, password=password, email=email)
        audit.append(
            session,
            actor=actor,
            action="user.add",
            target=name,
            state_after=wanted.value,
            details={
                "role": wanted.value,
                "password": password is not None,
                "email": user.email,
                **({"bootstrap": True} if bootstrap else {}),
            },
        )
        return _public(user)


def list_users(ws: Workspace) -> list[UserPublic]:
    with ws.read() as session:
        return [_public(u) for u in session.exec(select(User).order_by(col(User.name))).all()]


def set_password(
    ws: Workspace,
    *,
    actor: str,
    name: str,
    password: str,
    current_password: str | None = None,
) -> UserPublic:
    """Change a password: the user's own (proven; the app also asks for the current one,
    ``current_password``) or, as an admin, anyone's."""
    with ws.transaction() as session:
        user = _user(session, name)
        if actor != name:
            auth.require(session, actor, "users.manage")
        elif user.disabled:
            raise PermissionDenied(f"user {name!r} is disabled")
        elif current_password is not None and not auth.verify_password(user, current_password):
            raise IdentityNotProven("the current password is wrong")
        user.password_hash = auth.hash_password(password)
        session.add(user)
        audit.append(
            session,
            actor=actor,
            action="user.passwd",
            target=name,
            details={"by": "self" if actor == name else "admin"},
        )
        session.flush()
        return _public(user)


def set_role(ws: Workspace, *, actor: str, name: str, role: Role | str) -> UserPublic:
    """Change a user's role (admin). The last enabled admin keeps its role."""
    wanted = _role(role)
    with ws.transaction() as session:
        db.advisory_lock(session, USERS_LOCK)  # two demotions never both pass the count
        auth.require(session, actor, "users.manage")
        user = _user(session, name)
        before = user.role
        if before == wanted:
            return _public(user)
        if before == Role.admin and not user.disabled and _enabled_admins(session) <= 1:
            raise PermissionDenied(
                f"{name!r} is the last enabled admin; it keeps its role",
                hint="make another user an admin first",
            )
        user.role = wanted
        session.add(user)
        audit.append(
            session,
            actor=actor,
            action="user.role",
            target=name,
            state_before=before.value,
            state_after=wanted.value,
        )
        session.flush()
        return _public(user)


def set_disabled(ws: Workspace, *, actor: str, name: str, disabled: bool) -> UserPublic:
    """Disable (or enable again) a user (admin). A disabled user cannot sign in, use a
    token or act; its name stays in the history. The last enabled admin stays enabled."""
    with ws.transaction() as session:
        db.advisory_lock(session, USERS_LOCK)  # two disables never both pass the count
        auth.require(session, actor, "users.manage")
        user = _user(session, name)
        if user.disabled == disabled:
            return _public(user)
        if disabled and user.role == Role.admin and _enabled_admins(session) <= 1:
            raise PermissionDenied(
                f"{name!r} is the last enabled admin and cannot be disabled",
                hint="make another user an admin first",
            )
        user.disabled = disabled
        session.add(user)
        audit.append(
            session,
            actor=actor,
            action="user.disable" if disabled else "user.enable",
            target=name,
            state_before="disabled" if not disabled else "enabled",
            state_after="disabled" if disabled else "enabled",
        )
        session.flush()
        return _public(user)
