"""Output for people and scripts: help pages, JSON errors, tables at 80 columns, progress,
log lines, output-path rules (issue 20, items 5 and 6)."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsp_deploy import progress
from dsp_deploy.inference import run_model
from dsp_deploy.render import ELLIPSIS, fit, fold_one_channel, middle, progress_bar

sys.path.insert(0, str(Path(__file__).parents[1] / "testkit"))
import onnx_graphs as G  # noqa: E402


def _commands() -> tuple[str, ...]:
    import typer.main

    from dsp_deploy.cli import app

    return tuple(sorted(typer.main.get_group(app).commands))


COMMANDS = _commands()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    model, calib = tmp_path / "net.onnx", tmp_path / "calib.npz"
    onnx.save(G.lite_like(), model)
    x = G.inputs(60)
    np.savez(calib, x=x, y=run_model(G.lite_like(), {"x": x})[0].argmax(axis=1))
    return model, calib


def test_no_arguments_prints_help_and_exits_0(run_cli) -> None:
    result = run_cli()
    assert result.code == 0 and result.stderr == ""
    assert "Usage: dsp-deploy" in result.stdout and "compress" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_plain_metavars_panels_an_example_and_exit_codes(
    run_cli, monkeypatch, command: str
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    result = run_cli(command, "--help")
    assert result.code == 0, result.stderr
    text = result.stdout
    assert not re.search(r"<(str|bool|int|float|path|list\[\w+\])>", text, re.I), text
    assert "{" not in text and "MEMBER" not in text
    assert "Examples" in text and f"dsp-deploy {command}" in text.split("Examples")[1]
    assert "Exit codes" in text and re.search(r"^\s+0\s+done", text, re.M)
    assert command == "ops" or re.search(r"^\s+2\s+bad input", text, re.M)


def _panels(text: str) -> dict[str, str]:
    """Each rich panel's title → its body."""
    return dict(re.findall(r"╭─ (.+?) ─+╮\n(.*?)╰", text, re.S))


@pytest.mark.parametrize("command", COMMANDS)
def test_help_reads_cleanly_at_80_columns(run_cli, monkeypatch, command: str) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = run_cli(command, "--help").stdout
    usage = text.split("Usage: ")[1].splitlines()[0].split()
    assert usage[:3] == ["dsp-deploy", command, "[OPTIONS]"], usage
    assert all(re.fullmatch(r"\[?[A-Z]+\]?(\.\.\.)?", a) for a in usage[3:]), usage
    panels = _panels(text)
    holding_json = [t for t, body in panels.items() if "--json" in body]
    assert [t for t, body in panels.items() if "--help" in body] == (holding_json or ["Options"])
    examples = text.split("Examples")[1].split("Exit codes")[0].strip().splitlines()
    assert examples and all(e.startswith("dsp-deploy ") for e in map(str.strip, examples))
    assert max(map(len, text.splitlines())) <= 80
    assert ("a check failed" in text) == (command in ("compress", "quantize"))


def test_default_outputs_sit_beside_the_input() -> None:
    from dsp_deploy.commands import beside

    assert beside("runs/a/net.onnx", ".pruned.onnx") == Path("runs/a/net.pruned.onnx")
    assert beside(Path("net.v2.onnx"), ".int8.onnx") == Path("net.v2.int8.onnx")


