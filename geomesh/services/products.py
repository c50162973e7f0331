"""Product registration and the registered config, the policy every service acts on.

The config stored when a product was registered (and changed since only through
``services.policy``) is the source of truth for every governance decision. Each
state-changing service resolves it once with :func:`check_config` (or
:func:`resolve_config` outside a transaction): a caller config that differs from it, in
anything but the ``storage`` section, is refused with ``PolicyMismatch`` naming the
differing key paths.
"""

from __future__ import annotations

from typing import Final

from sqlmodel import Session, col, select

from geomesh import audit
from geomesh.config import ProductConfig, parse_config
from geomesh.errors import PolicyMismatch
from geomesh.models import PolicyStatus, Product, ProductConfigVersion
from geomesh.policy import Change, ChangeKind, config_diff
from geomesh.services.lookup import PRODUCT_HINT, get_product
from geomesh.workspace import Workspace

#: how many differing key paths a refusal spells out (the rest are counted)
_SHOWN_PATHS: Final = 8


def register_product(session: Session, config: ProductConfig, *, actor: str) -> Product:
    """Create the product row and its config version 1 (audited), or check ``config``.

    An existing product is never changed here: a config that differs from the registered
    one is refused (``PolicyMismatch``); changing it is ``services.policy.update_config``.
    """
    digest = config.digest()
    product = session.get(Product, config.product_id)
    if product is not None:
        _checked(session, product, config)
        return product
    product = Product(id=config.product_id, config_json=config.to_json_dict(), config_digest=digest)
    session.add(product)
    session.flush()
    session.add(
        ProductConfigVersion(
            product_id=product.id,
            version=1,
            digest=digest,
            config_json=config.to_json_dict(),
            change=ChangeKind.initial.value,
            status=PolicyStatus.active,
            proposed_by=actor,
        )
    )
    audit.append(
        session,
        actor=actor,
        action="product.register",
        target=product.id,
        product_id=product.id,
        digest=digest,
    )
    return product


def registered_config(
    session: Session, product_id: str, *, hint: str = PRODUCT_HINT
) -> ProductConfig:
    """The product's registered (active) config (``NotFound``, ``ConfigError``)."""
    product = get_product(session, product_id, hint=hint)
    return _parsed(product)


def _parsed(product: Product) -> ProductConfig:
    return parse_config(dict(product.config_json), source=f"registered config of {product.id}")


def check_config(
    session: Session, config: ProductConfig, *, unregistered_ok: bool = False
) -> ProductConfig:
    """The policy to act on: ``config`` when it equals the registered config of its product.

    Raises ``PolicyMismatch`` naming every differing key path (the ``storage`` section,
    deployment rather than policy, is not compared) and ``NotFound`` for a product that is
    not registered, unless ``unregistered_ok`` (a first ingest registers it: ``config``).
    """
    product = session.get(Product, config.product_id)
    if product is None:
        if unregistered_ok:
            return config
        get_product(session, config.product_id)  # raises NotFound with the usual hint
    assert product is not None
    return _checked(session, product, config)


def resolve_config(
    ws: Workspace, config: ProductConfig, *, unregistered_ok: bool = False
) -> ProductConfig:
    """:func:`check_config` in its own read transaction (for work before the write)."""
    with ws.read() as session:
        return check_config(session, config, unregistered_ok=unregistered_ok)


def _checked(session: Session, product: Product, config: ProductConfig) -> ProductConfig:
    if product.config_digest == config.digest():
        return config
    changes = config_diff(_parsed(product), config)
    if not changes:
        return config  # only the storage section differs
    raise PolicyMismatch(
        _mismatch_message(product.id, changes), hint=_mismatch_hint(session, product, config)
    )


def _mismatch_message(product_id: str, changes: list[Change]) -> str:
    shown = [
        f"{c.path} (registered {'absent' if c.added else c.old_text()}, "
        f"given {'absent' if c.removed else c.new_text()})"
        for c in changes[:_SHOWN_PATHS]
    ]
    more = len(changes) - len(shown)
    return (
        f"the config given for product {product_id!r} differs from its registered config in "
        f"{len(changes)} key(s): " + "; ".join(shown) + (f"; and {more} more" if more else "")
    )


def _mismatch_hint(session: Session, product: Product, config: ProductConfig) -> str:
    pending = session.exec(
        select(ProductConfigVersion)
        .where(
            ProductConfigVersion.product_id == product.id,
            ProductConfigVersion.digest == config.digest(),
            col(ProductConfigVersion.status) == PolicyStatus.pending,
        )
        .limit(1)
    ).first()
    if pending is not None:
        return (
            f"this config is proposed (version {pending.version}) and waits for a second "
            f"admin or steward: `geomesh products approve {product.id} {pending.digest}`; "
            "until then pass the registered config"
        )
    return (
        "every state change uses the registered policy: pass the registered config "
        f"(`geomesh products show {product.id}` prints it) or change it with "
        "`geomesh products update CONFIG`"
    )
