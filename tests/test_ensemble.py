"""``dsp_deploy.ensemble.combine`` and ``dsp-deploy ensemble``: members → mean probabilities.

Oracles: each member run alone on onnxruntime (and ``onnx.reference`` on a tiny case), and
``train --arch litetime`` against five ``train --arch lite`` runs combined here.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_graphs as og
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from dsp_deploy import __version__, metadata
from dsp_deploy.ensemble import build, combine, ensemble_arch, merge_training, verify
from dsp_deploy.errors import InputError
from dsp_deploy.inference import run_model

ATOL = 1e-6


def member(
    width: int = 3,
    *,
    seed: int = 0,
    channels: int = 1,
    length: int | str = og.L,
    classes: int = 2,
    batch: int | str = "N",
    logits: bool = False,
    elem: str = "float",
    opset: int = 17,
    meta: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Conv(width, k3) → Relu → GAP → Flatten → Gemm(classes) [→ Softmax], checked."""
    w = og.Weights(seed)
    w.conv("c", width, channels, 3)
    w.dense("fc", width, classes)
    out = "logits" if logits else "probabilities"
    tail = "logits = Identity (z)" if logits else "probabilities = Softmax <axis = 1> (z)"
    text = f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    member ({elem}[{batch}, {channels}, {length}] x) => ({elem}[{batch}, {classes}] {out})
    {{
        a = Conv <pads = [1, 1]> (x, c_w, c_b)
        r = Relu (a)
        g = GlobalAveragePool (r)
        f = Flatten (g)
        z = Gemm <transB = 1> (f, fc_w, fc_b)
        {tail}
    }}
    """
    model = onnx.parser.parse_model(text)
    dtype = np.float64 if elem == "double" else np.float32
    model.graph.initializer.extend(
        numpy_helper.from_array(np.asarray(v, dtype=dtype), k) for k, v in w.values.items()
    )
    meta = dict(meta or {})
    if logits:
        meta.setdefault(metadata.OUTPUT, "logits")
    metadata.write_metadata(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def probabilities(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """A member's probabilities on onnxruntime, in float64 (softmax of logits members)."""
    name = next(v.name for v in model.graph.input)
    out = run_model(model, {name: x})[0].astype(np.float64)
    if metadata.read_metadata(model).get(metadata.OUTPUT) == "logits":
        e = np.exp(out - out.max(axis=1, keepdims=True))
        out = e / e.sum(axis=1, keepdims=True)
    return out


def mean_probabilities(members: Sequence[onnx.ModelProto], x: np.ndarray) -> np.ndarray:
    return np.mean([probabilities(m, x) for m in members], axis=0)


def meta_of(model: onnx.ModelProto) -> dict[str, str]:
    return metadata.read_metadata(model)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- outputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "members",
    [
        pytest.param(lambda: [og.chain(), member(7, seed=3)], id="two"),
        pytest.param(lambda: [og.chain(), og.lite_like(seed=1), member(5, seed=2)], id="three"),
    ],
)
def test_output_is_the_mean_of_the_members(members) -> None:
    models = members()
    ensemble = combine(models)
    onnx.checker.check_model(ensemble, full_check=True)
    x = og.inputs(n=40, seed=11)  # not the inputs verify() uses
    got = run_model(ensemble, {"x": x})[0]
    assert got.dtype == np.float32 and got.shape == (40, 2)
    np.testing.assert_allclose(got, mean_probabilities(models, x), rtol=0, atol=ATOL)
    # the members really differ, so a wrong weighting or a dropped member would show
    first, second = (probabilities(m, x) for m in models[:2])
    assert np.abs(first - second).max() > 1e-2


def test_reference_evaluator_agrees_on_a_tiny_case() -> None:
    models = [member(2, seed=4), member(3, seed=5, logits=True)]
    ensemble = combine(models)
    x = og.inputs(n=3, seed=2)
    expected = []
    for m in models:
        (out,) = ReferenceEvaluator(m).run(None, {"x": x})
        if m.graph.output[0].name == "logits":
            out = np.exp(out) / np.exp(out).sum(axis=1, keepdims=True)
        expected.append(out.astype(np.float64))
    (got,) = ReferenceEvaluator(ensemble).run(None, {"x": x})
    np.testing.assert_allclose(got, np.mean(expected, axis=0), rtol=0, atol=ATOL)
    np.testing.assert_allclose(run_model(ensemble, {"x": x})[0], got, rtol=0, atol=ATOL)


