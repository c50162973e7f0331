"""Users, roles and the one permission table every service call checks."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime
from functools import cache
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlmodel import Session, select

from geomesh.errors import AlreadyExists, NotFound, PermissionDenied, WeakPassword
from geomesh.models import Role, User, as_utc

#: The built-in principal for automated actions (routing, demo seeding, unproven CLI ingest).
SYSTEM: Final = "system"
#: the shortest password a user may set
MIN_PASSWORD_LENGTH: Final = 12
#: every API token starts with this, so a leaked one is recognisable (secret scanners)
TOKEN_PREFIX: Final = "gmt_"


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
    # the registered policy (issue 13): an admin changes it; a loosening change waits for
    # a second admin or steward
    "product.config": frozenset({Role.admin}),
    "product.config.approve": frozenset({Role.admin, Role.steward}),
}
#: actions the built-in system principal may take: never sign-off (a person must decide),
#: never manage users or release a quarantined item (a named, proven person must)
SYSTEM_ACTIONS: Final = frozenset(PERMISSIONS) - {
    "signoff",
    "users.manage",
    "quarantine.release",
    "product.config",  # a policy change is a person's decision (issue 13)
    "product.config.approve",
}

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_hasher = PasswordHasher()


class _Counter:
    """How many argon2 verifications this process ran (tests compare the work done)."""

    def __init__(self) -> None:
        self.value = 0


VERIFICATIONS: Final = _Counter()


def check_password_policy(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(
            f"the password has {len(password)} characters; it needs at least {MIN_PASSWORD_LENGTH}",
            hint="use a longer passphrase",
        )
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password_policy(password))


@cache
def _dummy_hash() -> str:
    """A hash of a random password with the same parameters: unknown names cost the same."""
    return _hasher.hash(secrets.token_urlsafe(24))


def _verify(password_hash: str, password: str) -> bool:
    VERIFICATIONS.value += 1
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def verify_password(user: User | None, password: str) -> bool:
    """Exactly one argon2 verification, whether or not the user exists or has a password."""
    if user is None or not user.password_hash:
        _verify(_dummy_hash(), password)
        return False
    return _verify(user.password_hash, password)


def new_token() -> tuple[str, str]:
    """A fresh API token and the digest to store (the token itself is shown once)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    """SHA-256 of a token (tokens carry 256 random bits, so no salt or stretching is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def normalise_email(email: str) -> str:
    value = email.strip().lower()
    local, _, domain = value.partition("@")
    if (
        not local
        or not domain
        or "@" in domain
        or len(value) > 254
        or any(c.isspace() for c in value)
    ):
        raise PermissionDenied(
            f"{email!r} is not an e-mail address",
            hint="give it as name@domain, e.g. alice@example.org",
        )
    return value


def aware(ts: datetime | None) -> datetime | None:
    """:func:`geomesh.models.as_utc` for an optional timestamp."""
    return None if ts is None else as_utc(ts)


def get_user(session: Session, name: str) -> User | None:
    return session.exec(select(User).where(User.name == name)).first()


def require(session: Session, actor: str, action: str) -> Role:
    """Check that ``actor`` may perform ``action``; return its role or raise PermissionDenied."""
    if action not in PERMISSIONS:
        raise KeyError(f"unknown action {action!r}")  # a programming error, not user input
    if actor == SYSTEM:
        if action in SYSTEM_ACTIONS:
            return Role.admin
        raise PermissionDenied(
            f"the system principal cannot {action}; a named, proven user must",
            hint="prove who acts: GEOMESH_TOKEN, --token-file, or --actor NAME with its password",
        )
    user = get_user(session, actor)
    if user is None:
        raise PermissionDenied(
            f"unknown user {actor!r}", hint="create it with `geomesh users add NAME --role ROLE`"
        )
    if user.disabled:
        raise PermissionDenied(
            f"user {actor!r} is disabled",
            hint="an admin can enable it: `geomesh users enable NAME`",
        )
    if user.role not in PERMISSIONS[action]:
        allowed = ", ".join(sorted(r.value for r in PERMISSIONS[action]))
        raise PermissionDenied(
            f"user {actor!r} has role {user.role.value!r}; {action} needs one of: {allowed}"
        )
    return user.role


def require_enabled(session: Session, name: str) -> User:
    """The enabled user ``name`` (for actions on one's own account); PermissionDenied else."""
    user = get_user(session, name)
    if user is None or user.disabled:
        state = "unknown" if user is None else "disabled"
        raise PermissionDenied(f"user {name!r} is {state}")
    return user


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name) or name == SYSTEM:
        raise PermissionDenied(
            f"{name!r} is not a valid user name; use lower-case letters, digits, '.', '_' and '-' "
            f"(not {SYSTEM!r})"
        )
    return name


def get_user_by_email(session: Session, email: str) -> User | None:
    return session.exec(select(User).where(User.email == normalise_email(email))).first()


def create_user(
    session: Session,
    *,
    name: str,
    role: Role,
    password: str | None = None,
    email: str | None = None,
) -> User:
    validate_name(name)
    if get_user(session, name) is not None:
        raise AlreadyExists(f"user {name!r} already exists")
    address = normalise_email(email) if email else None
    if address is not None and get_user_by_email(session, address) is not None:
        raise AlreadyExists(f"another user already has the e-mail {address}")
    user = User(
        name=name,
        role=role,
        email=address,
        password_hash=hash_password(password) if password else None,
    )
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, name: str, password: str) -> User:
    """The enabled user whose password this is; one argon2 verification either way."""
    user = get_user(session, name)
    if not verify_password(user, password) or user is None or user.disabled:
        raise NotFound("unknown user name or wrong password")
    return user
