"""Users: your own password and API tokens; for admins, every account (add, role,
disable/enable, reset password, tokens). Every button is one service call that checks the
role itself."""

import pandas as pd
import streamlit as st

from geomesh.services import tokens, users
from ui import errors, layout
from ui.state import K, flash

ROLES = ["viewer", "analyst", "steward", "admin"]

ctx = layout.context("Users", "Accounts, roles and API tokens. Users are disabled, never deleted.")
me = ctx.user.name

# ---- a token created in the previous run: shown exactly once
new_token = st.session_state.pop(K.NEW_TOKEN, None)
if new_token:
    st.success("New API token (shown only now; keep it in a file for `--token-file`):")
    st.code(str(new_token), language=None)

# ---- your account
st.subheader("Your account")
with st.form("own-password", clear_on_submit=True):
    current = st.text_input("Current password", type="password", key=K.U_OWN_CURRENT)
    new = st.text_input("New password", type="password", key=K.U_OWN_NEW)
    if st.form_submit_button("Change my password", key=K.U_OWN_SAVE):
        done = errors.attempt(
            users.set_password, ctx.ws, actor=me, name=me, password=new, current_password=current
        )
        if done is not None:
            flash("Your password was changed.")
            st.rerun()

mine = [t.to_json() for t in tokens.list_tokens(ctx.ws, me)]
c1, c2 = st.columns([1, 3])
days = c1.number_input(
    "Token lifetime (days)",
    min_value=1,
    max_value=tokens.MAX_EXPIRES_DAYS,
    value=tokens.DEFAULT_EXPIRES_DAYS,
    key=K.U_TOKEN_DAYS,
)
if c1.button("Create an API token for me", key=K.U_TOKEN_CREATE):
    made = errors.attempt(tokens.create_token, ctx.ws, actor=me, name=me, expires_days=int(days))
    if made is not None:
        st.session_state[K.NEW_TOKEN] = made[0]
        st.rerun()
with c2:
    if mine:
        st.dataframe(pd.DataFrame(mine), hide_index=True, width="stretch")
    else:
        st.caption("You have no API token.")

# ---- every account (admins)
if not ctx.can("users.manage"):
    st.divider()
    ctx.role_note("users.manage", "manage other accounts")
    st.stop()

st.divider()
st.subheader("All accounts")
everyone = users.list_users(ctx.ws)
st.dataframe(
    pd.DataFrame(
        [
            {
                "name": u.name,
                "role": u.role.value,
                "email": u.email,
                "disabled": u.disabled,
                "created": u.created_at,
            }
            for u in everyone
        ]
    ),
    hide_index=True,
    width="stretch",
)

names = [u.name for u in everyone]
pick = st.selectbox("Account", names, key=K.U_PICK)
chosen = next((u for u in everyone if u.name == pick), None)
if chosen is not None:
    a, b, c = st.columns(3)
    role = a.selectbox("Role", ROLES, index=ROLES.index(chosen.role.value), key=K.U_ROLE)
    if a.button("Set role", key=K.U_SET_ROLE) and errors.attempt(
        users.set_role, ctx.ws, actor=me, name=chosen.name, role=role
    ):
        flash(f"{chosen.name} is now {role}.")
        st.rerun()
    label = "Enable" if chosen.disabled else "Disable"
    if b.button(f"{label} {chosen.name}", key=K.U_TOGGLE):
        done = errors.attempt(
            users.set_disabled, ctx.ws, actor=me, name=chosen.name, disabled=not chosen.disabled
        )
        if done is not None:
            flash(f"{chosen.name} is {'disabled' if done.disabled else 'enabled'}.")
            st.rerun()
    reset = c.text_input("New password", type="password", key=K.U_RESET_PW)
    if c.button("Reset password", key=K.U_RESET) and errors.attempt(
        users.set_password, ctx.ws, actor=me, name=chosen.name, password=reset
    ):
        flash(f"The password of {chosen.name} was reset.")
        st.rerun()
    theirs = tokens.list_tokens(ctx.ws, chosen.name)
    active = [t.id for t in theirs if t.status() == "active"]
    if theirs:
        st.dataframe(pd.DataFrame([t.to_json() for t in theirs]), hide_index=True)
    if active:
        token_id = st.selectbox("Token", active, key=K.U_TOKEN_PICK, format_func=lambda i: f"#{i}")
        if st.button("Revoke token", key=K.U_TOKEN_REVOKE) and errors.attempt(
            tokens.revoke_token, ctx.ws, actor=me, token_id=int(token_id)
        ):
            flash(f"Token #{token_id} of {chosen.name} was revoked.")
            st.rerun()

st.divider()
st.subheader("Add an account")
with st.form("add-user", clear_on_submit=True):
    name = st.text_input("User name", key=K.U_NEW_NAME)
    new_role = st.selectbox("Role", ROLES, key=K.U_NEW_ROLE)
    email = st.text_input("E-mail (for SSO; optional)", key=K.U_NEW_EMAIL)
    password = st.text_input("Password (optional with SSO)", type="password", key=K.U_NEW_PW)
    if st.form_submit_button("Add", key=K.U_ADD):
        added = errors.attempt(
            users.add_user,
            ctx.ws,
            actor=me,
            name=name.strip(),
            role=new_role,
            password=password or None,
            email=email.strip() or None,
        )
        if added is not None:
            flash(f"{added.name} ({added.role.value}) was added.")
            st.rerun()
