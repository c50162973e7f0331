"""Crash-injection points for the crash-safety tests.

Every write step calls :func:`point` with a stable name. In production this is a dictionary
lookup that does nothing. The test harness sets:

* ``GEOMESH_FAULT_TRACE=<file>``: append each point reached to the file (one name a line);
* ``GEOMESH_CRASH_AT=<name>#<k>``: SIGKILL this process the k-th time ``name`` is reached.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_counts: Counter[str] = Counter()


def point(name: str) -> None:
    trace = os.environ.get("GEOMESH_FAULT_TRACE")
    crash = os.environ.get("GEOMESH_CRASH_AT")
    if not trace and not crash:
        return
    _counts[name] += 1
    if trace:
        with open(trace, "a", encoding="utf-8") as fh:
            fh.write(f"{name}#{_counts[name]}\n")
    if crash == f"{name}#{_counts[name]}":
        os.kill(os.getpid(), signal.SIGKILL)
