"""`python -m bench --smoke`: every benchmark runs at tiny sizes and fills the table.

Structure only — rows present, ratios finite, targets stated. Never timings: those belong
to `make bench` on a quiet machine, not to the test suite.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import BACKEND, ROOT

EXPECTED = {
    # (2 sizes fresh + 1 warm) × (wall, CPU, memory) + the one-off of a new catalog
    "ingest overhead": 10,
    "batch scaling": 4,  # default vs best rio-cogeo setup, vs workers=1, remote ingest ×2
    "validation throughput": 2,
    "CLI start": 2,  # geomesh --help, geomesh items list
    # flatness ×3, whole-call growth ×3, 3 calls × 3 sizes, first publication × 3 sizes +
    # linearity, snapshot × 3 sizes, build
    "rollback / promotion": 3 + 3 + 9 + 3 + 1 + 3 + 1,
    # 7 pages × (first visit, rerun) + peak RSS of 2 streaming CLI reads + fixture build
    "app responsiveness": 7 * 2 + 2 + 1,
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, object]], str]:
    if BACKEND != "sqlite-local":
        pytest.skip("the benchmarks do not depend on the backend: smoke-tested once")
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOMESH_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--out",
            str(out / "results.md"),
            "--json",
            str(out / "rows.json"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "rows.json").read_text())
    return rows, (out / "results.md").read_text()


def test_every_benchmark_fills_its_rows(smoke: tuple[list[dict[str, object]], str]) -> None:
    rows, _ = smoke
    failed = [r for r in rows if str(r["notes"]).startswith("failed:")]
    assert not failed, failed
    by_bench: dict[str, int] = {}
    for r in rows:
        by_bench[str(r["bench"])] = by_bench.get(str(r["bench"]), 0) + 1
    expected = dict(EXPECTED)
    if not (ROOT.parent / "shared" / "stac-schemas").is_dir():
        expected["validation throughput"] = 1  # a "skipped" row that says why
    assert by_bench == expected


def test_ratios_are_finite_and_targets_are_stated(
    smoke: tuple[list[dict[str, object]], str],
) -> None:
    rows, _ = smoke
    for r in rows:
        ratio = r["ratio"]
        assert isinstance(ratio, int | float) and not isinstance(ratio, bool), r
        assert math.isfinite(ratio) and ratio > 0, r
        assert r["met"] in (True, False, None), r
        assert r["target"], r
        # a row with a target says whether it is met; informational rows say "—"
        assert (r["met"] is None) == str(r["target"]).startswith("—"), r
        for key in ("case", "metric", "geomesh", "baseline"):
            assert str(r[key]).strip(), (key, r)


def test_results_markdown_names_the_machine(smoke: tuple[list[dict[str, object]], str]) -> None:
    rows, text = smoke
    for label in ("cpu:", "cores:", "ram:", "python:", "gdal:", "date:", "python bytecode cache:"):
        assert f"- {label}" in text, label
    header = "| benchmark | case | metric | geomesh | baseline | ratio | target | met? | notes |"
    assert header in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == 1 + len(rows)


def test_the_machine_is_described_as_it_was_when_the_run_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The date and load average the page states are taken before any benchmark runs (the
    load after one is mostly its own processes)."""
    monkeypatch.syspath_prepend(str(ROOT))  # `python -m bench` runs from the project root
    bench_main = importlib.import_module("bench.__main__")

    order: list[str] = []

    def described() -> dict[str, str]:
        order.append("machine")
        return {"date": "then", "load average at start (1/5/15 min)": "0.00 / 0.00 / 0.00"}

    def ran(names: list[str], *, smoke: bool) -> tuple[list[object], dict[str, float]]:
        order.append("run")
        return [], {}

    monkeypatch.setattr(bench_main, "machine_info", described)
    monkeypatch.setattr(bench_main, "run_all", ran)
    assert bench_main.main(["--smoke", "--only", "cli_startup"]) == 0
    assert order == ["machine", "run"]


def test_committed_results_come_from_a_full_run() -> None:
    committed = ROOT / "bench" / "results.md"
    if not committed.exists():
        pytest.skip("bench/results.md is written by `make bench`")
    written_by = next(
        (line for line in committed.read_text().splitlines() if line.startswith("Written by")), ""
    )
    assert written_by and "--smoke" not in written_by, written_by
