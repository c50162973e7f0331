"""Pytest plugin for the app tests (``pytest_plugins = ("_app_fixtures",)``).

The autouse fixture clears Streamlit's process-global caches around every test and makes
unexpected app errors propagate to ``at.exception`` (GEOMESH_UI_RAISE=1); ``demo_workspace``
is the seeded demo product on the test's own storage root and backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st

from geomesh import demo
from geomesh.workspace import Workspace


@pytest.fixture(autouse=True)
def _app_isolation(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("GEOMESH_UI_RAISE", "1")
    monkeypatch.delenv("GEOMESH_BASEMAP", raising=False)
    # the app's config hides error details from users; tests want to read them
    shown = st.get_option("client.showErrorDetails")
    st.set_option("client.showErrorDetails", "full")
    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.set_option("client.showErrorDetails", shown)
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture(scope="session")
def demo_places(
    request: pytest.FixtureRequest, schema_dir_if_present: Path | None
) -> Iterator[Any]:
    """The session's places for the demo catalog: its template and every test's copy."""
    from _backend_clone import Places

    from conftest import BACKEND

    buckets = request.getfixturevalue("bucket_pool") if BACKEND == "postgres-s3" else None
    made = Places(schema_dir_if_present, buckets)
    yield made
    made.close()


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory, demo_places: Any) -> Any:
    """The demo product seeded once (``demo.seed``) on the selected backend; every test gets
    a copy (seeding takes 2-7 s, a copy 0.05-0.2 s; ``tests/_backend_clone.py``)."""
    place = demo_places.fresh(tmp_path_factory.mktemp("demo-template") / "geomesh-data")
    ws = place.open()
    try:
        demo.seed(ws)
    finally:
        ws.close()
    return place


@pytest.fixture
def demo_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_places: Any, demo_template: Any
) -> Iterator[Workspace]:
    """The demo product, seeded, on this test's own storage root and backend (a copy of
    ``demo_template``); the test's GEOMESH_* variables point at it, for the app and the CLI."""
    place = demo_places.clone(demo_template, tmp_path / "geomesh-data")
    for key, value in place.env.items():
        monkeypatch.setenv(key, value)
    ws = place.open()
    yield ws
    ws.close()
    demo_places.drop(place)
