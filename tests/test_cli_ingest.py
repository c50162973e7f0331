"""The `geomesh` CLI for ingestion: --help everywhere, JSON output, exit codes, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from geomesh.cli import cli


def _commands(group: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    import click

    out: list[tuple[str, ...]] = []
    assert isinstance(group, click.Group)
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # loads lazily registered commands too
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out.extend(_commands(cmd, (*prefix, name)))
    assert out, "no command found: the walk must see the lazily loaded commands"
    return out


@pytest.mark.parametrize("path", _commands(cli), ids=lambda p: " ".join(p))
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_ingest_json_then_items_list(settings: object, config_path: Path, s2_tile: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["ingest", str(config_path), str(s2_tile), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["ok"] and report["results"][0]["status"] == "staged"
    listed = runner.invoke(cli, ["items", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert len(rows) == 1
    row = rows[0]
    assert row["id"] == report["results"][0]["item_id"]
    assert row["source"] == str(s2_tile.resolve())
    assert row["checksum"] == "1220" + report["results"][0]["digest"]
    assert set(row["findings"]) == {"P1", "P2", "P3"}
    assert row["state"] in {"staging", "validation", "quarantined"}


def test_items_list_names_the_states_when_one_is_not(settings: object) -> None:
    """A mistyped state is a usage error naming the valid ones, not a traceback."""
    res = CliRunner().invoke(cli, ["items", "list", "--state", "bogus"])
    assert res.exit_code == 2
    assert "Invalid value for '--state'" in res.output and "quarantined" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    ok = CliRunner().invoke(cli, ["items", "list", "--state", "quarantined", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.output) == []


def test_dry_run_human_output(settings: object, config_path: Path, s2_tile: Path) -> None:
    res = CliRunner().invoke(cli, ["ingest", str(config_path), str(s2_tile), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "would-stage" in res.output and "would write object sha256/" in res.output


def test_many_tiles_show_a_progress_bar_on_stderr_only(
    settings: object, config_path: Path, make_raster: Callable[..., Path]
) -> None:
    tiles = [str(make_raster(f"t{i}.tif", width=64, height=64, seed=i)) for i in range(3)]
    res = CliRunner().invoke(cli, ["ingest", str(config_path), *tiles, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "ingesting" in res.stderr  # (click draws the bar itself only on a terminal)
    assert "ingesting" not in res.stdout and "summary: 3 would-stage" in res.stdout
    as_json = CliRunner().invoke(cli, ["ingest", str(config_path), *tiles, "--dry-run", "--json"])
    assert as_json.exit_code == 0 and "ingesting" not in as_json.stderr


def test_failed_tile_exits_nonzero(settings: object, config_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_text("not a tiff")
    res = CliRunner().invoke(cli, ["ingest", str(config_path), str(bad)])
    assert res.exit_code == 1
    assert "bad.tif: not a readable raster" in res.output


def test_bad_config_is_one_clear_line(settings: object, tmp_path: Path, s2_tile: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "spatial_domain: {crs: 'EPSG:4326', boundary_wkt: 'POINT(0 0)'}\n"
        "product_metadata: {product_id: x}\n"
    )
    res = CliRunner().invoke(cli, ["ingest", str(cfg), str(s2_tile)])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert "c.yaml: spatial_domain.boundary_wkt: boundary WKT is a Point" in res.output


def test_inspect_json(shared_raster: object) -> None:
    path = shared_raster("rasterio__RGB.byte.tif")  # type: ignore[operator]
    res = CliRunner().invoke(cli, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["crs"] == "EPSG:32618" and info["count"] == 3 and info["tiled"] is False
    assert info["footprint_4326"]["type"] == "Polygon"


def test_console_script_runs() -> None:
    exe = Path(sys.executable).parent / "geomesh"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "ingest" in out.stdout
