"""split rolled_back: withdrawn release items get their own state; drop item.lock_version

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

``rolled_back`` meant two things: a staged tile the P1 route took out of the pipeline, and a
released item an item or release rollback took out of production. The second is now
``withdrawn``: rows whose latest move into ``rolled_back`` was a rollback of a release or of
an item (audit actions ``rollback.item`` / ``rollback.release``) are moved to it. The item
state becomes a plain text column (no native PostgreSQL enum), so a new state needs no
``ALTER TYPE``. ``item.lock_version`` was written and never read: dropped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_WITHDRAWN_BY = "('rollback.item', 'rollback.release')"


def _columns() -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns("item")}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE item ALTER COLUMN state TYPE VARCHAR(32) USING state::text")
        op.execute("DROP TYPE IF EXISTS itemstate")
    op.execute(
        "UPDATE item SET state = 'withdrawn' WHERE state = 'rolled_back' AND id IN ("
        " SELECT e.target FROM auditevent e WHERE e.state_after = 'rolled_back'"
        f" AND e.action IN {_WITHDRAWN_BY} AND e.seq = ("
        "  SELECT max(l.seq) FROM auditevent l"
        "  WHERE l.target = e.target AND l.state_after = 'rolled_back'))"
    )
    if "lock_version" in _columns():
        # a plain column: SQLite >= 3.35 drops it in place (a batch copy of the table would
        # trip the foreign keys that point at item)
        op.execute("ALTER TABLE item DROP COLUMN lock_version")


def downgrade() -> None:
    op.execute("UPDATE item SET state = 'rolled_back' WHERE state = 'withdrawn'")
    if "lock_version" not in _columns():
        op.execute("ALTER TABLE item ADD COLUMN lock_version INTEGER NOT NULL DEFAULT 0")
