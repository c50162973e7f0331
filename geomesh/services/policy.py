"""Changing a product's registered config: the audited, versioned policy change (issue 13).

* :func:`update_config` (an admin) proposes a new config. A change that *loosens*
  governance (``geomesh.policy.classify_change``) is stored ``pending`` and takes effect
  only when :func:`approve_config` is called by a second admin or steward, bound to that
  config's digest (four eyes, like an item sign-off); any other change applies at once.
* Applying a version moves ``Product.config_json`` / ``config_digest`` (the registered
  config every service checks callers against), marks the previous version ``superseded``
  and any other pending proposal ``replaced`` (it was made against an older config).
* :func:`policy_history` lists every version with its digests, diff and status.

Audit actions: ``product.config.propose`` (a loosening change waits), ``product.config.approve``
(the second approver) and ``product.config`` (a version became the registered config), each
with the old and new digest and the diff in its details.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlmodel import Session, col, func, select

from geomesh import audit, auth
from geomesh.config import ProductConfig
from geomesh.errors import ConcurrentUpdate, NotFound, PermissionDenied
from geomesh.models import PolicyStatus, Product, ProductConfigVersion, utcnow
from geomesh.policy import Change, ChangeKind, classify_change, config_diff
from geomesh.services.lookup import get_product
from geomesh.services.products import registered_config
from geomesh.validation.registry import Policy
from geomesh.workspace import Workspace

_HISTORY_HINT = "see `geomesh products history {pid}` for the versions and their digests"


@dataclass(frozen=True)
class PolicyVersion:
    """One row of a product's policy history."""

    product_id: str
    version: int
    digest: str
    previous_digest: str | None
    status: str
    change: str
    diff: tuple[dict[str, Any], ...]
    loosening: tuple[str, ...]
    tightening: tuple[str, ...]
    spatial_contract_changed: bool
    proposed_by: str
    proposed_at: datetime
    approved_by: str | None
    approved_at: datetime | None
    config: dict[str, Any]

    @classmethod
    def of(cls, row: ProductConfigVersion) -> PolicyVersion:
        reasons = dict(row.reasons or {})
        return cls(
            product_id=row.product_id,
            version=row.version,
            digest=row.digest,
            previous_digest=row.previous_digest,
            status=PolicyStatus(row.status).value,
            change=row.change,
            diff=tuple(dict(d) for d in row.diff or []),
            loosening=tuple(reasons.get("loosening", [])),
            tightening=tuple(reasons.get("tightening", [])),
            spatial_contract_changed=row.spatial_contract_changed,
            proposed_by=row.proposed_by,
            proposed_at=row.proposed_at,
            approved_by=row.approved_by,
            approved_at=row.approved_at,
            config=dict(row.config_json),
        )

    @property
    def diff_text(self) -> str:
        """The readable diff: one ``~ path: old → new`` (``+``/``-``) line per key path."""
        return "\n".join(
            Change(
                d["path"],
                d.get("old"),
                d.get("new"),
                d.get("added", False),
                d.get("removed", False),
            ).describe()
            for d in self.diff
        )

    def to_json(self, *, with_config: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "product_id": self.product_id,
            "version": self.version,
            "digest": self.digest,
            "previous_digest": self.previous_digest,
            "status": self.status,
            "change": self.change,
            "diff": list(self.diff),
            "loosening": list(self.loosening),
            "tightening": list(self.tightening),
            "spatial_contract_changed": self.spatial_contract_changed,
            "proposed_by": self.proposed_by,
            "proposed_at": self.proposed_at.isoformat(),
            "approved_by": self.approved_by,
            "approved_at": self.approved_at.isoformat() if self.approved_at else None,
        }
        if with_config:
            out["config"] = self.config
        return out


@dataclass(frozen=True)
class PolicyChange:
    """What :func:`update_config` / :func:`approve_config` did."""

    product_id: str
    #: applied: the version is the registered config now; pending: it waits for a second
    #: approver; unchanged: the config equals the registered one (nothing recorded)
    outcome: Literal["applied", "pending", "unchanged"]
    version: PolicyVersion | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "outcome": self.outcome,
            "message": self.message,
            "version": self.version.to_json() if self.version else None,
        }


def _details(row: ProductConfigVersion) -> dict[str, Any]:
    return {
        "version": row.version,
        "old_digest": row.previous_digest,
        "new_digest": row.digest,
        "change": row.change,
        "reasons": dict(row.reasons),
        "spatial_contract_changed": row.spatial_contract_changed,
        "diff": list(row.diff),
    }


def _versions(session: Session, product_id: str) -> list[ProductConfigVersion]:
    return list(
        session.exec(
            select(ProductConfigVersion)
            .where(ProductConfigVersion.product_id == product_id)
            .order_by(col(ProductConfigVersion.version))
        ).all()
    )


def _activate(session: Session, product: Product, row: ProductConfigVersion, *, actor: str) -> None:
    """Make ``row`` the registered config (in the caller's transaction), audited."""
    for other in _versions(session, product.id):
        if other.id == row.id:
            continue
        if other.status == PolicyStatus.active:
            other.status = PolicyStatus.superseded
            session.add(other)
        elif other.status == PolicyStatus.pending:
            other.status = PolicyStatus.replaced  # proposed against an older config
            session.add(other)
    row.status = PolicyStatus.active
    session.add(row)
    product.config_json = dict(row.config_json)
    product.config_digest = row.digest
    product.updated_at = utcnow()
    session.add(product)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="product.config",
        target=product.id,
        product_id=product.id,
        digest=row.digest,
        details=_details(row),
    )


