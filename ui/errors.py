"""Errors at the edge of the app: one place turns them into messages.

- ``GeomeshError`` (anything a user can cause): ``st.error`` with its clear message.
- anything else is a bug: it is logged with a short id the user can quote, and the page
  shows "Something went wrong (error id …)". With ``GEOMESH_UI_RAISE=1`` (set by the
  tests) it is re-raised so ``AppTest`` sees it in ``at.exception``.

Streamlit's own control flow (st.rerun, st.stop) derives from BaseException and passes.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import streamlit as st

from geomesh.errors import GeomeshError
from geomesh.redact import redact

log = logging.getLogger("geomesh.app")
P = ParamSpec("P")
T = TypeVar("T")


def _raise_unexpected() -> bool:
    return os.environ.get("GEOMESH_UI_RAISE", "").lower() in ("1", "true", "yes")


def report(exc: BaseException) -> str | None:
    """Show ``exc`` on the page; return the error id for unexpected errors."""
    if isinstance(exc, GeomeshError):
        st.error(redact(str(exc)), icon="⚠️")
        return None
    error_id = uuid.uuid4().hex[:8]
    log.error("unexpected error %s in the app", error_id, exc_info=exc)
    st.error(
        f"Something went wrong (error id {error_id}). The details are in the server log; "
        "quote the id when you report it."
    )
    return error_id


@contextmanager
def guard() -> Iterator[None]:
    """Run a block; map errors to messages (see module doc). Used around every page."""
    try:
        yield
    except GeomeshError as exc:
        report(exc)
    except Exception as exc:
        if _raise_unexpected():
            raise
        report(exc)


def attempt(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
    """Call one service function; on a GeomeshError show it and return None."""
    try:
        return fn(*args, **kwargs)
    except GeomeshError as exc:
        report(exc)
        return None
