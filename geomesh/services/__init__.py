"""The service layer: every state change is one function here.

Each state-changing call checks the actor's role (``geomesh.auth.require``), changes
state in one database transaction and appends its audit event in that transaction.
The CLI and the Streamlit pages call only these functions.
"""
