"""Pytest plugin for the app tests (``pytest_plugins = ("_app_fixtures",)``).

The autouse fixture clears Streamlit's process-global caches around every test and makes
unexpected app errors propagate to ``at.exception`` (GEOMESH_UI_RAISE=1); ``demo_catalog``
is the seeded demo product on the test's own storage root and backend.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st

from geomesh import demo
from geomesh.settings import Settings
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
def demo_template(
    tmp_path_factory: pytest.TempPathFactory, schema_dir_if_present: Path | None
) -> Path | None:
    """A seeded SQLite + local demo catalog, copied per test (seeding once is faster)."""
    from conftest import BACKEND

    if BACKEND != "sqlite-local":
        return None
    root = tmp_path_factory.mktemp("demo-template") / "geomesh-data"
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("GEOMESH_STORAGE_ROOT", str(root))
        if schema_dir_if_present is not None:
            mp.setenv("GEOMESH_SCHEMA_DIR", str(schema_dir_if_present))
        ws = Workspace.open(Settings())
        demo.seed(ws)
        ws.close()
    finally:
        mp.undo()
    return root


@pytest.fixture
def demo_workspace(settings: Settings, demo_template: Path | None) -> Iterator[Workspace]:
    """The demo product, seeded, on this test's storage root and backend."""
    if demo_template is not None:
        shutil.copytree(demo_template, settings.resolved_storage_root(), dirs_exist_ok=True)
        ws = Workspace.open(settings)
    else:
        ws = Workspace.open(settings)
        demo.seed(ws)
    yield ws
    ws.close()
