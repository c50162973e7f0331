"""Sign-in for the review app: local passwords (argon2) or an SSO e-mail, both audited.

The app keeps only the signed-in user *name* in its session; the role is read from the
database on every use (:func:`current_user`), so a role change takes effect at once and
every state-changing service call checks the role again (``geomesh.auth.require``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from sqlmodel import col, func, select

from geomesh import audit, auth
from geomesh.errors import NotFound, PermissionDenied
from geomesh.models import User
from geomesh.workspace import Workspace

#: the actor recorded for failed sign-ins (the name typed is untrusted input)
ANONYMOUS: Final = "anonymous"
_SAFE = re.compile(r"[^a-z0-9._-]")


@dataclass(frozen=True)
class SignedIn:
    name: str
    role: str
    display_name: str | None = None
    method: str = "password"

    @property
    def label(self) -> str:
        return self.display_name or self.name


def _public(user: User, method: str) -> SignedIn:
    return SignedIn(
        name=user.name, role=user.role.value, display_name=user.display_name, method=method
    )


def _record_failure(ws: Workspace, typed: str, method: str, reason: str) -> None:
    with ws.transaction() as session:
        audit.append(
            session,
            actor=ANONYMOUS,
            action="auth.sign_in_failed",
            target=typed[:64] or "-",
            details={"method": method, "reason": reason},
        )


def sign_in(ws: Workspace, name: str, password: str) -> SignedIn:
    """Check a local user's password; audit the attempt. Raises PermissionDenied."""
    typed = name.strip().lower()
    if not typed or not password:
        raise PermissionDenied("enter a user name and a password")
    with ws.read() as session:
        try:
            user = auth.authenticate(session, typed, password)
        except NotFound:
            user = None
    if user is None:
        _record_failure(ws, typed, "password", "unknown user or wrong password")
        raise PermissionDenied(
            "unknown user name or wrong password",
            hint="demo users are listed in README.md (section 'Demo credentials')",
        )
    with ws.transaction() as session:
        audit.append(
            session,
            actor=user.name,
            action="auth.sign_in",
            target=user.name,
            details={"method": "password", "role": user.role.value},
        )
    return _public(user, "password")


def sso_user_name(email: str) -> str:
    """The geomesh user name an SSO e-mail maps to when no display name matches."""
    local = email.strip().lower().split("@", 1)[0]
    return _SAFE.sub("-", local)[:64]


def sign_in_sso(ws: Workspace, email: str | None) -> SignedIn:
    """Map an identity-provider e-mail to a geomesh user; audit the sign-in.

    A user whose ``display_name`` equals the e-mail wins; otherwise the e-mail's local part
    is the user name (``alice@example.org`` → ``alice``). The user must exist: SSO proves
    who someone is, geomesh decides what they may do.
    """
    if not email or "@" not in email:
        raise PermissionDenied("the identity provider returned no e-mail address")
    with ws.read() as session:
        user = session.exec(
            select(User).where(func.lower(col(User.display_name)) == email.strip().lower())
        ).first() or auth.get_user(session, sso_user_name(email))
    if user is None:
        _record_failure(ws, email, "sso", "no geomesh user for this e-mail")
        raise PermissionDenied(
            f"{email} has no geomesh account",
            hint=f"ask an admin: `geomesh users add {sso_user_name(email)} --role viewer`",
        )
    with ws.transaction() as session:
        audit.append(
            session,
            actor=user.name,
            action="auth.sign_in",
            target=user.name,
            details={"method": "sso", "email": email, "role": user.role.value},
        )
    return _public(user, "sso")


def current_user(ws: Workspace, name: str, method: str = "password") -> SignedIn | None:
    """The user as stored now (None when it was removed): roles are never cached."""
    with ws.read() as session:
        user = auth.get_user(session, name)
        return _public(user, method) if user is not None else None


def sign_out(ws: Workspace, name: str) -> None:
    """Record the sign-out in the audit trail."""
    with ws.transaction() as session:
        audit.append(session, actor=name, action="auth.sign_out", target=name)


def can(ws: Workspace, name: str, action: str) -> bool:
    """Whether the user's role allows ``action`` (for hiding buttons; services re-check)."""
    with ws.read() as session:
        try:
            auth.require(session, name, action)
        except PermissionDenied:
            return False
    return True
