"""reads at scale (issue 16): the overview's aggregates and the map read indexes only

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

So that each KPI of the overview page is an aggregate over one index range (no table row
is read) instead of a scan of the product's items, findings and approvals:

* ``item(product_id, worst_severity, state, id)``: items per state and worst severity, and
  the map's footprints worst first (one severity at a time, in the order it draws them);
* ``finding(product_id, open, rule_id, item_id)``: the items failing each rule (pass rates);
* table ``signoff_time`` (item version → seconds from its staging to the first approval of
  its content), index ``(product_id, seconds)``: the sign-off KPIs. Every sign-off keeps
  its item's row from now on (``services.approval_times``); the rows of the approvals
  already recorded are derived here, once.

No existing row changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: (index name, table, columns), created in this order, dropped in reverse
INDEXES = (
    ("ix_item_product_worst_state", "item", ["product_id", "worst_severity", "state", "id"]),
    (
        "ix_finding_product_open_rule_item",
        "finding",
        ["product_id", "open", "rule_id", "item_id"],
    ),
)

#: seconds between the first approval of an item's content and its staging, per dialect
_SECONDS = {
    "postgresql": "EXTRACT(EPOCH FROM (MIN(a.created_at) - i.created_at))",
    "sqlite": "(julianday(MIN(a.created_at)) - julianday(i.created_at)) * 86400.0",
}


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)
    op.create_table(
        "signoff_time",
        sa.Column("item_id", sa.String(length=160), sa.ForeignKey("item.id"), nullable=False),
        sa.Column("product_id", sa.String(length=128), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("item_id"),
    )
    op.create_index(
        "ix_signoff_time_product_seconds", "signoff_time", ["product_id", "seconds"], unique=False
    )
    seconds = _SECONDS[op.get_bind().dialect.name]
    op.execute(
        "INSERT INTO signoff_time (item_id, product_id, seconds) "
        f"SELECT i.id, i.product_id, CASE WHEN {seconds} > 0 THEN {seconds} ELSE 0 END "
        "FROM item i JOIN approval a ON a.item_id = i.id "
        "WHERE a.decision = 'approve' AND a.content_digest = i.content_digest "
        "GROUP BY i.id, i.product_id, i.created_at"
    )


def downgrade() -> None:
    op.drop_index("ix_signoff_time_product_seconds", table_name="signoff_time")
    op.drop_table("signoff_time")
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
