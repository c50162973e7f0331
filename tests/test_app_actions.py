"""Behaviour of the review app's actions, driven through the pages with AppTest.

Each action is one service call; roles are enforced by the service, so a refused action
is an ``st.error`` naming the role, and nothing changes in the catalog.
"""

from __future__ import annotations

import pytest
from _app_helpers import APP, K, app_as, no_exception, texts
from policy_support import change_policy
from sqlmodel import select
from streamlit.testing.v1 import AppTest

from geomesh.models import AuditEvent, Item, ItemState
from geomesh.services import history, queries, signoff, users
from geomesh.workspace import Workspace

pytest_plugins = ("_app_fixtures",)
PID = "sf-sentinel2-l2a"


def queued(ws: Workspace, tile: str) -> str:
    """The id of the queued item whose source file name contains ``tile`` (e.g. r2c0)."""
    ids = [q["id"] for q in queries.review_queue(ws, PID) if f"_{tile}.tif" in q["source"]]
    assert len(ids) == 1, ids
    return ids[0]


def state(ws: Workspace, item_id: str) -> str:
    with ws.read() as session:
        item = session.get(Item, item_id)
        assert item is not None
        return ItemState(item.state).value


def quarantined(ws: Workspace, suffix: str) -> str:
    ids = [i["id"] for i in queries.list_items(ws, product_id=PID, state="quarantined")]
    hits = [i for i in ids if i.endswith(suffix)] if suffix else ids
    return hits[0]


def review(user: str, item_id: str, comment: str = "") -> object:
    at = app_as(user, "pages/review.py")
    at.selectbox(key=K.R_ITEM).set_value(item_id).run()
    if comment:
        at.text_area(key=K.R_COMMENT).input(comment).run()
    return at


# ------------------------------------------------------------------ sign-in


def test_sign_in_form_checks_the_password_and_audits_both_outcomes(
    demo_workspace: Workspace,
) -> None:
    at = app_as(None)
    at.text_input(key=K.SIGNIN_NAME).input("steward")
    at.text_input(key=K.SIGNIN_PASSWORD).input("wrong")
    at.button[0].click().run()
    no_exception(at)
    assert any("wrong password" in t for t in texts(at.error))
    assert texts(at.title) == ["geomesh review"]

    at.text_input(key=K.SIGNIN_PASSWORD).input("geomesh-steward")
    at.button[0].click().run()
    no_exception(at)
    assert texts(at.title) == ["Overview"]
    assert at.session_state[K.USER] == "steward"
    with demo_workspace.read() as s:
        actions = [e.action for e in s.exec(select(AuditEvent).where(AuditEvent.seq > 0)).all()]
    assert actions[-2:] == ["auth.sign_in_failed", "auth.sign_in"]


def test_sign_out_returns_to_the_sign_in_form(demo_workspace: Workspace) -> None:
    at = app_as("analyst")
    at.button(key=K.SIGNOUT).click().run()
    no_exception(at)
    assert texts(at.title) == ["geomesh review"]
    assert K.USER not in at.session_state


OIDC = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "x" * 32,
    "client_id": "geomesh",
    "client_secret": "s",
    "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration",
}


