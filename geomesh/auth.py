"""Users, roles and the one permission table every service call checks."""

from __future__ import annotations

import re
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlmodel import Session, select

from geomesh.errors import AlreadyExists, NotFound, PermissionDenied
from geomesh.models import Role, User

#: The built-in principal for automated actions (routing, demo seeding, local CLI without a user).
SYSTEM: Final = "system"

#: action -> roles allowed. The single source of truth for access control.
PERMISSIONS: Final[dict[str, frozenset[Role]]] = {
    "ingest": frozenset({Role.admin, Role.steward}),
    "validate": frozenset({Role.admin, Role.steward, Role.analyst}),
    "remediate": frozenset({Role.admin, Role.steward}),
    "quarantine": frozenset({Role.admin, Role.steward, Role.analyst}),
    "quarantine.release": frozenset({Role.admin, Role.steward, Role.analyst}),
    "quarantine.discard": frozenset({Role.admin, Role.steward, Role.analyst}),
    "signoff.request": frozenset({Role.admin, Role.steward, Role.analyst}),
    "signoff": frozenset({Role.steward}),
    "promote": frozenset({Role.admin, Role.steward}),
    "rollback": frozenset({Role.admin, Role.steward}),
    "users.manage": frozenset({Role.admin}),
    "outbox.retry": frozenset({Role.admin, Role.steward}),
    "doctor.gc": frozenset({Role.admin}),
}
#: actions the built-in system principal may take (never sign-off: a person must decide)
SYSTEM_ACTIONS: Final = frozenset(PERMISSIONS) - {"signoff"}

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(user: User, password: str) -> bool:
    if not user.password_hash:
        return False
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def get_user(session: Session, name: str) -> User | None:
    return session.exec(select(User).where(User.name == name)).first()


def require(session: Session, actor: str, action: str) -> Role:
    """Check that ``actor`` may perform ``action``; return its role or raise PermissionDenied."""
    if action not in PERMISSIONS:
        raise KeyError(f"unknown action {action!r}")  # a programming error, not user input
    if actor == SYSTEM:
        if action in SYSTEM_ACTIONS:
            return Role.admin
        raise PermissionDenied(f"the system principal cannot {action}; a named steward must")
    user = get_user(session, actor)
    if user is None:
        raise PermissionDenied(
            f"unknown user {actor!r}", hint="create it with `geomesh users add NAME --role ROLE`"
        )
    if user.role not in PERMISSIONS[action]:
        allowed = ", ".join(sorted(r.value for r in PERMISSIONS[action]))
        raise PermissionDenied(
            f"user {actor!r} has role {user.role.value!r}; {action} needs one of: {allowed}"
        )
    return user.role


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name) or name == SYSTEM:
        raise PermissionDenied(
            f"{name!r} is not a valid user name; use lower-case letters, digits, '.', '_' and '-' "
            f"(not {SYSTEM!r})"
        )
    return name


def create_user(session: Session, *, name: str, role: Role, password: str | None = None) -> User:
    validate_name(name)
    if get_user(session, name) is not None:
        raise AlreadyExists(f"user {name!r} already exists")
    user = User(name=name, role=role, password_hash=hash_password(password) if password else None)
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, name: str, password: str) -> User:
    user = get_user(session, name)
    if user is None or not verify_password(user, password):
        raise NotFound("unknown user name or wrong password")
    return user