def test_logits_members_get_a_softmax() -> None:
    logit_member, prob_member = member(4, seed=6, logits=True), member(3, seed=7)
    built = build([logit_member, prob_member])
    assert [(m.prefix, m.nodes, m.initializers, m.softmax) for m in built.report.members] == [
        ("m0/", 6, 4, True),
        ("m1/", 6, 4, False),
    ]
    ensemble = built.model
    x = og.inputs(n=32, seed=3)
    got = run_model(ensemble, {"x": x})[0]
    np.testing.assert_allclose(got, mean_probabilities([logit_member, prob_member], x), atol=ATOL)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=ATOL)
    raw = run_model(logit_member, {"x": x})[0]
    naive = (raw + run_model(prob_member, {"x": x})[0]) / 2  # logits averaged as they are
    assert np.abs(got - naive).max() > 1e-2
    assert meta_of(ensemble)[metadata.OUTPUT] == "probabilities"


def test_dynamic_batch_is_kept() -> None:
    ensemble = combine([og.chain(), member(6, seed=1)])
    for value in (ensemble.graph.input[0], ensemble.graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param == "N"
    for n in (1, 7):
        x = og.inputs(n=n, seed=n)
        assert run_model(ensemble, {"x": x})[0].shape == (n, 2)


def test_members_with_one_fixed_batch() -> None:
    models = [member(3, seed=1, batch=4), member(5, seed=2, batch=4, logits=True)]
    ensemble = combine(models)
    assert ensemble.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    assert verify(models, ensemble).max_abs_diff <= ATOL  # runs at the fixed batch, not 32


def test_names_are_prefixed_per_member_and_io_names_are_the_first_members() -> None:
    # Two copies of one builder: every internal name collides unless prefixed.
    first = member(3, seed=1, logits=True)
    first.graph.input[0].name = "series"
    for node in first.graph.node:
        node.input[:] = ["series" if n == "x" else n for n in node.input]
    ensemble = combine([first, member(3, seed=2, logits=True)])
    assert [v.name for v in ensemble.graph.input] == ["series"]
    assert [v.name for v in ensemble.graph.output] == ["logits"]
    inits = [t.name for t in ensemble.graph.initializer]
    assert sorted(inits) == sorted(
        f"m{i}/{n}" for i in (0, 1) for n in ("c_w", "c_b", "fc_w", "fc_b")
    )
    outputs = [o for n in ensemble.graph.node for o in n.output]
    assert len(outputs) == len(set(outputs))
    assert all(o.startswith(("m0/", "m1/")) for o in outputs if o != "logits")
    x = og.inputs(n=8, seed=4)
    got = run_model(ensemble, {"series": x})[0]
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=ATOL)


def test_members_are_not_modified() -> None:
    models = [member(3, seed=1, opset=13, logits=True), og.lite_like(seed=2), og.chain()]
    before = [m.SerializeToString() for m in models]
    combine(models)
    assert [m.SerializeToString() for m in models] == before


def test_lower_opset_member_is_converted_up() -> None:
    old, new = member(3, seed=1, opset=13), member(4, seed=2, opset=17)
    ensemble = combine([old, new])
    assert {o.domain: o.version for o in ensemble.opset_import} == {"": 17}
    x = og.inputs(n=16, seed=5)
    np.testing.assert_allclose(
        run_model(ensemble, {"x": x})[0], mean_probabilities([old, new], x), atol=ATOL
    )


def test_static_dims_of_any_member_make_the_ensemble_input_static() -> None:
    dynamic = member(3, seed=1, length="L", meta={metadata.INPUT_LENGTH: str(og.L)})
    ensemble = combine([dynamic, member(3, seed=2)])
    assert ensemble.graph.input[0].type.tensor_type.shape.dim[2].dim_value == og.L


# --- metadata ----------------------------------------------------------------------------


def _trained(arch: str, seeds: list[int], **extra: object) -> dict[str, str]:
    training = {"epochs": 3, "sparsity": 1e-5, "seeds": seeds, "kept_channels": None}
    return {
        metadata.CLASSES: '["a", "b"]',
        metadata.INPUT_LENGTH: str(og.L),
        metadata.INPUT_CHANNELS: "1",
        metadata.NORMALISATION: metadata.ZNORM,
        metadata.OUTPUT: "probabilities",
        metadata.ARCH: arch,
        metadata.DATASET: "Toy",
        metadata.TRAINING: json.dumps(training),
        metadata.VERSION: "0.0.1",
        **{k: str(v) for k, v in extra.items()},
    }


