"""Every session-state key and widget key of the app, and the app's caches.

Keys live here so pages never scatter bare strings, and tests set them by name
(``at.session_state[K.USER] = "steward1"``). Domain state lives in the database; the
session holds only who is signed in and what the user is looking at.

Caches: the Workspace (``st.cache_resource``, one per environment) and the map's read model
with its footprints as JSON text (``st.cache_resource``, keyed on the product's change
counter, so it is never stale: one shared, read-only object, not a copy unpickled on every
rerun as ``st.cache_data`` would hand out). The other read models are in ``ui.cached``.
Nothing that writes is cached.
"""

from __future__ import annotations

import os
from typing import Any, Final

import streamlit as st

from geomesh.services import auth_session, queries
from geomesh.settings import load_settings
from geomesh.workspace import Workspace
from ui.fmt import footprints_json


class K:
    """Session-state keys (``S_*`` are plain state, the rest are widget keys)."""

    # ---- plain state
    USER: Final = "gm.user"  #: signed-in user name (the role is read from the DB each run)
    AUTH_METHOD: Final = "gm.auth_method"  #: "password" | "sso"
    SSO_REFUSED: Final = "gm.sso_refused"  #: an SSO e-mail without an account (no retry)
    LAST_SEEN: Final = "gm.last_seen"  #: when the signed-in user last interacted (idle timeout)
    SIGNED_OUT_IDLE: Final = "gm.signed_out_idle"  #: say why the sign-in page is back
    NEW_TOKEN: Final = "gm.users.new_token"  #: a token just created, shown once
    FLASH: Final = "gm.flash"  #: a success message shown once after a rerun
    MAP_LAST_CLICK: Final = "gm.map.last_click"  #: the last feature clicked on the map
    MAP_PENDING: Final = "gm.map.pending"  #: a click to apply to the tile picker next run
    PENDING_ROLLBACK: Final = "gm.releases.pending"  #: {"kind": "item"|"release", ...}
    INGEST_SOURCES: Final = "gm.ingest.sources"  #: sources of the last dry run
    INGEST_DRY_RUN: Final = "gm.ingest.dry_run"  #: the last dry-run report (JSON)
    INGEST_DIR: Final = "gm.ingest.dir"  #: temp dir of this session's uploads

    # ---- widgets: sign-in and sidebar
    SIGNIN_NAME: Final = "w.signin.name"
    SIGNIN_PASSWORD: Final = "w.signin.password"
    PRODUCT: Final = "w.product"
    SIGNOUT: Final = "w.signout"

    # ---- widgets: map
    MAP_STATES: Final = "w.map.states"
    MAP_COLOUR: Final = "w.map.colour"
    MAP_ITEM: Final = "w.map.item"
    MAP_PREVIEW: Final = "w.map.preview"

    # ---- widgets: findings
    F_SEVERITY: Final = "w.findings.severity"
    F_RULE: Final = "w.findings.rule"
    F_STATE: Final = "w.findings.state"
    F_PRODUCT: Final = "w.findings.product"
    F_ALL: Final = "w.findings.include_closed"
    F_PAGE: Final = "w.findings.page"

    # ---- widgets: review queue
    R_ITEM: Final = "w.review.item"
    R_COMMENT: Final = "w.review.comment"
    R_APPROVE: Final = "w.review.approve"
    R_REJECT: Final = "w.review.reject"
    R_BULK: Final = "w.review.bulk"
    R_BULK_APPROVE: Final = "w.review.bulk_approve"
    R_PROMOTE_CONFIRM: Final = "w.review.promote_confirm"
    R_PROMOTE: Final = "w.review.promote"
    R_VERIFY: Final = "w.review.verify"  #: "Verify now": re-hash the queue's stored objects

    # ---- widgets: quarantine
    Q_ITEM: Final = "w.quarantine.item"
    Q_REASON: Final = "w.quarantine.reason"
    Q_REVALIDATE: Final = "w.quarantine.revalidate"
    Q_RELEASE: Final = "w.quarantine.release"
    Q_DISCARD: Final = "w.quarantine.discard"
    Q_ROUTE: Final = "w.quarantine.route"

    # ---- widgets: releases
    REL_A: Final = "w.releases.a"
    REL_B: Final = "w.releases.b"
    REL_PAGE: Final = "w.releases.page"
    REL_ITEM_FIND: Final = "w.releases.item_find"  #: narrows the item picker (id or source)
    REL_ITEM: Final = "w.releases.item"
    REL_ROLLBACK_ITEM: Final = "w.releases.rollback_item"
    REL_ROLLBACK_RELEASE: Final = "w.releases.rollback_release"
    REL_CONFIRM: Final = "w.releases.confirm"
    REL_CANCEL: Final = "w.releases.cancel"
    REL_SNAPSHOT: Final = "w.releases.snapshot"

    # ---- widgets: audit
    A_TEXT: Final = "w.audit.text"
    A_ACTOR: Final = "w.audit.actor"
    A_ACTION: Final = "w.audit.action"
    A_VERIFY_FULL: Final = "w.audit.verify_full"  #: recompute the whole chain

    # ---- widgets: users
    U_PICK: Final = "w.users.pick"
    U_ROLE: Final = "w.users.role"
    U_SET_ROLE: Final = "w.users.set_role"
    U_TOGGLE: Final = "w.users.toggle"
    U_RESET_PW: Final = "w.users.reset_pw"
    U_RESET: Final = "w.users.reset"
    U_NEW_NAME: Final = "w.users.new_name"
    U_NEW_ROLE: Final = "w.users.new_role"
    U_NEW_EMAIL: Final = "w.users.new_email"
    U_NEW_PW: Final = "w.users.new_pw"
    U_ADD: Final = "w.users.add"
    U_OWN_CURRENT: Final = "w.users.own_current"
    U_OWN_NEW: Final = "w.users.own_new"
    U_OWN_SAVE: Final = "w.users.own_save"
    U_TOKEN_DAYS: Final = "w.users.token_days"
    U_TOKEN_CREATE: Final = "w.users.token_create"
    U_TOKEN_REVOKE: Final = "w.users.token_revoke"
    U_TOKEN_PICK: Final = "w.users.token_pick"

    # ---- widgets: ingest
    I_UPLOAD: Final = "w.ingest.upload"
    I_PATHS: Final = "w.ingest.paths"
    I_DRY_RUN: Final = "w.ingest.dry_run"
    I_INGEST: Final = "w.ingest.ingest"

    # ---- widgets: policy (the registered config)
    POL_APPROVE: Final = "w.policy.approve"  #: + ".<version>", one button per pending change


