"""The Policy page (issue 13): the registered config's history and the four-eyes approval
of a pending loosening change, driven through Streamlit's AppTest on the seeded demo."""

from __future__ import annotations

from _app_helpers import K, app_as, no_exception, texts

from geomesh.services import policy, queries
from geomesh.workspace import Workspace

pytest_plugins = ("_app_fixtures",)

PID = "sf-sentinel2-l2a"


def _propose_a_loosening(ws: Workspace) -> policy.PolicyChange:
    """The admin lowers GM-CRS-002 to P3: a loosening change that waits for approval."""
    config = queries.product_config(ws, PID)
    relaxed = config.model_copy(
        update={
            "validation": config.validation.model_copy(
                update={"severity_overrides": {"GM-CRS-002": "P3"}}
            )
        }
    )
    change = policy.update_config(ws, relaxed, actor="admin")
    assert change.outcome == "pending" and change.version is not None
    return change


def _active_version(ws: Workspace) -> int:
    return next(v.version for v in policy.policy_history(ws, PID) if v.status == "active")


def test_the_history_is_shown_to_every_role(demo_workspace: Workspace) -> None:
    at = app_as("viewer", "pages/policy.py")
    no_exception(at)
    assert texts(at.title) == ["Policy"]
    [history] = at.dataframe
    rows = history.value
    assert list(rows["version"]) == [1] and list(rows["status"]) == ["active"]
    assert any("Registered config" in t and "version 1" in t for t in texts(at.markdown))


def test_a_loosening_change_is_approved_by_a_second_person_on_the_page(
    demo_workspace: Workspace,
) -> None:
    change = _propose_a_loosening(demo_workspace)
    assert change.version is not None
    button = f"{K.POL_APPROVE}.{change.version.version}"

    at = app_as("admin", "pages/policy.py")
    no_exception(at)
    assert any('+ validation.severity_overrides.GM-CRS-002: "P3"' in t for t in texts(at.code))
    assert any("GM-CRS-002: P2 → P3" in t for t in texts(at.markdown))
    assert any("You proposed this change" in t for t in texts(at.caption))
    at.button(key=button).click().run()  # the proposer: refused by the service
    no_exception(at)
    assert any("cannot approve" in t for t in texts(at.error)), texts(at.error)
    assert _active_version(demo_workspace) == 1

    at = app_as("analyst", "pages/policy.py")
    assert any("analyst" in t and "approve a policy change" in t for t in texts(at.info))
    at.button(key=button).click().run()  # the role: refused by the service
    no_exception(at)
    assert any("analyst" in t for t in texts(at.error)), texts(at.error)
    assert _active_version(demo_workspace) == 1

    at = app_as("steward", "pages/policy.py")
    at.button(key=button).click().run()
    no_exception(at)
    assert any("approved by steward" in t for t in texts(at.success)), texts(at.error)
    assert _active_version(demo_workspace) == 2
    rows = at.dataframe[0].value
    assert list(rows["status"]) == ["active", "superseded"]
    assert list(rows["approved by"]) == ["steward", ""]