def test_metadata_of_an_ensemble_of_lite_members() -> None:
    compress = {"criterion": "dead", "params": [10, 8]}
    first = _trained("lite", [5], owner="lab")
    second = _trained("lite", [6]) | {metadata.COMPRESS: json.dumps(compress)}
    ensemble = combine([member(3, seed=1, meta=first), member(4, seed=2, meta=second)])
    meta = meta_of(ensemble)
    assert meta["owner"] == "lab"  # the first member's other entries are the base
    assert meta[metadata.ARCH] == "litetime"
    assert meta[metadata.OUTPUT] == "probabilities"
    assert meta[metadata.DATASET] == "Toy"
    assert meta[metadata.CLASSES] == '["a", "b"]' and meta[metadata.INPUT_LENGTH] == str(og.L)
    assert meta[metadata.VERSION] == __version__
    assert metadata.COMPRESS not in meta  # the ensemble itself was not compressed
    training = json.loads(meta[metadata.TRAINING])
    assert training["seeds"] == [5, 6] and training["epochs"] == 3
    assert training["kept_channels"] is None
    assert training["members"][0] == {
        "arch": "lite",
        "training": json.loads(first[metadata.TRAINING]),
    }
    assert training["members"][1]["compress"] == compress


@pytest.mark.parametrize(
    ("archs", "expected"),
    [
        (["lite", "lite", "lite"], "litetime"),
        (["inception", "inception"], "inceptiontime"),
        (["lite", "inception"], "ensemble"),
        (["litetime", "litetime"], "ensemble"),
        (["lite", None], "ensemble"),
    ],
)
def test_ensemble_arch(archs, expected) -> None:
    assert ensemble_arch(archs) == expected


def test_differing_settings_stay_in_the_member_records() -> None:
    a = {"training": {"epochs": 3, "seeds": [1], "sparsity": 0.0}}
    b = {"training": {"epochs": 9, "seeds": [2, 3], "sparsity": 0.0}}
    merged = merge_training([a, b])
    assert merged == {"seeds": [1, 2, 3], "sparsity": 0.0, "members": [a, b]}


def test_dataset_is_dropped_when_members_disagree() -> None:
    other = _trained("inception", [2]) | {metadata.DATASET: "Other"}
    ensemble = combine(
        [member(3, seed=1, meta=_trained("inception", [1])), member(3, seed=2, meta=other)]
    )
    meta = meta_of(ensemble)
    assert metadata.DATASET not in meta and meta[metadata.ARCH] == "inceptiontime"


# --- refusals ----------------------------------------------------------------------------


def _two_inputs() -> onnx.ModelProto:
    model = member(3)
    model.graph.input.append(onnx.helper.make_tensor_value_info("extra", 1, ["N", 1, og.L]))
    return model


def _with_subgraph() -> onnx.ModelProto:
    model = member(3)
    branch = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["z"], ["branch_out"])],
        "branch",
        [],
        [onnx.helper.make_tensor_value_info("branch_out", 1, None)],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    model.graph.initializer.append(cond)
    model.graph.node[-1].input[0] = "chosen"
    model.graph.node.insert(
        len(model.graph.node) - 1,
        onnx.helper.make_node(
            "If", ["cond"], ["chosen"], name="pick", then_branch=branch, else_branch=branch
        ),
    )
    return model


def _rank2_input() -> onnx.ModelProto:
    model = member(3)
    del model.graph.input[0].type.tensor_type.shape.dim[2]
    return model


def _no_output_kind() -> onnx.ModelProto:
    model = member(3, logits=True)
    del model.metadata_props[:]
    return model


def test_members_without_metadata_give_one_warning_naming_them(caplog) -> None:
    members = [_no_output_kind(), member(4, seed=1), _no_output_kind()]
    with caplog.at_level("WARNING", logger="dsp_deploy"):
        combine(members, labels=["a.onnx", "b.onnx", "c.onnx"])
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    text = record.getMessage()
    assert text.startswith("3 of 3 members have no metadata") and "a.onnx, c.onnx: no" in text
    assert "b.onnx: no dsp.normalisation, dsp.classes (" in text


