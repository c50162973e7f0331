"""Every page of the review app runs for every role, without an exception (AppTest)."""

from __future__ import annotations

import pytest
from _app_helpers import PAGES, K, app_as, no_exception, texts

from geomesh.workspace import Workspace

pytest_plugins = ("_app_fixtures",)

TITLES = {
    "pages/overview.py": "Overview",
    "pages/map.py": "Map",
    "pages/findings.py": "Findings",
    "pages/review.py": "Review queue",
    "pages/quarantine.py": "Quarantine",
    "pages/releases.py": "Releases",
    "pages/audit.py": "Audit",
    "pages/ingest.py": "Ingest",
    "pages/policy.py": "Policy",
    "pages/users.py": "Users",
}


@pytest.mark.parametrize("user", ["admin", "steward", "analyst", "viewer"])
def test_every_page_runs_for_each_role(demo_workspace: Workspace, user: str) -> None:
    at = app_as(user)
    no_exception(at)
    for page in PAGES:
        at.switch_page(page).run()
        no_exception(at)
        assert texts(at.title) == [TITLES[page]], page
        # read-only visits never show an error (errors are for refused or failed actions)
        assert not at.error, (page, texts(at.error))


def test_role_notes_name_what_the_role_may_not_do(demo_workspace: Workspace) -> None:
    at = app_as("viewer", "pages/review.py")
    assert any("viewer" in t and "sign off" in t for t in texts(at.info))
    at = app_as("steward", "pages/review.py")
    assert not any("may not" in t for t in texts(at.info))


def test_signed_out_visitors_see_only_the_sign_in_form(demo_workspace: Workspace) -> None:
    at = app_as(None)
    no_exception(at)
    assert texts(at.title) == ["geomesh review"]
    assert at.text_input(key=K.SIGNIN_NAME) is not None
    assert not at.dataframe and not at.metric


def test_a_user_removed_while_signed_in_is_signed_out(demo_workspace: Workspace) -> None:
    at = app_as("ghost")  # the session names a user the database does not know
    no_exception(at)
    assert texts(at.title) == ["geomesh review"]
    assert K.USER not in at.session_state


def test_overview_shows_the_demo_product_card_and_counts(demo_workspace: Workspace) -> None:
    at = app_as("viewer", "pages/overview.py")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["In production"] == "6"
    assert metrics["Awaiting sign-off"] == "4"
    assert metrics["Quarantined"] == "2"
    assert metrics["Open P1 findings"] == "2"
    body = " ".join(texts(at.markdown))
    assert "1.1.0" in body and "sf-sentinel2-l2a" in body and "production" in body


def test_no_product_yet_is_explained_not_an_error(workspace: Workspace) -> None:
    from geomesh.services import users

    users.add_user(workspace, actor="system", name="admin", role="admin", password="pw-long-enough")
    at = app_as("admin")
    for page in PAGES:
        at.switch_page(page).run()
        no_exception(at)
        assert not at.error, texts(at.error)
        if page not in ("pages/audit.py", "pages/findings.py", "pages/users.py"):
            assert any("No data product" in t for t in texts(at.info)), page


def test_an_invalid_setting_is_named_on_the_page_not_a_crash(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEOMESH_OBJECT_STORE", "ftp")  # only "local" or "s3"
    at = app_as("admin")  # a signed-in session opens the catalog on every run
    no_exception(at)
    [error] = texts(at.error)
    assert "GEOMESH_OBJECT_STORE" in error and "ftp" not in error  # named, value not echoed


def test_overview_kpis_pass_rates_and_signoff_times(demo_workspace: Workspace) -> None:
    from geomesh.services import queries

    ov = queries.overview(demo_workspace, "sf-sentinel2-l2a")
    rates = {r["rule"]: r for r in ov["rule_pass_rates"]}
    validated = rates["GM-CRS-002"]["items_validated"]
    assert validated == 14  # every demo tile was validated
    assert rates["GM-CRS-002"]["items_failing"] == 1
    assert rates["GM-CRS-002"]["pass_rate"] == (validated - 1) / validated
    assert rates["GM-DRIFT-001"]["pass_rate"] == 1.0
    # 1.0.0 (4 items), 1.1.0 (3) and the approved-then-corrupted tile
    assert ov["signoff"]["count"] == 8
    bins = ov["signoff"]["histogram"]
    assert sum(b["items"] for b in bins) == 8 and bins[0]["from"] == 0
    assert bins[-1]["to"] == pytest.approx(ov["signoff"]["max_seconds"])
    assert 0 <= ov["signoff"]["median_seconds"] <= ov["signoff"]["max_seconds"]
    assert ov["boundary"]["type"] == "Polygon" and ov["current_version"] == "1.1.0"
    at = app_as("viewer", "pages/overview.py")
    median = {m.label: m.value for m in at.metric}["Median staging → sign-off"]
    assert median.endswith((" s", " min", " h", " d"))
