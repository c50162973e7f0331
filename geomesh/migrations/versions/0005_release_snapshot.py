"""release publication at scale (issue 15): the stac-geoparquet snapshot of a release

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

``release.snapshot_key`` records the production key of a release's columnar snapshot
(``catalogs/<product>/<version>/items.parquet``), written on demand after publication;
the release index lists it. Release membership itself stays in the content-addressed
manifest tree (``releases/<product>/<id>.json`` + ``releases/<product>/parts/``), which
needs no table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("release") as batch:
        batch.add_column(sa.Column("snapshot_key", AutoString(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("release") as batch:
        batch.drop_column("snapshot_key")
