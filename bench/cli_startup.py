"""Whole-process start of the CLI against ``python -c 'import click'``, in the same run.

A steward scripting sign-offs pays the start of every ``geomesh`` call. Each side is a
fresh process (``subprocess``), measured wall time, alternating sides, medians. Targets
(issue 19): ``geomesh --help`` at most 0.3 s slower than importing click, ``geomesh items
list`` on a small catalog at most 0.8 s slower.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench import Row, fmt_s, median, open_workspace, workdir

NAME = "CLI start"
HELP_TARGET_S = 0.3
LIST_TARGET_S = 0.8
GEOMESH = [sys.executable, "-m", "geomesh.cli"]


def _wall(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - t0


def _pairs(side: list[str], base: list[str], env: dict[str, str], n: int) -> tuple[float, float]:
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(n):  # alternate, so a busy moment hits both sides alike
        ours.append(_wall(side, env))
        theirs.append(_wall(base, env))
    return median(ours), median(theirs)


def run(smoke: bool) -> list[Row]:
    n = 2 if smoke else 9
    baseline = [sys.executable, "-c", "import click"]
    with workdir("cli") as tmp:
        root = Path(tmp) / "root"
        open_workspace(root).close()  # a small catalog, migrated: `items list` reads it
        env = {**os.environ, "GEOMESH_STORAGE_ROOT": str(root)}
        env.pop("GEOMESH_DATABASE_URL", None)
        env.pop("GEOMESH_OBJECT_STORE", None)
        rows = []
        for case, argv, target in (
            ("geomesh --help", [*GEOMESH, "--help"], HELP_TARGET_S),
            ("geomesh items list (small catalog)", [*GEOMESH, "items", "list"], LIST_TARGET_S),
        ):
            ours, theirs = _pairs(argv, baseline, env, n)
            extra = ours - theirs
            rows.append(
                Row(
                    NAME,
                    case,
                    "whole-process wall time, median",
                    fmt_s(ours),
                    fmt_s(theirs),
                    ours / theirs,
                    f"≤ +{fmt_s(target)} over `python -c 'import click'`",
                    extra <= target,
                    f"{n} runs per side, alternating; geomesh is {fmt_s(extra)} slower",
                )
            )
    return rows
