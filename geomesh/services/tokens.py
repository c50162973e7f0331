"""Per-user API tokens: how the CLI proves who acts (``GEOMESH_TOKEN`` / ``--token-file``).

A token is ``gmt_`` + 32 random bytes (URL-safe), shown once at creation; the database
keeps only its SHA-256 digest, the user, who created it, and when it was created, expires,
was revoked and last used. A token proves exactly one user: its own. Users create and
revoke their own tokens; an admin may do so for anyone.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlmodel import Session, col, select

from geomesh import audit, auth
from geomesh.errors import IdentityNotProven, NotFound, PermissionDenied
from geomesh.models import ApiToken, User, utcnow
from geomesh.workspace import Workspace

DEFAULT_EXPIRES_DAYS: Final = 90
MAX_EXPIRES_DAYS: Final = 3650
#: how precisely ``last_used_at`` is kept (one write per token and hour at most)
LAST_USED_RESOLUTION: Final = timedelta(hours=1)


@dataclass(frozen=True)
class TokenInfo:
    """A token's metadata (never the token)."""

    id: int
    user: str
    label: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def status(self, now: datetime | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        expires = auth.aware(self.expires_at)
        if expires is not None and expires <= (now or utcnow()):
            return "expired"
        return "active"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "label": self.label,
            "status": self.status(),
            "created_by": self.created_by,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "last_used_at": _iso(self.last_used_at),
        }


def _iso(ts: datetime | None) -> str | None:
    value = auth.aware(ts)
    return value.isoformat() if value is not None else None


def _info(row: ApiToken, user: str) -> TokenInfo:
    assert row.id is not None
    return TokenInfo(
        id=row.id,
        user=user,
        label=row.label,
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def _self_or_admin(session: Session, actor: str, user: User) -> None:
    """A user manages its own tokens (while enabled); an admin manages anyone's."""
    if actor == user.name:
        auth.require_enabled(session, actor)
    else:
        auth.require(session, actor, "users.manage")


def create_token(
    ws: Workspace,
    *,
    actor: str,
    name: str,
    expires_days: int = DEFAULT_EXPIRES_DAYS,
    label: str | None = None,
    now: datetime | None = None,
) -> tuple[str, TokenInfo]:
    """A new token for user ``name``; returns the token (show it once) and its metadata."""
    if not 1 <= expires_days <= MAX_EXPIRES_DAYS:
        raise PermissionDenied(
            f"--expires-days {expires_days} is out of range; use 1 to {MAX_EXPIRES_DAYS}"
        )
    now = now or utcnow()
    token, digest = auth.new_token()
    with ws.transaction() as session:
        user = auth.get_user(session, name)
        if user is None:
            raise NotFound(f"no user {name!r}", hint="see `geomesh users list`")
        _self_or_admin(session, actor, user)
        if user.disabled:
            raise PermissionDenied(f"user {name!r} is disabled; it cannot get a token")
        assert user.id is not None
        row = ApiToken(
            user_id=user.id,
            digest=digest,
            label=(label or None) and label[:64],
            created_by=actor,
            created_at=now,
            expires_at=now + timedelta(days=expires_days),
        )
        session.add(row)
        session.flush()
        audit.append(
            session,
            actor=actor,
            action="token.create",
            target=name,
            details={"token_id": row.id, "expires_at": _iso(row.expires_at), "label": row.label},
        )
        return token, _info(row, user.name)


def list_tokens(ws: Workspace, name: str | None = None) -> list[TokenInfo]:
    """Token metadata (ids, dates, status), of one user or of all; never a token."""
    with ws.read() as session:
        stmt = select(ApiToken, User.name).join(User, col(User.id) == col(ApiToken.user_id))
        if name is not None:
            stmt = stmt.where(User.name == name)
        rows = session.exec(stmt.order_by(col(ApiToken.id))).all()
        return [_info(row, user) for row, user in rows]


def revoke_token(
    ws: Workspace, *, actor: str, token_id: int, now: datetime | None = None
) -> TokenInfo:
    """Revoke a token (its user or an admin). Revoking twice is a no-op."""
    with ws.transaction() as session:
        row = session.get(ApiToken, token_id)
        user = session.get(User, row.user_id) if row is not None else None
        if row is None or user is None:
            raise NotFound(f"no token #{token_id}", hint="see `geomesh users token list`")
        _self_or_admin(session, actor, user)
        if row.revoked_at is None:
            row.revoked_at = now or utcnow()
            session.add(row)
            session.flush()
            audit.append(
                session,
                actor=actor,
                action="token.revoke",
                target=user.name,
                details={"token_id": row.id},
            )
        return _info(row, user.name)


def prove_token(ws: Workspace, token: str, *, now: datetime | None = None) -> str:
    """The name of the enabled user this token proves; IdentityNotProven otherwise.

    ``last_used_at`` is written at most once per :data:`LAST_USED_RESOLUTION`, so proving
    who acts is a read (no write transaction) on almost every command.
    """
    value = token.strip()
    if not value.startswith(auth.TOKEN_PREFIX):
        raise IdentityNotProven(
            "that is not a geomesh API token",
            hint="create one with `geomesh users token create NAME`",
        )
    digest = auth.token_digest(value)
    now = now or utcnow()
    with ws.read() as session:
        row = session.exec(select(ApiToken).where(ApiToken.digest == digest)).first()
        if row is None or not hmac.compare_digest(row.digest, digest):
            raise IdentityNotProven(
                "the API token is not valid", hint="create one with `geomesh users token create`"
            )
        if row.revoked_at is not None:
            raise IdentityNotProven(f"API token #{row.id} was revoked")
        expires = auth.aware(row.expires_at)
        if expires is not None and expires <= now:
            raise IdentityNotProven(
                f"API token #{row.id} expired on {expires:%Y-%m-%d}",
                hint="create a new one with `geomesh users token create`",
            )
        user = session.get(User, row.user_id)
        if user is None or user.disabled:
            raise IdentityNotProven(f"API token #{row.id} belongs to a disabled user")
        name, token_id, last = user.name, row.id, auth.aware(row.last_used_at)
    if last is None or now - last >= LAST_USED_RESOLUTION:
        with ws.transaction() as session:
            used = session.get(ApiToken, token_id)
            if used is not None:
                used.last_used_at = now
                session.add(used)
    return name
