"""Sign-in: a local user name + password form, or SSO through st.login when configured.

SSO is offered when ``st.secrets`` has an ``[auth]`` section (Streamlit's OIDC); the
identity provider's e-mail is mapped to a geomesh user by
``geomesh.services.auth_session.sign_in_sso``. The session keeps only the user name; the
role is read from the database on every run.
"""

from __future__ import annotations

import streamlit as st

from geomesh.services import auth_session
from geomesh.services.auth_session import SignedIn
from ui import errors
from ui.state import K, workspace


def sso_configured() -> bool:
    """True when Streamlit OIDC is configured ([auth] in .streamlit/secrets.toml)."""
    try:
        return "auth" in st.secrets
    except FileNotFoundError:  # no secrets file at all
        return False


def current() -> SignedIn | None:
    """The signed-in user as stored now, or None."""
    name = st.session_state.get(K.USER)
    if not name:
        return None
    user = auth_session.current_user(
        workspace(), str(name), str(st.session_state.get(K.AUTH_METHOD, "password"))
    )
    if user is None:  # removed while signed in
        st.session_state.pop(K.USER, None)
    return user


def _sso_identity() -> str | None:
    try:
        if st.user.is_logged_in:
            email = st.user.get("email")
            return str(email) if email else None
    except (AttributeError, KeyError):
        return None
    return None


def require_user() -> SignedIn:
    """The signed-in user; otherwise render the sign-in page and stop the run."""
    user = current()
    if user is not None:
        return user
    if sso_configured():
        email = _sso_identity()
        if email and st.session_state.get(K.SSO_REFUSED) != email:
            signed = errors.attempt(auth_session.sign_in_sso, workspace(), email)
            if signed is not None:
                st.session_state[K.USER] = signed.name
                st.session_state[K.AUTH_METHOD] = "sso"
                return signed
            st.session_state[K.SSO_REFUSED] = email  # audited once, not on every rerun
        if email:
            st.button("Sign out of SSO", on_click=st.logout)
    _sign_in_page()
    st.stop()
    raise AssertionError("unreachable")  # st.stop() raises


def _sign_in_page() -> None:
    st.title("geomesh review")
    st.caption("Governed Sentinel-2 data products: sign in to review, approve and release.")
    left, _ = st.columns([1, 1])
    with left:
        if sso_configured():
            st.button("Sign in with SSO", on_click=st.login, type="primary")
            st.divider()
        with st.form("signin", clear_on_submit=False):
            name = st.text_input("User name", key=K.SIGNIN_NAME)
            password = st.text_input("Password", type="password", key=K.SIGNIN_PASSWORD)
            submitted = st.form_submit_button("Sign in", type="primary")
        if submitted:
            signed = errors.attempt(auth_session.sign_in, workspace(), name, password)
            if signed is not None:
                st.session_state[K.USER] = signed.name
                st.session_state[K.AUTH_METHOD] = "password"
                st.rerun()
        st.caption("Demo users: see README.md, section “Demo credentials”.")


def sign_out() -> None:
    """Forget the signed-in user (and end the SSO session when there is one)."""
    name = st.session_state.pop(K.USER, None)
    method = st.session_state.pop(K.AUTH_METHOD, None)
    st.session_state.pop(K.SSO_REFUSED, None)
    if name:
        auth_session.sign_out(workspace(), str(name))
    if method == "sso":
        st.logout()
