"""Sign-in throttling per typed name and per client, kept in the database.

Every app replica and CLI shares the counts (table ``sign_in_throttle``). After
:data:`FREE_FAILURES` failed sign-ins of a name (:data:`CLIENT_FREE_FAILURES` of a client)
the next attempt must wait, twice as long after each further failure (from :data:`FIRST_DELAY_S` up to :data:`MAX_DELAY_S`); at
:data:`NAME_LOCK_AFTER` failures for a name (:data:`CLIENT_LOCK_AFTER` for a client) the key
is locked for :data:`LOCK_S`. Failures older than :data:`WINDOW_S` are forgotten. An attempt
refused by the throttle does no password work and records nothing; the start of a lock is
returned once so the caller audits it once.

Keys are SHA-256 digests (``name:…``, ``client:…``): the table never holds the typed text,
which is sometimes a password typed into the wrong field.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from sqlalchemy import delete, or_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from geomesh.auth import aware
from geomesh.models import SignInThrottle

Scope = Literal["name", "client"]

FREE_FAILURES: Final = 3
#: a client (an address, maybe shared by many people) may fail more often before waiting
CLIENT_FREE_FAILURES: Final = 10
FIRST_DELAY_S: Final = 2
MAX_DELAY_S: Final = 60
NAME_LOCK_AFTER: Final = 10
CLIENT_LOCK_AFTER: Final = 30
LOCK_S: Final = 15 * 60
WINDOW_S: Final = 15 * 60


@dataclass(frozen=True)
class Key:
    scope: Scope
    key: str


@dataclass(frozen=True)
class Blocked:
    """Why an attempt is refused before any password work."""

    scope: Scope
    until: datetime
    locked: bool

    def message(self, now: datetime) -> str:
        wait = max(1, int((self.until - now).total_seconds() + 0.999))
        who = "this user name" if self.scope == "name" else "this client"
        if self.locked:
            return (
                f"too many failed sign-ins for {who}: locked for {wait} more seconds "
                f"(until {self.until:%H:%M:%S} UTC)"
            )
        return f"too many failed sign-ins for {who}: wait {wait} seconds before trying again"


@dataclass(frozen=True)
class Lock:
    """A lock that started with this failure (audit it once)."""

    scope: Scope
    until: datetime
    failures: int


def _digest(scope: Scope, value: str) -> str:
    return hashlib.sha256(f"geomesh-sign-in-{scope}\0{value}".encode()).hexdigest()


def keys_for(name: str | None, client: str) -> list[Key]:
    """The throttle keys of one attempt (no name key when the typed name is empty)."""
    keys = [Key("client", f"client:{_digest('client', client)}")]
    if name:
        keys.append(Key("name", f"name:{_digest('name', name)}"))
    return sorted(keys, key=lambda k: k.key)  # one lock order for every caller


def delay_s(failures: int, scope: Scope = "name") -> int:
    """Seconds a key must wait after ``failures`` recent failed attempts."""
    free = FREE_FAILURES if scope == "name" else CLIENT_FREE_FAILURES
    if failures < free:
        return 0
    return int(min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** (failures - free)))


def _lock_after(scope: Scope) -> int:
    return NAME_LOCK_AFTER if scope == "name" else CLIENT_LOCK_AFTER


def _rows(session: Session, keys: list[Key]) -> dict[str, SignInThrottle]:
    """The rows of ``keys``, created when missing and locked for this transaction."""
    values = [{"key": k.key, "failures": 0} for k in keys]
    bind = session.get_bind()
    insert = pg_insert if bind.dialect.name == "postgresql" else sqlite_insert
    session.connection().execute(insert(SignInThrottle).values(values).on_conflict_do_nothing())
    stmt = (
        select(SignInThrottle)
        .where(col(SignInThrottle.key).in_([k.key for k in keys]))
        .order_by(col(SignInThrottle.key))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {row.key: row for row in session.exec(stmt).all()}


def _recent_failures(row: SignInThrottle, now: datetime) -> int:
    last = aware(row.last_failure_at)
    if last is None or now - last > timedelta(seconds=WINDOW_S):
        return 0
    return row.failures


def check(session: Session, keys: list[Key], now: datetime) -> Blocked | None:
    """Whether an attempt may go ahead now (locks the rows until the transaction ends)."""
    rows = _rows(session, keys)
    for k in sorted(keys, key=lambda k: k.scope != "name"):  # the name's limit speaks first
        row = rows[k.key]
        until = aware(row.locked_until)
        if until is not None and until > now:
            return Blocked(k.scope, until, locked=True)
        wait = delay_s(_recent_failures(row, now), k.scope)
        last = aware(row.last_failure_at)
        if wait and last is not None and last + timedelta(seconds=wait) > now:
            return Blocked(k.scope, last + timedelta(seconds=wait), locked=False)
    return None


def record_failure(session: Session, keys: list[Key], now: datetime) -> list[Lock]:
    """Count a failed attempt against every key; return the locks it started."""
    rows = _rows(session, keys)
    started: list[Lock] = []
    for k in keys:
        row = rows[k.key]
        row.failures = _recent_failures(row, now) + 1
        row.last_failure_at = now
        if row.failures >= _lock_after(k.scope):
            row.locked_until = now + timedelta(seconds=LOCK_S)
            started.append(Lock(k.scope, row.locked_until, row.failures))
            row.failures = 0  # after the lock, counting starts again
        session.add(row)
    session.flush()
    _forget_stale(session, now)
    return started


def record_success(session: Session, keys: list[Key], now: datetime) -> None:
    """A correct sign-in clears its name's count (never the client's: one valid account
    must not let a client reset its own limit between guesses)."""
    rows = _rows(session, keys)
    for k in keys:
        if k.scope == "name":
            row = rows[k.key]
            row.failures = 0
            row.locked_until = None
            session.add(row)
    session.flush()
    _forget_stale(session, now)


def _forget_stale(session: Session, now: datetime) -> None:
    """Drop rows with nothing left to remember (no recent failure, no running lock)."""
    cutoff = now - timedelta(seconds=WINDOW_S)
    session.connection().execute(
        delete(SignInThrottle).where(
            or_(col(SignInThrottle.locked_until).is_(None), col(SignInThrottle.locked_until) < now),
            or_(
                col(SignInThrottle.failures) == 0,
                col(SignInThrottle.last_failure_at) < cutoff,
            ),
        )
    )