def _other_domain(version: int) -> onnx.ModelProto:
    model = member(3)
    model.opset_import.append(onnx.helper.make_opsetid("ai.onnx.ml", version))
    return model


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (lambda: member(3, classes=3), "class count is 3 but member 0 has 2"),
        (lambda: member(3, channels=2), "input channels is 2 but member 0 has 1"),
        (lambda: member(3, length=40), "input length is 40 but member 0 has 32"),
        (lambda: member(3, elem="double"), "input element type is TensorProto.DOUBLE"),
        (lambda: member(3, batch=1), "batch size is 1 but member 0 has dynamic"),
        (
            lambda: member(3, meta={metadata.NORMALISATION: metadata.ZNORM}),
            "dsp.normalisation is znorm-per-series but member 0 has none",
        ),
        (
            lambda: member(3, meta={metadata.CLASSES: '["a", "c"]'}),
            'dsp.classes is ["a", "c"] but member 0 has ["a", "b"]',
        ),
        (
            lambda: member(3, meta={metadata.INPUT_LENGTH: "40"}),  # its own input has 32
            "dsp.input_length says 40; the input's dim is 32",
        ),
        (lambda: member(3, meta={metadata.OUTPUT: "scores"}), "dsp.output is 'scores'"),
        (_two_inputs, "has 2 inputs and 1 outputs"),
        (_rank2_input, "has shape [N, 1]; expected [batch, channels, length]"),
        (_with_subgraph, "node 'pick' (If) holds a subgraph"),
        (lambda: _other_domain(4), "imports domain 'ai.onnx.ml' version 4 but member 0"),
    ],
)
def test_members_that_disagree_are_refused(second, message) -> None:
    first = member(
        3,
        seed=9,
        meta={metadata.CLASSES: '["a", "b"]', metadata.INPUT_LENGTH: str(og.L)},
    )
    if "ai.onnx.ml" in message:
        first = _other_domain(3)
    with pytest.raises(InputError) as info:
        combine([first, second()])
    assert str(info.value).startswith("member 1: ")
    assert message in str(info.value)


def test_labels_name_the_files_in_errors() -> None:
    with pytest.raises(InputError, match=r"^b\.onnx: class count is 3 but a\.onnx has 2"):
        combine([member(3), member(3, classes=3)], labels=["a.onnx", "b.onnx"])


def test_one_member_is_refused() -> None:
    with pytest.raises(InputError, match="at least 2 member models; got 1"):
        combine([og.chain()])


def test_verify_catches_a_wrong_ensemble() -> None:
    models = [member(3, seed=1), member(4, seed=2, logits=True)]
    ensemble = combine(models)
    assert verify(models, ensemble).passed
    broken = onnx.ModelProto()
    broken.CopyFrom(ensemble)
    bias = next(t for t in broken.graph.initializer if t.name == "m1/fc_b")
    bias.CopyFrom(
        numpy_helper.from_array(
            (numpy_helper.to_array(bias) + [0.5, -0.5]).astype(np.float32), bias.name
        )
    )
    check = verify(models, broken)
    assert not check.passed and check.max_abs_diff > 0.01
    assert "differs from the mean" in check.failure


# --- command line ------------------------------------------------------------------------


@pytest.fixture
def member_files(tmp_path: Path) -> list[Path]:
    meta = {metadata.CLASSES: '["a", "b"]', metadata.ARCH: "lite"}
    paths = []
    for i, model in enumerate(
        [member(3, seed=1, meta=meta), member(6, seed=2, meta=meta), og.lite_like(seed=3)]
    ):
        path = tmp_path / f"m{i}.onnx"
        onnx.save(model, path)
        paths.append(path)
    return paths


def test_cli_writes_a_verified_ensemble(run_cli, member_files, tmp_path) -> None:
    out = tmp_path / "ens.onnx"
    result = run_cli("ensemble", *member_files, "-o", out, "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["output"] == str(out) and summary["classes"] == 2
    assert [m["path"] for m in summary["members"]] == [str(p) for p in member_files]
    assert summary["params"] == sum(m["params"] for m in summary["members"]) > 0
    assert summary["macs"] == sum(m["macs"] for m in summary["members"]) > 0
    assert 0 <= summary["max_abs_diff"] <= ATOL
    from dsp_deploy import io

    ensemble = io.load_model(out)
    members = [onnx.load(p) for p in member_files]
    x = og.inputs(n=20, seed=8)
    np.testing.assert_allclose(
        run_model(ensemble, {"x": x})[0], mean_probabilities(members, x), atol=ATOL
    )
    assert meta_of(ensemble)[metadata.CLASSES] == '["a", "b"]'


def test_cli_table(run_cli, member_files, tmp_path) -> None:
    result = run_cli("ensemble", *member_files[:2], "-o", tmp_path / "e.onnx")
    assert result.code == 0, result.stderr
    assert str(member_files[1]) in result.stdout and "total" in result.stdout
    assert "verified on 32 random inputs" in result.stdout


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("one", "at least 2 member models; got 1"),
        ("missing", "missing.onnx"),
        ("mismatch", "input length is 40 but"),
        ("same", "is the input file"),
        ("no-folder", "does not exist"),
    ],
)
def test_cli_bad_input(run_cli, member_files, tmp_path, case, message) -> None:
    out = tmp_path / "ens.onnx"
    members = [str(p) for p in member_files[:2]]
    if case == "one":
        members = members[:1]
    elif case == "missing":
        members.append(str(tmp_path / "missing.onnx"))
    elif case == "mismatch":
        onnx.save(member(3, length=40), tmp_path / "long.onnx")
        members.append(str(tmp_path / "long.onnx"))
    elif case == "same":
        out = member_files[1]
    elif case == "no-folder":
        out = tmp_path / "nowhere" / "ens.onnx"
    before = {p: digest(p) for p in member_files}
    result = run_cli("ensemble", *members, "-o", out)
    assert result.code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert result.stderr.startswith("error: ")
    assert {p: digest(p) for p in member_files} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in member_files] + (["long.onnx"] if case == "mismatch" else [])
    )


