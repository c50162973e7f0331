"""The app's cached read models, keyed by a per-product change counter (issue 16).

Every cached call is keyed by the workspace (``state.env_key``), its arguments and the
product's change counter (``queries.product_version``: the sequence number of the product's
newest audit event, one index lookup). Any change to a product appends an audit event naming
it in the change's own transaction, so:

* a rerun with no change costs the counter lookup and a cache hit;
* a change to product A invalidates A's entries only (not B's, and not on a sign-in);
* the audit page's entries follow the whole chain (``queries.catalog_version``).

The one thing not in the audit trail is the checksum cache: "Verify now" clears the review
queue's entries itself (:func:`checksums_verified`). Nothing that writes is cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from geomesh.preview import Preview, item_preview
from geomesh.services import history, promotion, quarantine, queries
from ui.state import env_key, workspace


def _version(product_id: str | None) -> int:
    return queries.product_version(workspace(), product_id)


# ------------------------------------------------------------------ findings


@st.cache_data(show_spinner=False, max_entries=64)
def _findings_total(env: tuple[str, ...], version: int, filters: tuple[Any, ...]) -> dict[str, Any]:
    del env, version  # cache keys only
    product_id, severities, rules, states, open_only = filters
    page = queries.findings_page(
        workspace(),
        product_id=product_id,
        severities=severities,
        rules=rules,
        states=states,
        open_only=open_only,
        limit=0,
    )
    return {"total": page["total"], "counts": page["counts"]}


@st.cache_data(show_spinner=False, max_entries=64)
def _findings_rows(
    env: tuple[str, ...], version: int, filters: tuple[Any, ...], page: int
) -> dict[str, list[Any]]:
    del env, version
    product_id, severities, rules, states, open_only = filters
    size = queries.FINDINGS_PAGE_SIZE
    return queries.findings_table(
        workspace(),
        product_id=product_id,
        severities=severities,
        rules=rules,
        states=states,
        open_only=open_only,
        limit=size,
        offset=(page - 1) * size,
    )


def _key(
    product_id: str | None,
    severities: Sequence[str],
    rules: Sequence[str],
    states: Sequence[str],
    open_only: bool,
) -> tuple[Any, ...]:
    return (product_id, tuple(severities), tuple(rules), tuple(states), open_only)


def findings_total(
    *,
    product_id: str | None,
    severities: Sequence[str],
    rules: Sequence[str],
    states: Sequence[str],
    open_only: bool,
) -> dict[str, Any]:
    """How many findings match the filters, and how many of each severity."""
    key = _key(product_id, severities, rules, states, open_only)
    return _findings_total(env_key(), _version(product_id), key)


def findings_rows(
    *,
    page: int,
    product_id: str | None,
    severities: Sequence[str],
    rules: Sequence[str],
    states: Sequence[str],
    open_only: bool,
) -> dict[str, list[Any]]:
    """One page (``queries.FINDINGS_PAGE_SIZE`` rows) of the filtered findings, worst first."""
    key = _key(product_id, severities, rules, states, open_only)
    return _findings_rows(env_key(), _version(product_id), key, page)


@st.cache_data(show_spinner=False, max_entries=16)
def _finding_rules(env: tuple[str, ...], version: int, product_id: str | None) -> list[str]:
    del env, version
    return queries.finding_rules(workspace(), product_id)


def finding_rules(product_id: str | None) -> list[str]:
    return _finding_rules(env_key(), _version(product_id), product_id)


# ------------------------------------------------------------------ overview, review


@st.cache_data(show_spinner=False, max_entries=16)
def _overview(env: tuple[str, ...], version: int, product_id: str) -> dict[str, Any]:
    del env, version
    return queries.overview(workspace(), product_id)


def overview(product_id: str) -> dict[str, Any]:
    return _overview(env_key(), _version(product_id), product_id)


@st.cache_data(show_spinner=False, max_entries=16)
def _review_queue(env: tuple[str, ...], version: int, product_id: str) -> list[dict[str, Any]]:
    del env, version
    return queries.review_queue(workspace(), product_id)


def review_queue(product_id: str) -> list[dict[str, Any]]:
    return _review_queue(env_key(), _version(product_id), product_id)


@st.cache_data(show_spinner=False, max_entries=16)
def _promotion_plan(env: tuple[str, ...], version: int, product_id: str) -> dict[str, Any]:
    del env, version
    ws = workspace()
    config = queries.product_config(ws, product_id)
    return promotion.plan_promotion(ws, config, verify_checksums=False).to_json()


def promotion_plan(product_id: str) -> dict[str, Any]:
    """``plan_promotion(...).to_json()`` with the cached checksums (promote re-hashes)."""
    return _promotion_plan(env_key(), _version(product_id), product_id)


@st.cache_data(show_spinner=False, max_entries=64)
def _review_item(env: tuple[str, ...], version: int, item_id: str) -> dict[str, Any]:
    del env, version
    return queries.review_item(workspace(), item_id)


def review_item(product_id: str, item_id: str) -> dict[str, Any]:
    """The item under review (detail, production counterpart, cached checksum check)."""
    return _review_item(env_key(), _version(product_id), item_id)


def checksums_verified() -> None:
    """After "Verify now": the queue's checksum column, the plan and the checksum line of
    the item under review must be read again."""
    _review_queue.clear()
    _promotion_plan.clear()
    _review_item.clear()


# ------------------------------------------------------------------ items (map, quarantine)


@st.cache_data(show_spinner=False, max_entries=64)
def _item_detail(env: tuple[str, ...], version: int, item_id: str) -> dict[str, Any]:
    del env, version
    return queries.item_detail(workspace(), item_id)


def item_detail(product_id: str, item_id: str) -> dict[str, Any]:
    """One item's summary, raster facts, open findings and history."""
    return _item_detail(env_key(), _version(product_id), item_id)


