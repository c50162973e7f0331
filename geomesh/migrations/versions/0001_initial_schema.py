"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Explicit DDL of every table (generated once with ``alembic revision --autogenerate`` and
reviewed); every later change is a new revision, and ``alembic check`` (run by the tests)
shows no drift between ``geomesh.models`` and the migrations. Databases created by the
earlier pre-release form of this revision (``create_all`` of the models of that day) are
brought to the same schema by ``0002``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auditevent",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("event_id", AutoString(length=36), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", AutoString(length=64), nullable=False),
        sa.Column("action", AutoString(length=64), nullable=False),
        sa.Column("product_id", AutoString(length=128), nullable=True),
        sa.Column("target", AutoString(length=255), nullable=False),
        sa.Column("state_before", AutoString(length=32), nullable=True),
        sa.Column("state_after", AutoString(length=32), nullable=True),
        sa.Column("digest", AutoString(length=64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("prev_hash", AutoString(length=64), nullable=False),
        sa.Column("hash", AutoString(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id"),
        sa.UniqueConstraint("hash"),
    )
    with op.batch_alter_table("auditevent", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auditevent_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_auditevent_actor"), ["actor"], unique=False)
        batch_op.create_index(batch_op.f("ix_auditevent_product_id"), ["product_id"], unique=False)

    op.create_table(
        "audithead",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("last_hash", AutoString(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # the audit chain head exists from the start, so concurrent first appenders lock it
    # instead of racing to insert it
    op.execute("INSERT INTO audithead (id, last_seq, last_hash) VALUES (1, 0, '" + "0" * 64 + "')")
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", AutoString(length=128), nullable=False),
        sa.Column("product_id", AutoString(length=128), nullable=False),
        sa.Column("target_name", AutoString(length=128), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event", AutoString(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column(
            "status", sa.Enum("pending", "delivered", "failed", name="outboxstatus"), nullable=False
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbox_product_id"), ["product_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_outbox_status"), ["status"], unique=False)

    op.create_table(
        "product",
        sa.Column("id", AutoString(length=128), nullable=False),
        sa.Column("config_json", sa.JSON(), nullable=False),
        sa.Column("config_digest", AutoString(length=64), nullable=False),
        sa.Column("current_release_id", AutoString(length=64), nullable=True),
        sa.Column("version_counter", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "task",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("product_id", AutoString(length=128), nullable=False),
        sa.Column("item_id", AutoString(length=160), nullable=False),
        sa.Column("kind", AutoString(length=32), nullable=False),
        sa.Column("status", AutoString(length=16), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_task_product_id"), ["product_id"], unique=False)

    op.create_table(
        "user",
        sa.Column("name", AutoString(length=64), nullable=False),
        sa.Column(
            "role", sa.Enum("admin", "steward", "analyst", "viewer", name="role"), nullable=False
        ),
        sa.Column("display_name", AutoString(), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_name"), ["name"], unique=True)

    op.create_table(
        "item",
        sa.Column("id", AutoString(length=160), nullable=False),
        sa.Column("product_id", AutoString(length=128), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("source_key", AutoString(length=64), nullable=False),
        sa.Column("source_digest", AutoString(length=64), nullable=True),
        sa.Column("content_digest", AutoString(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("object_key", AutoString(length=255), nullable=False),
        sa.Column("stac_key", AutoString(length=255), nullable=False),
        sa.Column("stac", sa.JSON(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "staging",
                "validation",
                "production",
                "quarantined",
                "rolled_back",
                "withdrawn",
                "superseded",
                "deprecated",
                "discarded",
                name="itemstate",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("submitted_by", AutoString(length=64), nullable=False),
        sa.Column("supersedes", AutoString(length=160), nullable=True),
        sa.Column("derived_from", AutoString(length=160), nullable=True),
        sa.Column("worst_severity", sa.Enum("P1", "P2", "P3", name="severity"), nullable=True),
        sa.Column("quarantine_reason", sa.Text(), nullable=True),
        sa.Column("quarantine_key", AutoString(length=255), nullable=True),
        sa.Column("source_item_id", AutoString(length=255), nullable=True),
        sa.Column("source_etag", AutoString(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["product.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("item", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_item_content_digest"), ["content_digest"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_item_product_id"), ["product_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_item_source_digest"), ["source_digest"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_item_source_item_id"), ["source_item_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_item_source_key"), ["source_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_item_state"), ["state"], unique=False)

    op.create_table(
        "release",
        sa.Column("id", AutoString(length=64), nullable=False),
        sa.Column("product_id", AutoString(length=128), nullable=False),
        sa.Column("version", AutoString(length=64), nullable=False),
        sa.Column("parent_id", AutoString(length=64), nullable=True),
        sa.Column("manifest_key", AutoString(length=255), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("delta", sa.JSON(), nullable=False),
        sa.Column("kind", AutoString(length=32), nullable=False),
        sa.Column("actor", AutoString(length=64), nullable=False),
        sa.Column("deprecated", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["product.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("product_id", "version"),
    )
    with op.batch_alter_table("release", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_release_product_id"), ["product_id"], unique=False)

    op.create_table(
        "approval",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", AutoString(length=160), nullable=False),
        sa.Column("content_digest", AutoString(length=64), nullable=False),
        sa.Column("actor", AutoString(length=64), nullable=False),
        sa.Column("decision", sa.Enum("approve", "reject", name="decision"), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["item.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("item_id", "actor", "content_digest"),
    )
    with op.batch_alter_table("approval", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_approval_item_id"), ["item_id"], unique=False)

    op.create_table(
        "validationrun",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", AutoString(length=160), nullable=False),
        sa.Column("content_digest", AutoString(length=64), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("worst_severity", sa.Enum("P1", "P2", "P3", name="severity"), nullable=True),
        sa.Column("strict", sa.Boolean(), nullable=False),
        sa.Column("actor", AutoString(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["item.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("validationrun", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_validationrun_item_id"), ["item_id"], unique=False)

    op.create_table(
        "finding",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("item_id", AutoString(length=160), nullable=False),
        sa.Column("product_id", AutoString(length=128), nullable=False),
        sa.Column("rule_id", AutoString(length=32), nullable=False),
        sa.Column("severity", sa.Enum("P1", "P2", "P3", name="severity"), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("remediation", sa.Text(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["validationrun.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("finding", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_finding_item_id"), ["item_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_finding_open"), ["open"], unique=False)
        batch_op.create_index(batch_op.f("ix_finding_product_id"), ["product_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_finding_rule_id"), ["rule_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_finding_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_finding_severity"), ["severity"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("finding", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_finding_severity"))
        batch_op.drop_index(batch_op.f("ix_finding_run_id"))
        batch_op.drop_index(batch_op.f("ix_finding_rule_id"))
        batch_op.drop_index(batch_op.f("ix_finding_product_id"))
        batch_op.drop_index(batch_op.f("ix_finding_open"))
        batch_op.drop_index(batch_op.f("ix_finding_item_id"))

    op.drop_table("finding")
    with op.batch_alter_table("validationrun", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_validationrun_item_id"))

    op.drop_table("validationrun")
    with op.batch_alter_table("approval", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approval_item_id"))

    op.drop_table("approval")
    with op.batch_alter_table("release", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_release_product_id"))

    op.drop_table("release")
    with op.batch_alter_table("item", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_item_state"))
        batch_op.drop_index(batch_op.f("ix_item_source_key"))
        batch_op.drop_index(batch_op.f("ix_item_source_item_id"))
        batch_op.drop_index(batch_op.f("ix_item_source_digest"))
        batch_op.drop_index(batch_op.f("ix_item_product_id"))
        batch_op.drop_index(batch_op.f("ix_item_content_digest"))

    op.drop_table("item")
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_name"))

    op.drop_table("user")
    with op.batch_alter_table("task", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_product_id"))

    op.drop_table("task")
    op.drop_table("product")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_status"))
        batch_op.drop_index(batch_op.f("ix_outbox_product_id"))

    op.drop_table("outbox")
    op.drop_table("audithead")
    with op.batch_alter_table("auditevent", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auditevent_product_id"))
        batch_op.drop_index(batch_op.f("ix_auditevent_actor"))
        batch_op.drop_index(batch_op.f("ix_auditevent_action"))

    op.drop_table("auditevent")
