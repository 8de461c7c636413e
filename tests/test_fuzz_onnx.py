"""Fuzzing the commands with mutated ONNX models (issue 7, item 2): a seeded CI sample.

The full run is ``benchmarks/fuzz_onnx.py --cases 1000`` (forked children, timeouts, and
unvalidated onnxruntime beside it); its results showed no crash or hang once models
pass validation, so this sample runs the commands in-process and checks the same
contract (``fuzz_runs.problems``). Both take the cases and the contract from
``testkit/`` (``fuzz_cases``, ``fuzz_runs``); neither imports the other. Contract: exit
0/1/2, on failure one ``error:`` line naming an input file, no traceback, nothing left
behind, inputs unchanged. ``FUZZ_SEED`` picks another sample; a failure prints the seed
and case so that it replays exactly.

The regressions the fuzzer found are pinned below as plain tests.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import time
from pathlib import Path

import fuzz_cases
import fuzz_runs
import onnx
import onnx_graphs
import onnxruntime as ort
import pytest
from onnx import helper

from dsp_deploy import io
from dsp_deploy.errors import ModelError

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("FUZZ_SEED", "7"))
CASES = 20


@pytest.fixture(scope="module")
def sources():
    return fuzz_cases.sources()


@pytest.fixture
def in_process(capfd: pytest.CaptureFixture[str]):
    """A ``fuzz_runs.Runner`` calling the CLI here; fd-level capture sees onnxruntime's logs."""
    from dsp_deploy.cli import main

    def run(argv: list[str], folder: Path):
        capfd.readouterr()
        start = time.perf_counter()
        code = main(argv)
        out, err = capfd.readouterr()
        return fuzz_runs.Run(argv[0], code, None, False, out, err, time.perf_counter() - start)

    return run


@pytest.mark.parametrize("index", range(CASES))
def test_fuzz_sample(sources, in_process, index: int) -> None:
    record = fuzz_runs.run_case(sources, SEED, index, bench_share=0.0, raw=False, runner=in_process)
    assert not record["problems"], (
        f"FUZZ_SEED={SEED} case {index} ({record['source']}: {record['mutations']}): "
        f"{record['problems']}"
    )


def test_cases_replay_exactly_from_seed_and_index(sources) -> None:
    first = [fuzz_cases.make_case(sources, SEED, i)[0] for i in range(5)]
    again = [fuzz_cases.make_case(sources, SEED, i)[0] for i in range(5)]
    assert first == again
    assert len({c.model for c in first}) == 5  # and the cases differ


def test_the_sample_covers_valid_and_invalid_mutants(sources) -> None:
    # A sample where every mutant is rejected at load would never reach onnxruntime.
    outcomes = set()
    for index in range(CASES):
        case, _ = fuzz_cases.make_case(sources, SEED, index)
        try:
            io.load_model(_write(case.model))
            outcomes.add("valid")
        except ModelError:
            outcomes.add("refused")
    assert outcomes == {"valid", "refused"}


def _write(data: bytes) -> Path:
    import tempfile

    fd, name = tempfile.mkstemp(suffix=".onnx")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def test_the_harness_reports_a_crash_a_traceback_and_a_second_line() -> None:
    pid = os.fork()
    if pid == 0:
        faulthandler.disable()  # the crash is the point: no dump on stderr
        os.kill(os.getpid(), signal.SIGSEGV)
    code, sig, timed_out = fuzz_runs.wait_child(pid, timeout=30)
    assert (code, sig, timed_out) == (None, signal.SIGSEGV, False)
    crashed = fuzz_runs.Run("inspect", None, sig, False, "", "", 0.0)
    assert fuzz_runs.problems(crashed, []) == ["crash: killed by SIGSEGV"]
    noisy = fuzz_runs.Run("inspect", 2, None, False, "", "error: m.onnx bad\nTraceback ...\n", 0.0)
    found = fuzz_runs.problems(noisy, [Path("m.onnx")])
    assert "traceback on stderr" in found
    assert any("not one 'error:' line" in p for p in found)


# --- regressions the fuzzer found --------------------------------------------------------
# onnx's checker and shape inference accept each of these; onnxruntime refuses them when
# it builds the kernel, which surfaced as a traceback in compress and a stray onnxruntime
# log line in eval. Validation now refuses them first, with a message naming the node.


