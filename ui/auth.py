"""Sign-in: a local user name + password form, or SSO through st.login when configured.

SSO is offered when ``st.secrets`` has an ``[auth]`` section (Streamlit's OIDC); the
identity provider's claims (verified e-mail) are matched to a user's registered e-mail by
``geomesh.services.auth_session.sign_in_sso``. The session keeps only the user name; the
user (role, disabled) is read from the database on every run, and a session idle for
``auth_session.IDLE_TIMEOUT`` is signed out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import streamlit as st

from geomesh.services import auth_session, demo_root
from geomesh.services.auth_session import SignedIn
from ui import errors
from ui.state import K, workspace


def sso_configured() -> bool:
    """True when Streamlit OIDC is configured ([auth] in .streamlit/secrets.toml)."""
    try:
        return "auth" in st.secrets
    except FileNotFoundError:  # no secrets file at all
        return False


def _client() -> str:
    """Where this session's requests come from (the per-client sign-in limit)."""
    try:
        address = st.context.ip_address
    except (AttributeError, RuntimeError):
        address = None
    return f"app:{address or 'unknown'}"


def current() -> SignedIn | None:
    """The signed-in user as stored now, or None (signed out when idle for too long)."""
    name = st.session_state.get(K.USER)
    if not name:
        return None
    last_seen = st.session_state.get(K.LAST_SEEN)
    if auth_session.idle_expired(last_seen):
        sign_out(reason="idle")
        st.session_state[K.SIGNED_OUT_IDLE] = True
        return None
    user = auth_session.current_user(
        workspace(), str(name), str(st.session_state.get(K.AUTH_METHOD, "password"))
    )
    if user is None:  # removed or disabled while signed in
        st.session_state.pop(K.USER, None)
        return None
    st.session_state[K.LAST_SEEN] = datetime.now(UTC)
    return user


def _sso_claims() -> dict[str, Any] | None:
    try:
        if st.user.is_logged_in:
            return {k: v for k, v in st.user.to_dict().items() if k != "is_logged_in"}
    except (AttributeError, KeyError):
        return None
    return None


def _signed_in(signed: SignedIn, method: str) -> None:
    st.session_state[K.USER] = signed.name
    st.session_state[K.AUTH_METHOD] = method
    st.session_state[K.LAST_SEEN] = datetime.now(UTC)
    st.session_state.pop(K.SIGNED_OUT_IDLE, None)


def require_user() -> SignedIn:
    """The signed-in user; otherwise render the sign-in page and stop the run."""
    user = current()
    if user is not None:
        _admin_notices(user)
        return user
    if sso_configured():
        claims = _sso_claims()
        email = str(claims.get("email") or "") if claims else ""
        if claims and st.session_state.get(K.SSO_REFUSED) != email:
            signed = errors.attempt(auth_session.sign_in_sso, workspace(), claims)
            if signed is not None:
                _signed_in(signed, "sso")
                return signed
            st.session_state[K.SSO_REFUSED] = email  # audited once, not on every rerun
        if claims:
            st.button("Sign out of SSO", on_click=st.logout)
    _sign_in_page()
    st.stop()
    raise AssertionError("unreachable")  # st.stop() raises


def _admin_notices(user: SignedIn) -> None:
    """Warn an admin while any account still has its published demo password."""
    if user.role != "admin":
        return
    names = demo_root.accounts_with_demo_passwords(workspace())
    if names:
        st.warning(
            "These accounts still use their published demo password: "
            + ", ".join(names)
            + ". Change them on the Users page (or `geomesh users passwd NAME`) before "
            "anyone else can reach this app.",
            icon=":material/key:",
        )


def _sign_in_page() -> None:
    st.title("geomesh review")
    st.caption("Governed Sentinel-2 data products: sign in to review, approve and release.")
    if st.session_state.get(K.SIGNED_OUT_IDLE):
        st.info("You were signed out after a period without activity. Sign in again.")
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
            signed = errors.attempt(
                auth_session.sign_in, workspace(), name, password, client=_client()
            )
            if signed is not None:
                _signed_in(signed, "password")
                st.rerun()
        if demo_root.is_demo_workspace(workspace()):
            st.caption("Demo workspace: the demo users are in README.md, “Demo credentials”.")


def sign_out(reason: str | None = None) -> None:
    """Forget the signed-in user (and end the SSO session when there is one)."""
    name = st.session_state.pop(K.USER, None)
    method = st.session_state.pop(K.AUTH_METHOD, None)
    st.session_state.pop(K.SSO_REFUSED, None)
    st.session_state.pop(K.LAST_SEEN, None)
    if name:
        auth_session.sign_out(workspace(), str(name), reason=reason)
    if method == "sso":
        st.logout()
