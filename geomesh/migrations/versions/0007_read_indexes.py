"""reads at scale (issue 16): the indexes the read models' queries need

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

Composite indexes, so that every page's query is an index range scan (in the order the
page shows it) instead of a table scan:

* ``auditevent(target, seq)``: an item's history (every item detail view);
* ``auditevent(product_id, seq)``: a product's newest events and its change counter
  (``max(seq)`` per product, which the app keys its caches on);
* ``finding(product_id, open, severity, rule_id, id)``: the findings page, worst first,
  paged with LIMIT, and its per-severity counts;
* ``finding(product_id, rule_id)``: the findings page's rule picker;
* ``finding(item_id, open, severity)``: one item's open findings, counts per item;
* ``item(product_id, state, created_at, id)``: lists and queues of one state, in order;
* ``item(product_id, source_key, state)``: the other versions of the same tile.

Indexes only: no data changes, existing rows are indexed as they are.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: (index name, table, columns), created in this order, dropped in reverse
INDEXES = (
    ("ix_auditevent_target_seq", "auditevent", ["target", "seq"]),
    ("ix_auditevent_product_seq", "auditevent", ["product_id", "seq"]),
    (
        "ix_finding_product_open_order",
        "finding",
        ["product_id", "open", "severity", "rule_id", "id"],
    ),
    ("ix_finding_product_rule", "finding", ["product_id", "rule_id"]),
    ("ix_finding_item_open_severity", "finding", ["item_id", "open", "severity"]),
    ("ix_item_product_state_created", "item", ["product_id", "state", "created_at", "id"]),
    ("ix_item_product_source_state", "item", ["product_id", "source_key", "state"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