def _sso_app(email: str | None, *, verified: bool = True) -> AppTest:
    """The app as an identity provider's signed-in user with these claims would see it."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.secrets["auth"] = OIDC
    at.user = {"is_logged_in": email is not None, "email": email, "email_verified": verified}
    return at


def _failed_sign_ins(ws: Workspace) -> int:
    with ws.read() as s:
        rows = s.exec(select(AuditEvent).where(AuditEvent.action == "auth.sign_in_failed"))
        return len(rows.all())


def test_sso_button_appears_when_oidc_is_configured(demo_workspace: Workspace) -> None:
    at = _sso_app(None).run()
    no_exception(at)
    assert "Sign in with SSO" in [b.label for b in at.button]


def test_sso_identity_signs_in_the_user_with_that_verified_email(
    demo_workspace: Workspace,
) -> None:
    users.add_user(demo_workspace, actor="admin", name="sky", role="steward", email="sky@x.org")
    at = _sso_app("sky@x.org").run()
    no_exception(at)
    assert texts(at.title) == ["Overview"]
    assert at.session_state[K.USER] == "sky"
    assert at.session_state[K.AUTH_METHOD] == "sso"
    # the same address, not verified by the identity provider, signs nobody in
    refused = _sso_app("sky@x.org", verified=False).run()
    assert any("has not verified" in t for t in texts(refused.error))
    assert texts(refused.title) == ["geomesh review"]


def test_sso_identity_without_an_account_is_refused_once(demo_workspace: Workspace) -> None:
    at = _sso_app("mallory@example.org").run()
    no_exception(at)
    assert any("no geomesh account" in t for t in texts(at.error))
    assert texts(at.title) == ["geomesh review"]
    assert "Sign out of SSO" in [b.label for b in at.button]
    at.run()
    assert _failed_sign_ins(demo_workspace) == 1  # not one audit event per rerun


# ------------------------------------------------------------------ sign-off


def test_steward_approves_an_item_through_the_review_page(demo_workspace: Workspace) -> None:
    item = queued(demo_workspace, "r2c0")
    at = review("steward", item, "radiometry checked")
    at.button(key=K.R_APPROVE).click().run()
    no_exception(at)
    assert any(t.startswith(f"Approved {item}") for t in texts(at.success)), texts(at.error)
    config = queries.product_config(demo_workspace, PID)
    status = signoff.signoff_status(demo_workspace, config, item)
    assert status.approved_by == ("steward",) and status.ok


def test_reject_needs_a_comment_and_records_it(demo_workspace: Workspace) -> None:
    item = queued(demo_workspace, "r2c1")
    at = review("steward2", item)
    at.button(key=K.R_REJECT).click().run()
    no_exception(at)
    assert any("needs a comment" in t for t in texts(at.error))
    at.text_area(key=K.R_COMMENT).input("clouds over the Presidio").run()
    at.button(key=K.R_REJECT).click().run()
    no_exception(at)
    assert any("Rejected" in t for t in texts(at.success))
    status = signoff.signoff_status(
        demo_workspace, queries.product_config(demo_workspace, PID), item
    )
    assert status.rejected_by == (("steward2", "clouds over the Presidio"),)
    assert not status.ok


@pytest.mark.parametrize("user", ["analyst", "viewer"])
def test_analyst_and_viewer_are_refused_by_the_service(
    demo_workspace: Workspace, user: str
) -> None:
    item = queued(demo_workspace, "r2c0")
    at = review(user, item, "looks fine to me")
    # the button is there: the refusal comes from the service layer, not from hiding it
    at.button(key=K.R_APPROVE).click().run()
    no_exception(at)
    errors = texts(at.error)
    assert any(f"role '{user}'" in t and "signoff" in t for t in errors), errors
    assert not any(t.startswith("Approved") for t in texts(at.success))
    status = signoff.signoff_status(
        demo_workspace, queries.product_config(demo_workspace, PID), item
    )
    assert status.approved_by == () and status.rejected_by == ()


def test_bulk_approve_signs_off_each_selected_item(demo_workspace: Workspace) -> None:
    items = [queued(demo_workspace, "r2c0"), queued(demo_workspace, "r2c1")]
    at = app_as("steward", "pages/review.py")
    at.multiselect(key=K.R_BULK).set_value(items).run()
    at.button(key=K.R_BULK_APPROVE).click().run()
    no_exception(at)
    assert any("Approved 2 of 2" in t for t in texts(at.success)), texts(at.error)
    config = queries.product_config(demo_workspace, PID)
    for item in items:
        assert signoff.signoff_status(demo_workspace, config, item).ok


# ------------------------------------------------------------------ promote


def test_promote_shows_the_computed_version_then_releases_it(demo_workspace: Workspace) -> None:
    item = queued(demo_workspace, "r2c0")
    at = review("steward", item)
    at.button(key=K.R_APPROVE).click().run()
    body = " ".join(texts(at.markdown))
    assert "Next release: **1.2.0** (minor; current 1.1.0)" in body
    blocked = at.dataframe[-1].value
    corrupt = queued(demo_workspace, "r2c2")
    why = dict(zip(blocked["blocked"], blocked["why"], strict=True))
    assert "checksum" in why[corrupt] and "corrupt" in why[corrupt]
    at.checkbox(key=K.R_PROMOTE_CONFIRM).check().run()
    at.button(key=K.R_PROMOTE).click().run()
    no_exception(at)
    assert f"Released {PID} 1.2.0." in texts(at.success)
    current = [r for r in history.list_releases(demo_workspace, PID) if r.current]
    assert [r.version for r in current] == ["1.2.0"]
    assert state(demo_workspace, item) == "production"
    assert state(demo_workspace, corrupt) == "validation"  # the checksum gate held it back


def test_promote_is_refused_for_an_analyst(demo_workspace: Workspace) -> None:
    item = queued(demo_workspace, "r2c0")
    signoff.sign_off(
        demo_workspace, queries.product_config(demo_workspace, PID), item, actor="steward",
        approve=True,
    )  # fmt: skip
    at = app_as("analyst", "pages/review.py")
    at.checkbox(key=K.R_PROMOTE_CONFIRM).check().run()
    at.button(key=K.R_PROMOTE).click().run()
    no_exception(at)
    assert any("analyst" in t and "promote" in t for t in texts(at.error))
    assert [r.version for r in history.list_releases(demo_workspace, PID)] == ["1.0.0", "1.1.0"]


# ------------------------------------------------------------------ rollback


def test_release_rollback_shows_the_impact_and_needs_confirmation(
    demo_workspace: Workspace,
) -> None:
    at = app_as("steward", "pages/releases.py")
    at.button(key=K.REL_ROLLBACK_RELEASE).click().run()
    no_exception(at)
    impact = " ".join(texts(at.markdown))
    assert "Release **1.1.0** stops being current; **1.0.0** is current again" in impact
    assert "3 item(s) become withdrawn, 1 return to production" in impact
    # nothing happened yet
    assert [r.version for r in history.list_releases(demo_workspace, PID) if r.current] == ["1.1.0"]
    at.button(key=K.REL_CONFIRM).click().run()
    no_exception(at)
    assert any("current is 1.0.0 again" in t for t in texts(at.success)), texts(at.error)
    rels = {r.version: r for r in history.list_releases(demo_workspace, PID)}
    assert rels["1.0.0"].current and rels["1.1.0"].deprecated


def test_cancelled_rollback_changes_nothing(demo_workspace: Workspace) -> None:
    at = app_as("steward", "pages/releases.py")
    at.button(key=K.REL_ROLLBACK_RELEASE).click().run()
    at.button(key=K.REL_CANCEL).click().run()
    no_exception(at)
    assert K.REL_CONFIRM not in [b.key for b in at.button]
    assert [r.version for r in history.list_releases(demo_workspace, PID) if r.current] == ["1.1.0"]


def test_item_rollback_publishes_a_patch_release_without_it(demo_workspace: Workspace) -> None:
    at = app_as("steward", "pages/releases.py")
    item = at.selectbox(key=K.REL_ITEM).options[0]
    at.selectbox(key=K.REL_ITEM).set_value(item).run()
    at.button(key=K.REL_ROLLBACK_ITEM).click().run()
    assert any("A new PATCH release **1.1.1**" in t for t in texts(at.markdown))
    at.button(key=K.REL_CONFIRM).click().run()
    no_exception(at)
    assert any("rolled back item" in t for t in texts(at.success)), texts(at.error)
    assert state(demo_workspace, item) == "withdrawn"
    current = [r for r in history.list_releases(demo_workspace, PID) if r.current][0]
    assert current.version == "1.1.1" and current.item_count == 5


def test_rollback_is_refused_for_an_analyst(demo_workspace: Workspace) -> None:
    at = app_as("analyst", "pages/releases.py")
    at.button(key=K.REL_ROLLBACK_RELEASE).click().run()
    at.button(key=K.REL_CONFIRM).click().run()
    no_exception(at)
    assert any("analyst" in t and "rollback" in t for t in texts(at.error))
    assert [r.version for r in history.list_releases(demo_workspace, PID) if r.current] == ["1.1.0"]


def test_withdrawing_the_first_release_leaves_no_current_release(
    demo_workspace: Workspace,
) -> None:
    for expected in ("current is 1.0.0 again", "no release is current"):
        at = app_as("steward", "pages/releases.py")
        at.button(key=K.REL_ROLLBACK_RELEASE).click().run()
        at.button(key=K.REL_CONFIRM).click().run()
        no_exception(at)
        assert any(expected in t for t in texts(at.success)), texts(at.error)
    assert not any(r.current for r in history.list_releases(demo_workspace, PID))
    at = app_as("viewer", "pages/releases.py")
    no_exception(at)
    assert any("no current release (withdrawn)" in t for t in texts(at.caption))
    assert K.REL_ROLLBACK_RELEASE not in [b.key for b in at.button]
    overview = app_as("viewer", "pages/overview.py")
    no_exception(overview)
    assert any("`withdrawn`" in t for t in texts(overview.markdown))


def test_a_steward_writes_the_geoparquet_snapshot_of_the_current_release(
    demo_workspace: Workspace,
) -> None:
    assert K.REL_SNAPSHOT not in [b.key for b in app_as("viewer", "pages/releases.py").button]
    at = app_as("steward", "pages/releases.py")
    at.button(key=K.REL_SNAPSHOT).click().run()
    no_exception(at)
    assert any("snapshot written" in t for t in texts(at.success)), texts(at.error)
    [current] = [r for r in history.list_releases(demo_workspace, PID) if r.current]
    assert current.snapshot_key == f"catalogs/{PID}/{current.version}/items.parquet"
    assert demo_workspace.store.exists("production", current.snapshot_key)


def test_release_diff_lists_added_and_changed_items(demo_workspace: Workspace) -> None:
    at = app_as("viewer", "pages/releases.py")
    assert any("**1.0.0 → 1.1.0**: 2 added, 0 removed, 1 changed" in t for t in texts(at.markdown))
    changes = at.dataframe[1].value
    assert sorted(changes["change"]) == ["added", "added", "changed"]


# ------------------------------------------------------------------ quarantine


def _allow_crs_mismatch(ws: Workspace) -> None:
    """The product decides a CRS label mismatch is only a warning (a config change)."""
    config = queries.product_config(ws, PID)
    relaxed = config.model_copy(
        update={
            "validation": config.validation.model_copy(
                update={"severity_overrides": {"GM-CRS-002": "P3"}}
            )
        }
    )
    # the audited way (issue 13): an admin proposes, a second person approves (loosening)
    change_policy(ws, relaxed, proposer="admin", approver="steward")


def test_analyst_revalidates_and_releases_a_quarantined_item(demo_workspace: Workspace) -> None:
    item = quarantined(demo_workspace, "-provider")
    _allow_crs_mismatch(demo_workspace)
    at = app_as("analyst", "pages/quarantine.py")
    at.selectbox(key=K.Q_ITEM).set_value(item).run()
    at.button(key=K.Q_REVALIDATE).click().run()
    no_exception(at)
    assert any("can be released" in t for t in texts(at.success)), texts(at.error)
    at.text_input(key=K.Q_REASON).input("NAD83 label accepted for this provider").run()
    at.button(key=K.Q_RELEASE).click().run()
    no_exception(at)
    assert any("to staging" in t for t in texts(at.success)), texts(at.error)
    assert state(demo_workspace, item) == "staging"
    at.button(key=K.Q_ROUTE).click().run()
    no_exception(at)
    assert state(demo_workspace, item) == "validation"


def test_release_is_blocked_while_findings_still_route_to_quarantine(
    demo_workspace: Workspace,
) -> None:
    item = quarantined(demo_workspace, "-provider")
    at = app_as("analyst", "pages/quarantine.py")
    at.selectbox(key=K.Q_ITEM).set_value(item).run()
    at.button(key=K.Q_RELEASE).click().run()
    no_exception(at)
    assert any("GM-CRS-002" in t for t in texts(at.error))
    assert state(demo_workspace, item) == "quarantined"


def test_discard_needs_a_reason(demo_workspace: Workspace) -> None:
    at = app_as("analyst", "pages/quarantine.py")
    item = at.selectbox(key=K.Q_ITEM).value
    at.button(key=K.Q_DISCARD).click().run()
    assert any("needs a reason" in t for t in texts(at.error))
    at.text_input(key=K.Q_REASON).input("no CRS and no way to recover it").run()
    at.button(key=K.Q_DISCARD).click().run()
    no_exception(at)
    assert state(demo_workspace, item) == "discarded"


def test_viewer_cannot_release_from_quarantine(demo_workspace: Workspace) -> None:
    item = quarantined(demo_workspace, "-provider")
    _allow_crs_mismatch(demo_workspace)
    at = app_as("viewer", "pages/quarantine.py")
    at.selectbox(key=K.Q_ITEM).set_value(item).run()
    at.button(key=K.Q_RELEASE).click().run()
    no_exception(at)
    assert any("viewer" in t for t in texts(at.error))
    assert state(demo_workspace, item) == "quarantined"
