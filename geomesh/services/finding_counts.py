"""Open findings per item and severity, in one grouped query per chunk of ids.

Core statements over :mod:`geomesh.tables`, so the same function serves an ORM session
(routing, quarantine, review, the API) and a Core connection (``geomesh items list``,
which starts without SQLModel).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from geomesh.db import chunks
from geomesh.enums import Severity
from geomesh.tables import FINDING

if TYPE_CHECKING:  # either runs the statements (both have ``execute``)
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

_SEVERITY_VALUES = tuple(s.value for s in Severity)


def zero_counts() -> dict[str, int]:
    """``{"P1": 0, "P2": 0, "P3": 0}``."""
    return dict.fromkeys(_SEVERITY_VALUES, 0)


def finding_counts(
    session: Session | Connection,
    item_ids: Iterable[str] | None = None,
    *,
    product_id: str | None = None,
) -> dict[str, dict[str, int]]:
    """Open findings per item and severity: ``{item_id: {"P1": n, "P2": n, "P3": n}}``.

    With ``item_ids``, every one of them is in the result (zeros where it has none); without,
    only the items (of ``product_id``, when given) that have an open finding.
    """
    c = FINDING.c
    base = select(c.item_id, c.severity, func.count()).where(c.open.is_(True))
    if product_id is not None:
        base = base.where(c.product_id == product_id)
    base = base.group_by(c.item_id, c.severity)
    out: dict[str, dict[str, int]] = {}
    if item_ids is None:
        statements = [base]
    else:
        ids = list(item_ids)
        out = {i: zero_counts() for i in ids}
        statements = [base.where(c.item_id.in_(chunk)) for chunk in chunks(ids)]
    for stmt in statements:
        for item_id, severity, n in session.execute(stmt).all():
            out.setdefault(item_id, zero_counts())[Severity(severity).value] = int(n)
    return out