def test_compress_help_groups_its_options(run_cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    text = run_cli("compress", "--help").stdout
    panels = re.findall(r"╭─ (.+?) ─", text)
    assert panels == [
        "Arguments", "Files", "What to remove", "Checks (gates)", "Rewrites for speed",
        "Run and output",
    ]  # fmt: skip
    assert "MODEL" in text.split("Usage:")[1].splitlines()[0]
    assert "replaced" in text and "--no-overwrite" in text  # replacing is documented


def test_bench_help_explains_its_columns(run_cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    text = " ".join(run_cli("bench", "--help").stdout.split())
    for words in ("spread is", "per s is", "latency is the median", "p50 is the ratio",
                  "lat/MACs"):  # fmt: skip
        assert words in text


def test_json_errors_are_one_object_on_stdout(run_cli, tmp_path: Path) -> None:
    missing = run_cli("compress", tmp_path / "no.onnx", "--calib", tmp_path / "c.npz", "--json")
    assert missing.code == 2 and missing.stderr.startswith("error: ")
    doc = json.loads(missing.stdout)
    assert doc["exit_code"] == 2 and "no.onnx" in doc["error"]
    usage = run_cli("inspect", "--json", "--no-such-option")
    assert usage.code == 2 and json.loads(usage.stdout)["exit_code"] == 2
    plain = run_cli("compress", tmp_path / "no.onnx", "--calib", tmp_path / "c.npz")
    assert plain.code == 2 and plain.stdout == ""


GATE = ("--criterion", "dsp", "--compensation", "none", "--min-count", "1000000",
        "--max-accuracy-drop", "0.001", "--confidence", "0.5")  # fmt: skip


def test_a_gate_failure_is_reported_once(files, run_cli, tmp_path: Path) -> None:
    model, calib = files
    out = tmp_path / "small.onnx"
    verbose = run_cli("compress", model, "--calib", calib, "-o", out, *GATE, "-v")
    assert verbose.code == 1 and not out.exists()
    both = verbose.stdout + verbose.stderr
    assert both.count("accuracy drop up to") == 1, both
    as_json = run_cli("compress", model, "--calib", calib, "-o", out, *GATE, "--json")
    assert as_json.code == 1 and not out.exists()
    doc = json.loads(as_json.stdout)  # one object: the report, with the refusal in it
    assert doc["exit_code"] == 1 and "not written" in doc["error"] and doc["failures"]
    assert as_json.stderr.count("\n") == 1


def test_output_must_be_onnx_and_no_overwrite_keeps_a_file(files, run_cli, tmp_path) -> None:
    model, calib = files
    text = run_cli("compress", model, "--calib", calib, "-o", tmp_path / "out.txt")
    assert text.code == 2 and text.stderr.count("\n") == 1 and "ending in .onnx" in text.stderr
    assert not (tmp_path / "out.txt").exists()
    existing = tmp_path / "net.pruned.onnx"
    existing.write_bytes(b"keep me")
    kept = run_cli("compress", model, "--calib", calib, "--no-overwrite")
    assert kept.code == 2 and "exists" in kept.stderr and existing.read_bytes() == b"keep me"
    replaced = run_cli("compress", model, "--calib", calib, "--json")
    assert replaced.code == 0 and onnx.load(existing).graph.node


@given(st.text(min_size=0, max_size=60), st.integers(min_value=1, max_value=70))
def test_middle_fits_and_keeps_both_ends(text: str, width: int) -> None:
    short = middle(text, width)
    assert len(short) <= width
    if len(text) <= width:
        assert short == text
    else:
        head, _, tail = short.partition(ELLIPSIS)
        assert len(short) == width and text.startswith(head) and text.endswith(tail)
        assert abs(len(head) - len(tail)) <= 1


def test_fit_shortens_only_the_name_columns_to_the_width() -> None:
    header = ("layer", "channels", "consumers")
    rows = [
        [f"/net/blocks.{i}/convs.0/conv/inner/Conv", "32 → 32", "/net/pw1/Conv"] for i in (0, 1)
    ]
    cells = fit(header, rows, [0, 2], 50)
    width = sum(max(len(c) for c in col) for col in zip(header, *cells, strict=True)) + 10
    assert width <= 50 and [r[1:] for r in cells] == [r[1:] for r in rows]
    # the shared "/net/" goes first, then the middle: both ends stay
    assert cells[0][0].startswith("…blocks.0") and cells[0][0].endswith("/Conv")
    assert fit(header, rows, [0, 2], 500) == rows  # room enough: unchanged


def test_fold_one_channel_keeps_order_and_totals() -> None:
    rows = ["a", "x.1", "b", "x.2", "x.3"]
    folded = fold_one_channel(rows, lambda r: r.startswith("x"))
    assert folded[0] == "a" and folded[2] == "b" and len(folded) == 3
    assert folded[1].rows == ("x.1", "x.2", "x.3") and folded[1].label(str) == "x.*"
    assert folded[1].total(len) == 9
    assert fold_one_channel(rows[:4], lambda r: r.startswith("x")) == rows[:4]  # 2 < 3


def test_tables_fit_80_columns_and_fold_one_channel_convs(tmp_path, run_cli, monkeypatch):
    models = Path(__file__).parents[1] / "models"
    monkeypatch.setenv("COLUMNS", "80")
    result = run_cli("inspect", models / "lite_gunpoint.onnx")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    folded = [line for line in lines if "/net/hybrid/convs.*" in line]
    assert len(folded) == 2 and "17 × 1" in folded[0]  # layer table, group table
    assert "438" in folded[0]  # the 17 hybrid filters' weights: 2 * 126 + 186
    assert not any("convs.5/" in line for line in lines)


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def start(self, label, total):
        self.events.append(("start", label, total))
        return len(self.events)

    def advance(self, handle, n):
        self.events.append(("advance", handle, n))

    def finish(self, handle):
        self.events.append(("finish", handle))


def test_batched_passes_report_progress_only_to_a_listener() -> None:
    x = G.inputs(10)
    recorder = _Recorder()
    with progress.reporting(recorder), progress.task("search", total=1) as advance:
        run_model(G.lite_like(), {"x": x}, batch_size=4)
        advance(1)
    assert recorder.events == [
        ("start", "search", 1),
        ("start", None, 10),
        ("advance", 2, 4), ("advance", 2, 4), ("advance", 2, 2),
        ("finish", 2),
        ("advance", 1, 1),
        ("finish", 1),
    ]  # fmt: skip
    run_model(G.lite_like(), {"x": x}, batch_size=4)  # nobody listens: nothing recorded
    assert len(recorder.events) == 8


def test_no_progress_bar_off_a_terminal_or_when_disabled() -> None:
    with progress_bar("calibration") as bar:  # pytest captures stderr: not a terminal
        assert bar is None
    with progress_bar("calibration", enabled=False) as bar:
        assert bar is None


def test_emulator_steps_are_logged_to_stderr_while_a_command_runs(run_cli, monkeypatch):
    def noisy_table() -> list:
        logging.getLogger("dsp_deploy.emulator").info("pi4-emulated: building the sysroot")
        logging.getLogger("dsp_deploy.compress.plan").info("a detail nobody waits for")
        logging.getLogger("dsp_deploy.io").warning("a warning")
        return []

    monkeypatch.setattr("dsp_deploy.compress.ops.table", noisy_table)  # what `ops` calls
    result = run_cli("ops")
    assert result.code == 0
    assert "pi4-emulated: building the sysroot" in result.stderr
    assert "a warning" in result.stderr and "nobody waits" not in result.stderr
    assert not logging.getLogger("dsp_deploy").handlers  # removed after the command
