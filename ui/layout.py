"""Navigation, the sidebar and the context every page starts from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import streamlit as st
from streamlit.navigation.page import StreamlitPage

from geomesh.services import auth_session, queries
from geomesh.services.auth_session import SignedIn
from geomesh.workspace import Workspace
from ui import auth
from ui.state import K, pop_flash, workspace

#: (file, title, icon): every page is reachable by every role; the services decide
PAGES: Final = (
    ("pages/overview.py", "Overview", ":material/dashboard:"),
    ("pages/map.py", "Map", ":material/map:"),
    ("pages/findings.py", "Findings", ":material/rule:"),
    ("pages/review.py", "Review queue", ":material/fact_check:"),
    ("pages/quarantine.py", "Quarantine", ":material/block:"),
    ("pages/releases.py", "Releases", ":material/history:"),
    ("pages/audit.py", "Audit", ":material/receipt_long:"),
    ("pages/ingest.py", "Ingest", ":material/upload_file:"),
    ("pages/users.py", "Users", ":material/group:"),
    ("pages/policy.py", "Policy", ":material/policy:"),
)


def navigation() -> StreamlitPage:
    """The page to run; the menu is hidden until someone is signed in."""
    pages = [
        st.Page(path, title=title, icon=icon, default=(n == 0))
        for n, (path, title, icon) in enumerate(PAGES)
    ]
    signed_in = bool(st.session_state.get(K.USER))
    return st.navigation(pages, position="sidebar" if signed_in else "hidden")


def sidebar(user: SignedIn) -> None:
    """Product picker and who is signed in."""
    products = queries.list_products(workspace())
    with st.sidebar:
        if products:
            labels = {
                p["id"]: f"{p['id']} · {p['current_version'] or 'unreleased'}" for p in products
            }
            if st.session_state.get(K.PRODUCT) not in labels:
                st.session_state[K.PRODUCT] = products[0]["id"]
            st.selectbox(
                "Data product", list(labels), key=K.PRODUCT, format_func=lambda p: labels[p]
            )
        else:
            st.session_state.pop(K.PRODUCT, None)
            st.caption("No data product yet.")
        st.divider()
        st.caption(f"Signed in as **{user.name}** · role `{user.role}`")
        st.button("Sign out", on_click=auth.sign_out, key=K.SIGNOUT)


@dataclass(frozen=True)
class PageContext:
    ws: Workspace
    user: SignedIn
    product_id: str | None

    def can(self, action: str) -> bool:
        """UI hint only: the service checks the role again on every call."""
        return auth_session.can(self.ws, self.user.name, action)

    def role_note(self, action: str, what: str) -> None:
        if not self.can(action):
            st.info(
                f"Your role (**{self.user.role}**) may not {what}. You can look; "
                "the catalog service refuses the action itself.",
                icon=":material/lock:",
            )


def context(title: str, caption: str | None = None) -> PageContext:
    """The sign-in gate, the sidebar, the page title; returns who/what/where.

    Without a signed-in user this renders the sign-in form and stops the run.
    """
    user = auth.require_user()
    sidebar(user)
    st.title(title)
    if caption:
        st.caption(caption)
    message = pop_flash()
    if message:
        st.success(message)
    product = st.session_state.get(K.PRODUCT)
    return PageContext(ws=workspace(), user=user, product_id=str(product) if product else None)


def require_product(ctx: PageContext) -> str:
    if ctx.product_id is None:
        st.info(
            "No data product is registered yet. Seed the demo with `geomesh demo seed` "
            "or ingest tiles (Ingest page / `geomesh ingest`)."
        )
        st.stop()
        raise AssertionError("unreachable")
    return ctx.product_id