def test_cli_runs_without_the_training_stack(member_files, tmp_path) -> None:
    # A deploy-side command: combining members must not import torch, aeon or ray.
    out = tmp_path / "ens.onnx"
    args = [*map(str, member_files[:2]), "-o", str(out), "--json"]
    code = (
        "import sys, json\n"
        "from dsp_deploy.cli import main\n"
        f"code = main(['ensemble', *{args!r}])\n"
        "heavy = sorted(m for m in ('torch', 'aeon', 'ray') if m in sys.modules)\n"
        "print(json.dumps([code, heavy]))\n"
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(ran.stdout.strip().splitlines()[-1]) == [0, []], ran.stderr
    assert out.is_file()


def test_compress_accepts_an_assembled_ensemble(run_cli, tmp_path) -> None:
    # Dead channels planted in two members: chain (1 of 4, 1 of 3), residual (1 of 4).
    members = [og.chain(dead1=(1,), dead2=(2,)), member(5, seed=4), og.residual(dead=(2,))]
    path, pruned, calib = tmp_path / "ens.onnx", tmp_path / "ens.pruned.onnx", tmp_path / "c.npz"
    onnx.save(combine(members), path)
    np.savez(calib, x=og.inputs(n=64, seed=21))
    result = run_cli("compress", path, "--calib", calib, "-o", pruned, "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verified"] and report["changed"]
    removed = {k: v for k, v in report["channels"].items() if v[1] < v[0]}
    assert removed and all(k.startswith(("m0/", "m2/")) for k in removed), removed
    assert report["params"][1] < report["params"][0]
    x = og.inputs(n=32, seed=22)  # the planted channels are dead on any input
    np.testing.assert_allclose(
        run_model(onnx.load(pruned), {"x": x})[0], mean_probabilities(members, x), atol=ATOL
    )


# --- equivalence with training -----------------------------------------------------------


@pytest.mark.slow
def test_combined_lite_members_equal_litetime(run_cli, tmp_path) -> None:
    """``train --arch litetime --seed S`` = ``combine`` of ``train --arch lite --seed S+i``.

    The members come out bit-identical; the ensembles differ only in float32 summation
    order (our ``Mean`` against the exporter's ``Unsqueeze``/``Concat``/``ReduceMean``):
    measured 6e-8, so the tolerance is about one float32 ulp at 1.0.
    """
    from dsp_deploy.data import load_train_test

    seed = 7
    common = ["--dataset", "GunPoint", "--epochs", "1", "--quiet", "--threads", "1", "--json"]
    litetime = tmp_path / "litetime.onnx"
    result = run_cli("train", "--arch", "litetime", "--seed", seed, "-o", litetime, *common)
    assert result.code == 0, result.stderr
    lites = [tmp_path / f"lite{i}.onnx" for i in range(5)]
    for i, path in enumerate(lites):
        result = run_cli("train", "--arch", "lite", "--seed", seed + i, "-o", path, *common)
        assert result.code == 0, result.stderr
    combined = tmp_path / "combined.onnx"
    result = run_cli("ensemble", *lites, "-o", combined, "--json")
    assert result.code == 0, result.stderr

    _, test = load_train_test("GunPoint")
    x = test.X.astype(np.float32)
    want = run_model(onnx.load(litetime), {"x": x})[0]
    got = run_model(onnx.load(combined), {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1.5e-7)
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()

    ours, theirs = meta_of(onnx.load(combined)), meta_of(onnx.load(litetime))
    assert ours[metadata.ARCH] == theirs[metadata.ARCH] == "litetime"
    training = json.loads(ours[metadata.TRAINING])
    assert [m["training"]["seeds"] for m in training.pop("members")] == [
        [seed + i] for i in range(5)
    ]
    assert training == json.loads(theirs[metadata.TRAINING])