@st.cache_data(show_spinner=False, max_entries=16)
def _quarantined(env: tuple[str, ...], version: int, product_id: str) -> list[dict[str, Any]]:
    del env, version
    return quarantine.list_quarantined(workspace(), product_id=product_id)


def quarantined(product_id: str) -> list[dict[str, Any]]:
    """The product's quarantined items with their reasons and open finding counts."""
    return _quarantined(env_key(), _version(product_id), product_id)


@st.cache_data(show_spinner=False, max_entries=16)
def _item_ids(env: tuple[str, ...], version: int, product_id: str, state: str) -> list[str]:
    del env, version
    return [i["id"] for i in queries.iter_items(workspace(), product_id=product_id, state=state)]


def item_ids(product_id: str, state: str) -> list[str]:
    """The ids of the product's items in ``state``, oldest first."""
    return _item_ids(env_key(), _version(product_id), product_id, state)


@st.cache_data(show_spinner=False, max_entries=64)
def _preview(env: tuple[str, ...], item_id: str) -> Preview:
    del env
    return item_preview(workspace(), item_id)


def preview(item_id: str) -> Preview:
    """An item's rendered preview. Item ids are content-addressed, so a preview never goes
    stale: no change counter in the key."""
    return _preview(env_key(), item_id)


# ------------------------------------------------------------------ releases


@st.cache_data(show_spinner=False, max_entries=16)
def _release_history(
    env: tuple[str, ...], version: int, product_id: str, page: int
) -> dict[str, Any]:
    del env, version
    return queries.release_history(workspace(), product_id, page=page)


def release_history(product_id: str, page: int) -> dict[str, Any]:
    """One page of the release history (newest first), every version, the current one."""
    return _release_history(env_key(), _version(product_id), product_id, page)


@st.cache_data(show_spinner=False, max_entries=16)
def _release_diff(
    env: tuple[str, ...], version: int, product_id: str, a: str, b: str
) -> dict[str, Any]:
    del env, version
    return history.diff_releases(workspace(), product_id, a, b).to_json()


def release_diff(product_id: str, a: str, b: str) -> dict[str, Any]:
    """``history.diff_releases(a, b).to_json()``: the changed partitions' manifests only."""
    return _release_diff(env_key(), _version(product_id), product_id, a, b)


@st.cache_data(show_spinner=False, max_entries=16)
def _released_items(
    env: tuple[str, ...], version: int, product_id: str, containing: str
) -> dict[str, Any]:
    del env, version
    return queries.released_item_ids(workspace(), product_id, containing=containing)


def released_items(product_id: str, containing: str) -> dict[str, Any]:
    """At most ``queries.ITEM_CHOICES`` items of the current release (and how many)."""
    return _released_items(env_key(), _version(product_id), product_id, containing)


# ------------------------------------------------------------------ audit


@st.cache_data(show_spinner=False, max_entries=4)
def _chain_status(env: tuple[str, ...], version: int) -> dict[str, Any]:
    del env, version
    return queries.audit_chain_status(workspace())


def chain_status() -> dict[str, Any]:
    """The incremental chain check, once per change of the chain."""
    return _chain_status(env_key(), queries.catalog_version(workspace()))


@st.cache_data(show_spinner=False, max_entries=4)
def _audit_facets(env: tuple[str, ...], version: int) -> dict[str, list[str]]:
    del env, version
    return queries.audit_facets(workspace())


def audit_facets() -> dict[str, list[str]]:
    return _audit_facets(env_key(), queries.catalog_version(workspace()))


@st.cache_data(show_spinner=False, max_entries=32)
def _audit_events(
    env: tuple[str, ...], version: int, text: str | None, actor: str | None, action: str | None
) -> list[dict[str, Any]]:
    del env, version
    return queries.audit_events(workspace(), text=text, actor=actor, action=action, limit=2000)


def audit_events(text: str | None, actor: str | None, action: str | None) -> list[dict[str, Any]]:
    return _audit_events(env_key(), queries.catalog_version(workspace()), text, actor, action)
