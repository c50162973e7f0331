"""geomesh review app: `streamlit run app.py` (or `make run`, which seeds the demo first).

Navigation, then the page inside the one error guard of ``ui.errors``. Every page starts
with ``ui.layout.context()``, which is the sign-in gate and draws the sidebar: a page is
safe even when Streamlit runs it without this script (its first run in a fresh process
with a deep link treats ``pages/`` as a v1 pages folder).
"""

from __future__ import annotations

import streamlit as st

from ui import errors, layout

st.set_page_config(page_title="geomesh review", page_icon="🛰️", layout="wide")

with errors.guard():
    layout.navigation().run()
