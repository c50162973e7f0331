"""registered policy: versioned product config history and pending loosening changes (issue 13)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

``product_config_version`` keeps every version of a product's registered config: the
active one (mirrored in ``product.config_json`` / ``config_digest``), superseded ones and
loosening changes that wait for a second approver. Every product registered before this
revision gets its current config as version 1 (``initial``, proposed by ``migration``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "product_config_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("product_id", AutoString(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", AutoString(length=64), nullable=False),
        sa.Column("previous_digest", AutoString(length=64), nullable=True),
        sa.Column("config_json", sa.JSON(), nullable=False),
        sa.Column("change", AutoString(length=16), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "active",
                "superseded",
                "replaced",
                name="policystatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("diff", sa.JSON(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("spatial_contract_changed", sa.Boolean(), nullable=False),
        sa.Column("proposed_by", AutoString(length=64), nullable=False),
        sa.Column("proposed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_by", AutoString(length=64), nullable=True),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["product_id"], ["product.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("product_id", "version"),
    )
    with op.batch_alter_table("product_config_version", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_product_config_version_product_id"), ["product_id"], unique=False
        )
    # products registered before this revision: their config is version 1
    op.execute(
        "INSERT INTO product_config_version (product_id, version, digest, previous_digest, "
        "config_json, change, status, diff, reasons, spatial_contract_changed, proposed_by, "
        "proposed_at, approved_by, approved_at) "
        "SELECT id, 1, config_digest, NULL, config_json, 'initial', 'active', '[]', '{}', "
        "false, 'migration', created_at, NULL, NULL FROM product"
    )


def downgrade() -> None:
    with op.batch_alter_table("product_config_version", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_product_config_version_product_id"))
    op.drop_table("product_config_version")