def update_config(ws: Workspace, config: ProductConfig, *, actor: str) -> PolicyChange:
    """Change the registered config of ``config``'s product (an admin).

    Loosening changes wait for :func:`approve_config` by another admin or steward; other
    changes apply at once. Proposing the registered config is a no-op; proposing a config
    already waiting returns that proposal.
    """
    pid = config.product_id
    with ws.transaction() as session:
        auth.require(session, actor, "product.config")
        Policy.from_config(config)  # an unknown rule id fails before anything is recorded
        product = get_product(session, pid, lock=True)
        current = registered_config(session, pid)
        digest = config.digest()
        changes = config_diff(current, config)
        if digest == product.config_digest or not changes:
            return PolicyChange(
                pid, "unchanged", None, f"the config of {pid} equals its registered config"
            )
        versions = _versions(session, pid)
        waiting = next(
            (v for v in versions if v.digest == digest and v.status == PolicyStatus.pending), None
        )
        if waiting is not None:
            return PolicyChange(
                pid,
                "pending",
                PolicyVersion.of(waiting),
                f"this change of {pid} (version {waiting.version}) already waits for approval",
            )
        verdict = classify_change(current, config)
        loosening = verdict.kind is ChangeKind.loosening
        row = ProductConfigVersion(
            product_id=pid,
            version=max((v.version for v in versions), default=0) + 1,
            digest=digest,
            previous_digest=product.config_digest,
            config_json=config.to_json_dict(),
            change=verdict.kind.value,
            status=PolicyStatus.pending if loosening else PolicyStatus.active,
            diff=[c.to_json() for c in changes],
            reasons=verdict.to_json(),
            spatial_contract_changed=verdict.spatial_contract_changed,
            proposed_by=actor,
        )
        session.add(row)
        session.flush()
        if loosening:
            audit.append(
                session,
                actor=actor,
                action="product.config.propose",
                target=pid,
                product_id=pid,
                digest=digest,
                details=_details(row),
            )
            return PolicyChange(
                pid,
                "pending",
                PolicyVersion.of(row),
                f"version {row.version} of {pid}'s config loosens governance "
                f"({'; '.join(verdict.loosening)}); it takes effect when another admin or "
                f"steward approves it: `geomesh products approve {pid} {digest}`",
            )
        _activate(session, product, row, actor=actor)
        note = " (the spatial contract changed: the next release is MAJOR)"
        return PolicyChange(
            pid,
            "applied",
            PolicyVersion.of(row),
            f"version {row.version} of {pid}'s config is registered ({verdict.kind.value})"
            + (note if verdict.spatial_contract_changed else ""),
        )


def approve_config(ws: Workspace, product_id: str, digest: str, *, actor: str) -> PolicyChange:
    """A second admin or steward approves the pending config ``digest`` (a unique prefix of
    at least 12 characters is enough); it becomes the registered config. The proposer cannot
    approve its own change. Approving the registered config again is a no-op."""
    wanted = digest.strip().lower()
    with ws.transaction() as session:
        auth.require(session, actor, "product.config.approve")
        product = get_product(session, product_id, lock=True)
        versions = _versions(session, product_id)
        hint = _HISTORY_HINT.format(pid=product_id)
        if len(wanted) < 12:
            raise NotFound(
                f"config digest {digest!r} is too short; give at least 12 characters", hint=hint
            )
        matches = [v for v in versions if v.digest.startswith(wanted)]
        active = next((v for v in matches if v.status == PolicyStatus.active), None)
        if active is not None:
            return PolicyChange(
                product_id,
                "unchanged",
                PolicyVersion.of(active),
                f"version {active.version} ({active.digest[:12]}…) is already the registered "
                f"config of {product_id}",
            )
        pending = [v for v in matches if v.status == PolicyStatus.pending]
        if len({v.digest for v in pending}) > 1:
            raise NotFound(f"config digest {digest!r} matches several proposals", hint=hint)
        if not pending:
            raise NotFound(
                f"no config change of {product_id} with digest {digest!r} waits for approval",
                hint=hint,
            )
        row = pending[-1]
        if row.proposed_by == actor:
            raise PermissionDenied(
                f"{actor!r} proposed version {row.version} of {product_id}'s config and cannot "
                "approve it",
                hint="another admin or steward must approve it",
            )
        if row.previous_digest != product.config_digest:  # pragma: no cover - see _activate
            raise ConcurrentUpdate(
                f"the registered config of {product_id} changed since version {row.version} "
                "was proposed",
                hint="propose the change again with `geomesh products update CONFIG`",
            )
        row.approved_by = actor
        row.approved_at = utcnow()
        session.add(row)
        session.flush()
        audit.append(
            session,
            actor=actor,
            action="product.config.approve",
            target=product_id,
            product_id=product_id,
            digest=row.digest,
            details=_details(row) | {"proposed_by": row.proposed_by},
        )
        _activate(session, product, row, actor=actor)
        return PolicyChange(
            product_id,
            "applied",
            PolicyVersion.of(row),
            f"version {row.version} of {product_id}'s config is registered (approved by "
            f"{actor}, proposed by {row.proposed_by})",
        )


def policy_history(ws: Workspace, product_id: str) -> list[PolicyVersion]:
    """Every config version of the product, newest first (``NotFound`` when unregistered)."""
    with ws.read() as session:
        get_product(session, product_id)
        return [PolicyVersion.of(v) for v in reversed(_versions(session, product_id))]


def pending_count(ws: Workspace, product_id: str) -> int:
    """How many config changes of the product wait for a second approver."""
    with ws.read() as session:
        return int(
            session.exec(
                select(func.count())
                .select_from(ProductConfigVersion)
                .where(
                    ProductConfigVersion.product_id == product_id,
                    col(ProductConfigVersion.status) == PolicyStatus.pending,
                )
            ).one()
        )
