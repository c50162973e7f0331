"""Demo isolation: the demo seeds only into an empty storage root, which it marks.

The marker is an object in the store's ``meta`` area (:data:`DEMO_MARKER`). Demo users
(with their published passwords, ``geomesh-<name>``) exist only in a marked root; the
sign-in page shows the demo hint only there; and the app warns an admin while any account
still has its demo password (:func:`accounts_with_demo_passwords`, anywhere).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Final

from sqlmodel import col, select

from geomesh import audit, auth
from geomesh.auth import SYSTEM
from geomesh.errors import ConfigError
from geomesh.models import Product, Role, User
from geomesh.workspace import Workspace

#: the marker object (``meta`` area) of a demo workspace
DEMO_MARKER: Final = "demo.json"
#: demo passwords are published in README.md: ``geomesh-<name>``
PASSWORD_PREFIX: Final = "geomesh-"


def demo_password(name: str) -> str:
    return f"{PASSWORD_PREFIX}{name}"


def is_demo_workspace(ws: Workspace) -> bool:
    """Whether ``geomesh demo seed`` marked this workspace as a demo."""
    return ws.store.exists("meta", DEMO_MARKER)


def is_empty(ws: Workspace) -> bool:
    """No user and no product yet (a fresh storage root)."""
    with ws.read() as session:
        product = session.exec(select(Product.id).limit(1)).first()
        user = session.exec(select(User.id).limit(1)).first()
    return product is None and user is None


def claim_for_demo(ws: Workspace, product_id: str) -> bool:
    """Make sure the demo may seed here: True when the root is a demo root now.

    An empty root is marked as a demo (audited); a demo root stays one; a root holding
    users or products that is not a demo returns False (the caller refuses or skips).
    """
    if is_demo_workspace(ws):
        return True
    if not is_empty(ws):
        return False
    ws.store.put_bytes(
        "meta", DEMO_MARKER, json.dumps({"demo": product_id}).encode(), overwrite=True
    )
    with ws.transaction() as session:
        audit.append(
            session,
            actor=SYSTEM,
            action="demo.mark",
            target=str(ws.root),
            details={"product": product_id},
        )
    return True


def refuse_non_demo(ws: Workspace) -> ConfigError:
    return ConfigError(
        f"the storage root {ws.root} holds users or products and is not a demo root; "
        "the demo seeds only into an empty root",
        hint="set GEOMESH_STORAGE_ROOT to a new folder for the demo",
    )


@lru_cache(maxsize=256)
def _is_demo_password(password_hash: str, name: str) -> bool:
    # keyed on the stored hash: a changed password is checked again, an unchanged one never
    probe = User(name=name, role=Role.viewer, password_hash=password_hash)
    return auth.verify_password(probe, demo_password(name))


def accounts_with_demo_passwords(ws: Workspace) -> list[str]:
    """Enabled users whose password is still the published demo one (``geomesh-<name>``)."""
    with ws.read() as session:
        rows = session.exec(
            select(User.name, User.password_hash).where(
                col(User.password_hash).is_not(None), col(User.disabled).is_(False)
            )
        ).all()
    return sorted(name for name, digest in rows if digest and _is_demo_password(digest, name))
