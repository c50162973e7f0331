"""The registered policy in tests: change a product's config the audited way.

Since issue 13 a caller config that differs from the registered one is refused. A test that
needs another policy (a relaxed severity, clipping on, a new escalation target) changes it
through the real service: an admin proposes it (``policy.update_config``) and, when the
change loosens governance, a second person approves it (``policy.approve_config``).
"""

from __future__ import annotations

from geomesh import auth
from geomesh.config import ProductConfig
from geomesh.models import Role
from geomesh.services import policy
from geomesh.services.policy import PolicyChange
from geomesh.workspace import Workspace

PROPOSER = "policy-admin"
APPROVER = "policy-steward"


def change_policy(
    ws: Workspace, config: ProductConfig, *, proposer: str = PROPOSER, approver: str = APPROVER
) -> PolicyChange:
    """Make ``config`` the registered config of its product (proposed, approved if needed).

    ``proposer`` (an admin) and ``approver`` (a steward) are created when missing.
    """
    with ws.transaction() as session:
        for name, role in ((proposer, Role.admin), (approver, Role.steward)):
            if auth.get_user(session, name) is None:
                auth.create_user(session, name=name, role=role)
    change = policy.update_config(ws, config, actor=proposer)
    if change.outcome == "pending":
        assert change.version is not None
        change = policy.approve_config(ws, config.product_id, change.version.digest, actor=approver)
    assert change.outcome in ("applied", "unchanged"), change.message
    return change