def _conv_edit(name: str, value) -> onnx.ModelProto:
    model = onnx_graphs.chain()
    conv = model.graph.node[0]
    fuzz_cases.set_attr(conv, helper.make_attribute(name, value))
    return model


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_conv_edit("auto_pad", "SAME_UPPER"), "has both auto_pad=SAME_UPPER and pads"),
        (_conv_edit("group", 0), "has group=0; expected a whole number >= 1"),
        (_conv_edit("group", 3), "group=3 with 1 input channels and weights of shape"),
    ],
    ids=["auto_pad-and-pads", "group-0", "group-mismatch"],
)
def test_what_onnxruntime_refuses_is_refused_first(
    tmp_path: Path, model: onnx.ModelProto, message: str
) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    onnx.checker.check_model(model, full_check=True)  # onnx alone lets it through
    with pytest.raises(Exception, match="ONNXRuntimeError"):  # onnxruntime: error, not crash
        _open_and_run(path)
    with pytest.raises(ModelError, match=message) as info:
        io.load_model(path)
    assert str(path) in str(info.value)


def _open_and_run(path: Path) -> None:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": onnx_graphs.inputs(2)})


def test_custom_domain_ops_are_refused_with_the_op_and_domain(tmp_path: Path) -> None:
    model = onnx_graphs.chain()
    model.graph.node[1].domain = "custom.x"
    model.opset_import.append(helper.make_opsetid("custom.x", 1))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match="uses op 'Relu' of domain 'custom.x'; onnxruntime"):
        io.load_model(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: setattr(m.opset_import[0], "version", 1000), "opset 1000; expected 7 to"),
        # Found by fuzzing: onnx checks opset 5 fine; onnxruntime has no Relu-1 kernel.
        (lambda m: setattr(m.opset_import[0], "version", 5), "opset 5; expected 7 to"),
        # Found by fuzzing: no onnx schema, so nothing vetted it; onnxruntime refused it.
        (lambda m: setattr(m.graph.node[1], "domain", "com.microsoft"), "domain 'com.micro"),
    ],
    ids=["opset-1000", "opset-5", "com.microsoft"],
)
def test_opsets_and_domains_onnxruntime_cannot_run_are_refused(
    tmp_path: Path, edit, message: str
) -> None:
    model = onnx_graphs.chain()
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    edit(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match=message):
        io.load_model(path)


def test_the_shipped_models_pass_validation() -> None:
    for path in sorted((ROOT / "models").glob("*.onnx")):
        io.load_model(path)


@pytest.mark.parametrize("value", ["-3", "0", "long", "1.5", "1\u00b50", "\u00b2"])
def test_size_hints_in_metadata_are_checked_at_load(tmp_path: Path, run_cli, value: str) -> None:
    # Found by fuzzing: inspect's error about dsp.input_length named no file.
    model = onnx_graphs.chain()
    helper.set_model_props(model, {"dsp.input_length": value})
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    result = run_cli("inspect", path)
    assert result.code == 2
    assert result.stderr == (
        f"error: model file {path}: dsp.input_length must be a whole number ≥ 1; found {value!r}\n"
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path: Path, value: float) -> None:
    # Found by fuzzing: NaN weights reached compress's statistics as RuntimeWarnings.
    model = onnx_graphs.chain()
    weights = onnx.numpy_helper.to_array(model.graph.initializer[0]).copy()
    weights.flat[3] = value
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(weights, "c1_w"))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match="tensor 'c1_w' holds 1 NaN/inf values"):
        io.load_model(path)


def test_metadata_that_is_not_utf8_is_a_model_error(tmp_path: Path) -> None:
    # Found by fuzzing: a flipped bit in a metadata value makes protobuf return bytes,
    # and validation itself raised TypeError.
    model = onnx_graphs.chain()
    helper.set_model_props(model, {"dsp.input_length": "150"})
    data = model.SerializeToString().replace(b"150", b"1\xb50")
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelError, match=r"dsp.input_length must be a whole number ≥ 1; found b'1"):
        io.load_model(path)


def test_an_initializer_with_more_data_than_its_dims_is_a_model_error(tmp_path: Path) -> None:
    # Found by fuzzing: dims [] over 4 floats passed the checker and validation raised.
    model = onnx_graphs.residual()
    bias = next(t for t in model.graph.initializer if t.name == "c1_b")
    del bias.dims[:]
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelError, match=r"tensor 'c1_b' holds data that does not fit its dims"):
        io.load_model(path)
