"""Sign-in for the review app and the CLI: local passwords (argon2) or SSO, both audited.

- **Password** (:func:`sign_in`): exactly one argon2 verification per attempt, whether the
  name exists or not (unknown names are checked against a dummy hash); throttled per typed
  name and per client (``geomesh.throttle``: growing delays, then a temporary lock audited
  once); a failed attempt records neither the typed name nor the password.
- **SSO** (:func:`sign_in_sso`): the identity provider's e-mail must be *verified* and match
  a user's registered e-mail exactly (``geomesh users add NAME --email ADDRESS``), and its
  domain must be allowed when ``GEOMESH_SSO_ALLOWED_DOMAINS`` names any. No other mapping.

The app keeps only the signed-in user *name* in its session; the user is read from the
database on every use (:func:`current_user`), so a role change or a disabled account takes
effect at once, and every state-changing service call checks the role again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from geomesh import audit, auth, throttle
from geomesh.audit_info import Channel
from geomesh.errors import IdentityNotProven, PermissionDenied
from geomesh.models import User, utcnow
from geomesh.workspace import Workspace

#: the actor recorded for failed sign-ins (the name typed is untrusted input)
ANONYMOUS: Final = "anonymous"
#: the app signs a user out after this long without any interaction
IDLE_TIMEOUT: Final = timedelta(minutes=30)
_WRONG: Final = "unknown user name or wrong password"


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


def sign_in(
    ws: Workspace,
    name: str,
    password: str,
    *,
    client: str = "unknown",
    now: datetime | None = None,
) -> SignedIn:
    """Check a local user's password (throttled, audited). Raises IdentityNotProven.

    ``client`` names where the attempt comes from (the app's client address, or the CLI's
    OS user and host) for the per-client limit; ``now`` is for tests of the throttle.
    """
    typed = name.strip().lower()
    if not typed or not password:
        raise IdentityNotProven("enter a user name and a password")
    now = now or utcnow()
    keys = throttle.keys_for(typed, client)
    signed: SignedIn | None = None
    blocked: throttle.Blocked | None = None
    with ws.transaction() as session:
        blocked = throttle.check(session, keys, now)
        if blocked is None:
            user = auth.get_user(session, typed)
            correct = auth.verify_password(user, password)  # one verification, always
            if correct and user is not None and not user.disabled:
                throttle.record_success(session, keys, now)
                audit.append(
                    session,
                    actor=user.name,
                    action="auth.sign_in",
                    target=user.name,
                    details={"method": "password", "role": user.role.value},
                )
                signed = _public(user, "password")
            else:
                known = user.name if user is not None else "-"
                reason = "user disabled" if correct and user is not None else _WRONG
                for lock in throttle.record_failure(session, keys, now):
                    audit.append(
                        session,
                        actor=ANONYMOUS,
                        action="auth.locked",
                        target=known if lock.scope == "name" else "-",
                        details={
                            "scope": lock.scope,
                            "failures": lock.failures,
                            "until": lock.until.isoformat(),
                            **({"client": client} if lock.scope == "client" else {}),
                        },
                    )
                audit.append(
                    session,
                    actor=ANONYMOUS,
                    action="auth.sign_in_failed",
                    target=known,
                    details={"method": "password", "reason": reason},
                )
    if blocked is not None:
        raise IdentityNotProven(blocked.message(now))
    if signed is None:
        raise IdentityNotProven(_WRONG)
    return signed


def _verified(claims: Mapping[str, object]) -> bool:
    value = claims.get("email_verified")
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def allowed_domains(ws: Workspace) -> list[str]:
    """``GEOMESH_SSO_ALLOWED_DOMAINS`` (comma-separated; empty: any domain)."""
    raw = ws.settings.sso_allowed_domains or ""
    return [d.strip().lower().lstrip("@") for d in raw.split(",") if d.strip()]


def _refuse_sso(ws: Workspace, reason: str, email: str | None) -> None:
    with ws.transaction() as session:
        audit.append(
            session,
            actor=ANONYMOUS,
            action="auth.sign_in_failed",
            target="-",
            details={"method": "sso", "reason": reason, "email": email},
        )


def sign_in_sso(
    ws: Workspace, claims: Mapping[str, object], *, domains: Iterable[str] | None = None
) -> SignedIn:
    """Sign in the user whose registered e-mail is the identity provider's verified e-mail.

    ``claims`` are what the identity provider returned (``email``, ``email_verified``, …).
    Refused (and audited): no e-mail, an unverified e-mail, a domain outside ``domains``
    (default :func:`allowed_domains`), no user with exactly that e-mail, a disabled user.
    SSO proves who someone is; geomesh decides what they may do.
    """
    raw = claims.get("email")
    email = raw.strip().lower() if isinstance(raw, str) and "@" in raw else None
    if email is None:
        _refuse_sso(ws, "no e-mail address", None)
        raise IdentityNotProven("the identity provider returned no e-mail address")
    if not _verified(claims):
        _refuse_sso(ws, "e-mail not verified", email)
        raise IdentityNotProven(
            f"the identity provider has not verified {email}",
            hint="verify the address with your identity provider, then sign in again",
        )
    allowed = list(domains) if domains is not None else allowed_domains(ws)
    domain = email.rsplit("@", 1)[1]
    if allowed and domain not in allowed:
        _refuse_sso(ws, "domain not allowed", email)
        raise IdentityNotProven(
            f"sign-in with an e-mail of {domain} is not allowed here",
            hint="allowed domains: " + ", ".join(allowed),
        )
    with ws.read() as session:
        try:
            user = auth.get_user_by_email(session, email)
        except PermissionDenied:  # not an address at all
            user = None
    if user is None or user.disabled:
        _refuse_sso(ws, "no enabled user with this e-mail", email)
        raise IdentityNotProven(
            f"{email} has no geomesh account",
            hint="ask an admin to register it: `geomesh users add NAME --role viewer "
            f"--email {email}`",
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


def app_channel() -> dict[str, str]:
    """The channel the app's audit events record (``Workspace.channel``)."""
    return {"name": Channel.app.value}


def current_user(ws: Workspace, name: str, method: str = "password") -> SignedIn | None:
    """The user as stored now (None when it was removed or disabled): roles are never cached."""
    with ws.read() as session:
        user = auth.get_user(session, name)
        if user is None or user.disabled:
            return None
        return _public(user, method)


def idle_expired(last_seen: datetime | None, now: datetime | None = None) -> bool:
    """Whether a session last active at ``last_seen`` has been idle too long."""
    if last_seen is None:
        return False
    return (now or utcnow()) - last_seen > IDLE_TIMEOUT


def sign_out(ws: Workspace, name: str, *, reason: str | None = None) -> None:
    """Record the sign-out (``reason="idle"`` for the idle timeout) in the audit trail."""
    with ws.transaction() as session:
        audit.append(
            session,
            actor=name,
            action="auth.sign_out",
            target=name,
            details={"reason": reason} if reason else None,
        )


def can(ws: Workspace, name: str, action: str) -> bool:
    """Whether the user's role allows ``action`` (for hiding buttons; services re-check)."""
    with ws.read() as session:
        try:
            auth.require(session, name, action)
        except PermissionDenied:
            return False
    return True