#: GEOMESH_* variables that select a different workspace (one cached Workspace per combination)
_CATALOG_ENV: Final = (
    "GEOMESH_STORAGE_ROOT",
    "GEOMESH_DATABASE_URL",
    "GEOMESH_OBJECT_STORE",
    "GEOMESH_SCHEMA_DIR",
    "GEOMESH_S3_ENDPOINT",
    "GEOMESH_S3_BUCKET",
    "GEOMESH_S3_QUARANTINE_BUCKET",
)


def _env_key() -> tuple[str, ...]:
    return tuple(os.environ.get(name, "") for name in _CATALOG_ENV)


@st.cache_resource(show_spinner=False, max_entries=4)
def _open_workspace(env_key: tuple[str, ...]) -> Workspace:
    del env_key  # only the cache key: load_settings() reads the same environment
    # an invalid GEOMESH_* value is a ConfigError naming the variable (shown by ui.errors)
    ws = Workspace.open(load_settings())
    ws.channel = auth_session.app_channel()  # recorded in every audit event of the app
    return ws


def env_key() -> tuple[str, ...]:
    """Which workspace the app is on (part of every cache key, ``ui.cached``)."""
    return _env_key()


def workspace() -> Workspace:
    """The process-wide Workspace for the current environment (opened once, migrated)."""
    return _open_workspace(_env_key())


@st.cache_resource(show_spinner=False, max_entries=8)
def _map_view(
    env_key: tuple[str, ...], product_id: str, states: tuple[str, ...], version: int
) -> dict[str, Any]:
    del env_key, version  # cache keys only: the workspace and its state version
    view = queries.map_view(workspace(), product_id, states=list(states))
    # the footprints as the browser gets them, serialised once per change (ui.maps)
    view["footprints"] = footprints_json(view["layer"])
    return view


def clear_read_caches() -> None:
    """Forget every cached read model (``st.cache_data`` and the map's), not the Workspace:
    the next run reads as the first visit after a change would."""
    st.cache_data.clear()
    _map_view.clear()


def map_view(product_id: str, states: list[str]) -> dict[str, Any]:
    """The map's read model, cached until the product changes (its change counter,
    ``queries.product_version``: any audited change of this product)."""
    version = queries.product_version(workspace(), product_id)
    return _map_view(_env_key(), product_id, tuple(states), version)


def flash(message: str) -> None:
    """Show ``message`` as st.success on the next run (after st.rerun)."""
    st.session_state[K.FLASH] = message


def pop_flash() -> str | None:
    value = st.session_state.pop(K.FLASH, None)
    return str(value) if value else None
