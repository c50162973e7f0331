"""Helpers for the app tests (AppTest runs, element texts); fixtures: ``_app_fixtures``."""

from __future__ import annotations

import sys
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the app's `ui` package lives at the repository root
    sys.path.insert(0, str(ROOT))

from ui.state import K  # noqa: E402

APP = str(ROOT / "app.py")
TIMEOUT = 120
PAGES = (
    "pages/overview.py",
    "pages/map.py",
    "pages/findings.py",
    "pages/review.py",
    "pages/quarantine.py",
    "pages/releases.py",
    "pages/audit.py",
    "pages/ingest.py",
    "pages/policy.py",
    "pages/users.py",
)


def app_as(user: str | None, page: str | None = None) -> AppTest:
    """Run the app with ``user`` signed in (session state) and switch to ``page``."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if user is not None:
        at.session_state[K.USER] = user
    at.run()
    if page is not None:
        at.switch_page(page).run()
    return at


def texts(elements: object) -> list[str]:
    return [str(e.value) for e in elements]  # type: ignore[attr-defined]


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


__all__ = ["APP", "PAGES", "K", "app_as", "no_exception", "texts"]
