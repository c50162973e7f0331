"""the worker's queue, delivery leases and inbound governance webhooks (issue 17)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

``task`` becomes a leased work queue: attempts, backoff (``run_after``), the lease
(``lease_owner``, ``lease_expires_at``), the last error, the result and a unique
``dedupe_key``; ``item_id`` may be empty for product-level work (release snapshots).
``outbox.lease_owner`` names the worker delivering a message. ``integration`` registers the
approval tools allowed to call ``POST /v1/signoff`` (the secret's environment variable
name, never the secret) and ``webhook_receipt`` remembers every request id, so a replay is
refused.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task") as batch:
        batch.alter_column("item_id", existing_type=AutoString(length=160), nullable=True)
        batch.add_column(sa.Column("dedupe_key", AutoString(length=200), nullable=True))
        batch.add_column(
            sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(
            sa.Column("max_attempts", sa.Integer(), nullable=False, server_default=sa.text("3"))
        )
        batch.add_column(
            sa.Column(
                "run_after",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default=sa.func.current_timestamp(),
            )
        )
        batch.add_column(sa.Column("lease_owner", AutoString(length=128), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("result", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column(
                "updated_at",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default=sa.func.current_timestamp(),
            )
        )
        batch.create_unique_constraint("uq_task_dedupe_key", ["dedupe_key"])
        batch.create_index(batch.f("ix_task_status"), ["status"], unique=False)
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("lease_owner", AutoString(length=128), nullable=True))

    op.create_table(
        "integration",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", AutoString(length=64), nullable=False),
        sa.Column("secret_env", AutoString(length=128), nullable=False),
        sa.Column("approvers", sa.JSON(), nullable=False),
        sa.Column("products", sa.JSON(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_by", AutoString(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "webhook_receipt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("integration", AutoString(length=64), nullable=False),
        sa.Column("idempotency_key", AutoString(length=128), nullable=False),
        sa.Column("outcome", AutoString(length=16), nullable=False),
        sa.Column("item_id", AutoString(length=160), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("integration", "idempotency_key"),
    )


def downgrade() -> None:
    op.drop_table("webhook_receipt")
    op.drop_table("integration")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("lease_owner")
    with op.batch_alter_table("task") as batch:
        batch.drop_index(batch.f("ix_task_status"))
        batch.drop_constraint("uq_task_dedupe_key", type_="unique")
        for name in (
            "updated_at",
            "result",
            "last_error",
            "lease_expires_at",
            "lease_owner",
            "run_after",
            "max_attempts",
            "attempts",
            "dedupe_key",
        ):
            batch.drop_column(name)
        batch.alter_column("item_id", existing_type=AutoString(length=160), nullable=False)
