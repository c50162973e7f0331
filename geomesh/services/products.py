"""Product registration and the registered config, the contract every service acts on."""

from __future__ import annotations

from sqlmodel import Session

from geomesh import audit
from geomesh.config import ProductConfig, parse_config
from geomesh.models import Product, utcnow
from geomesh.services.lookup import PRODUCT_HINT, get_product


def register_product(session: Session, config: ProductConfig, *, actor: str) -> Product:
    """Create the product row, or record a new config version (audited)."""
    digest = config.digest()
    product = session.get(Product, config.product_id)
    if product is None:
        product = Product(
            id=config.product_id, config_json=config.to_json_dict(), config_digest=digest
        )
        session.add(product)
        session.flush()
        audit.append(
            session,
            actor=actor,
            action="product.register",
            target=product.id,
            product_id=product.id,
            digest=digest,
        )
    elif product.config_digest != digest:
        before = product.config_digest
        product.config_json = config.to_json_dict()
        product.config_digest = digest
        product.updated_at = utcnow()
        session.add(product)
        audit.append(
            session,
            actor=actor,
            action="product.config",
            target=product.id,
            product_id=product.id,
            digest=digest,
            details={"previous_digest": before},
        )
    return product


def registered_config(
    session: Session, product_id: str, *, hint: str = PRODUCT_HINT
) -> ProductConfig:
    """The config stored when the product was registered (``NotFound``, ``ConfigError``)."""
    product = get_product(session, product_id, hint=hint)
    return parse_config(dict(product.config_json), source=f"registered config of {product_id}")
