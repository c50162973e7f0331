"""The approval tools allowed to call the inbound governance webhook (``POST /v1/signoff``).

An integration has a name, the NAME of the environment variable that holds its HMAC
secret (the secret itself is never stored), the approver mapping (the tool's approver id
→ a geomesh user; the decision is then that user's, with that user's role checked) and,
optionally, the products it may decide on. Managing them is an admin's action
(``users.manage``: it decides who may act as whom).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlmodel import col, select

from geomesh import audit, auth
from geomesh.errors import AlreadyExists, ConfigError, NotFound
from geomesh.models import Integration
from geomesh.workspace import Workspace

_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_ENV_RE: Final = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
_APPROVER_MAX: Final = 128


@dataclass(frozen=True)
class IntegrationInfo:
    name: str
    secret_env: str
    approvers: dict[str, str]
    products: tuple[str, ...]
    disabled: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "secret_env": self.secret_env,
            "approvers": dict(self.approvers),
            "products": list(self.products),
            "disabled": self.disabled,
        }

    def allows_product(self, product_id: str) -> bool:
        return not self.products or product_id in self.products


def info(row: Integration) -> IntegrationInfo:
    return IntegrationInfo(
        name=row.name,
        secret_env=row.secret_env,
        approvers=dict(row.approvers),
        products=tuple(row.products),
        disabled=row.disabled,
    )


def _checked(name: str, secret_env: str, approvers: Mapping[str, str]) -> None:
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{name!r} is not a valid integration name; use lower-case letters, digits, '.', "
            "'_' and '-'"
        )
    if not _ENV_RE.match(secret_env):
        raise ConfigError(
            f"{secret_env!r} is not an environment variable name (A-Z, 0-9, _)",
            hint="name the variable that holds the secret, never the secret itself",
        )
    for external in approvers:
        if not external.strip() or len(external) > _APPROVER_MAX:
            raise ConfigError(f"approver id {external!r} must be 1-{_APPROVER_MAX} characters")


def add_integration(
    ws: Workspace,
    name: str,
    *,
    secret_env: str,
    approvers: Mapping[str, str],
    products: Iterable[str] = (),
    actor: str,
) -> IntegrationInfo:
    """Register an approval tool (audited). Each mapped user must exist."""
    _checked(name, secret_env, approvers)
    with ws.transaction() as session:
        auth.require(session, actor, "users.manage")
        if session.exec(select(Integration).where(Integration.name == name)).first():
            raise AlreadyExists(f"integration {name!r} already exists")
        for user in sorted(set(approvers.values())):
            if auth.get_user(session, user) is None:
                raise NotFound(
                    f"approver mapping names the unknown user {user!r}",
                    hint="create it with `geomesh users add NAME --role steward`",
                )
        row = Integration(
            name=name,
            secret_env=secret_env,
            approvers=dict(approvers),
            products=sorted(set(products)),
            created_by=actor,
        )
        session.add(row)
        session.flush()
        audit.append(
            session,
            actor=actor,
            action="integration.add",
            target=f"integration:{name}",
            details={
                "secret_env": secret_env,
                "approvers": dict(approvers),
                "products": row.products,
            },
        )
        return info(row)


def set_disabled(ws: Workspace, name: str, disabled: bool, *, actor: str) -> IntegrationInfo:
    """Disable (or enable again) an integration: its requests are refused (audited)."""
    with ws.transaction() as session:
        auth.require(session, actor, "users.manage")
        row = session.exec(select(Integration).where(Integration.name == name)).first()
        if row is None:
            raise NotFound(f"integration {name!r} does not exist")
        if row.disabled != disabled:
            row.disabled = disabled
            session.add(row)
            audit.append(
                session,
                actor=actor,
                action="integration.disable" if disabled else "integration.enable",
                target=f"integration:{name}",
            )
        return info(row)


def list_integrations(ws: Workspace) -> list[IntegrationInfo]:
    with ws.read() as session:
        rows = session.exec(select(Integration).order_by(col(Integration.name))).all()
        return [info(r) for r in rows]


def find_integration(ws: Workspace, name: str) -> IntegrationInfo | None:
    with ws.read() as session:
        row = session.exec(select(Integration).where(Integration.name == name)).first()
        return info(row) if row is not None else None
