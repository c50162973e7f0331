"""The item states and finding severities the database stores and every layer names.

Here, not in :mod:`geomesh.models`, so that the read paths that start without the ORM
(``geomesh items list``: :mod:`geomesh.tables`) name them too; the models use these.
"""

from __future__ import annotations

from enum import StrEnum


class ItemState(StrEnum):
    """One item version's place in the lifecycle (``geomesh.lifecycle.TRANSITIONS``)."""

    staging = "staging"
    validation = "validation"
    production = "production"
    quarantined = "quarantined"
    #: a staged tile the P1 route (``rollback``) took out of the pipeline; never released
    rolled_back = "rolled_back"
    #: a released item taken out of production by an item or release rollback
    withdrawn = "withdrawn"
    superseded = "superseded"
    deprecated = "deprecated"
    discarded = "discarded"


class Severity(StrEnum):
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"
