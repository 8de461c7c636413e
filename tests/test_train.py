"""DSP loss, training loop, the paper's protocol, and the ``train`` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dsp_deploy.archs import get_arch  # noqa: E402
from dsp_deploy.errors import InputError  # noqa: E402
from dsp_deploy.nets.lite import Lite, LiteConfig  # noqa: E402
from dsp_deploy.train import protocol as dsp  # noqa: E402
from dsp_deploy.train.loop import TrainConfig, fit, resolve_device, seed_torch  # noqa: E402
from dsp_deploy.train.pipeline import TrainRequest, train  # noqa: E402
from dsp_deploy.train.sparsity import dsp_penalty, group_l21  # noqa: E402

pytestmark = pytest.mark.torch

TINY = LiteConfig(2, (2, 2, 2), (3, 3))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _toy(n: int = 24, length: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two separable classes: a bump early or late in the series."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(0, 0.3, (n, 1, length)).astype(np.float32)
    for i, label in enumerate(y):
        start = 4 if label == 0 else length - 12
        X[i, 0, start : start + 8] += 2.0
    return X, y.astype(np.int64)


def test_group_l21_by_hand() -> None:
    f = torch.tensor([[[3.0, 4.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 2.0]]])  # (B=2, C=2, T=2)
    assert float(group_l21(f)) == pytest.approx(5 + 0 + 1 + 2)
    g = torch.tensor([[[6.0, 8.0]]])
    value = dsp_penalty([f, g], [4.0, 2.0], 1e-5)
    assert float(value) == pytest.approx(1e-5 * (4 * 8 + 2 * 10))


def test_penalty_gradient_is_finite_at_dead_channels() -> None:
    f = torch.zeros(2, 3, 5, requires_grad=True)
    dsp_penalty([f], [1.0], 1e-3).backward()
    assert torch.equal(f.grad, torch.zeros_like(f))


def test_penalty_gradient_matches_autograd_norm() -> None:
    f = torch.relu(torch.randn(4, 7, 9, dtype=torch.float64))
    f[:, 2] = 0.0  # a dead channel
    f[1, 5] = 0.0
    view = f[:, 1:]  # taps are often channel slices of a larger map
    leaf = view.clone().requires_grad_()
    (grad,) = torch.autograd.grad(group_l21(leaf), leaf)
    ref = view.clone().requires_grad_()
    (expected,) = torch.autograd.grad(torch.linalg.vector_norm(ref, dim=-1).sum(), ref)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)
    assert float(group_l21(view)) == pytest.approx(
        float(torch.linalg.vector_norm(view, dim=-1).sum())
    )
    assert torch.autograd.gradcheck(group_l21, (f[:, 3:5].clone() + 0.1).requires_grad_())


def test_sparsity_zero_is_plain_cross_entropy() -> None:
    X, y = _toy()
    seed_torch(0)
    net = Lite(TINY)
    result = fit(net, X, y, TrainConfig(epochs=2, batch_size=10, seed=0))
    for record in result.history:
        assert record.sparsity == 0.0 and record.loss == record.ce
    assert dsp_penalty([torch.ones(1, 1, 1)], [1.0], 0.0).requires_grad is False


def _train_tiny(seed: int, sparsity: float = 1e-3) -> tuple[Lite, object]:
    X, y = _toy()
    seed_torch(seed)
    net = Lite(TINY)
    config = TrainConfig(
        epochs=3, batch_size=10, sparsity=sparsity, layer_weights=(4, 2, 1), seed=seed
    )
    return net, fit(net, X, y, config)


def test_fit_history_schedule_and_best_weights() -> None:
    net, result = _train_tiny(1)
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert all(r.sparsity > 0 and math.isclose(r.loss, r.ce + r.sparsity) for r in result.history)
    assert all(r.lr == 1e-3 for r in result.history)
    assert result.best_loss == min(r.loss for r in result.history)
    assert result.history[result.best_epoch - 1].loss == result.best_loss
    assert not net.training


def test_fit_is_deterministic_for_a_seed() -> None:
    a, ra = _train_tiny(5)
    b, rb = _train_tiny(5)
    c, rc = _train_tiny(6)
    assert ra.history == rb.history
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert ra.history != rc.history


NO_CUDA = not torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "meta", ""])
def test_resolve_device_rejects_unknown_names(name: str) -> None:
    with pytest.raises(InputError, match="device"):
        resolve_device(name)


@pytest.mark.skipif(not NO_CUDA, reason="checks a machine without CUDA")
def test_resolve_device_without_cuda() -> None:
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(InputError, match="CPU-only build|no visible GPU"):
        resolve_device("cuda")


@needs_cuda
@pytest.mark.parametrize("sparsity", [0.0, 1e-3])
def test_cuda_training_follows_the_cpu_run_and_returns_the_model_on_the_cpu(
    sparsity: float,
) -> None:
    """Same seed, same batches (the shuffles come from a CPU generator): the CUDA run's
    losses stay within TF32 convolution rounding of the CPU run's."""
    X, y = _toy()
    runs = {}
    for device in ("cpu", "cuda"):
        seed_torch(2)
        net = Lite(TINY)
        config = TrainConfig(
            epochs=5,
            batch_size=10,
            sparsity=sparsity,
            layer_weights=(4, 2, 1),
            seed=2,
            device=device,
        )
        runs[device] = net, fit(net, X, y, config)
    (cpu_net, cpu), (gpu_net, gpu) = runs["cpu"], runs["cuda"]
    assert {p.device.type for p in gpu_net.state_dict().values()} == {"cpu"}
    assert not gpu_net.training
    np.testing.assert_allclose(
        [r.loss for r in gpu.history], [r.loss for r in cpu.history], rtol=2e-2
    )
    with torch.no_grad():
        probs = [torch.softmax(n(torch.from_numpy(X)), -1) for n in (gpu_net, cpu_net)]
    np.testing.assert_allclose(*probs, atol=0.05)


def test_fit_rejects_bad_config() -> None:
    with pytest.raises(InputError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(InputError, match="layer weights"):
        fit(Lite(TINY), *_toy(), TrainConfig(epochs=1, sparsity=1e-5, layer_weights=(1.0,)))


def test_important_threshold_by_hand() -> None:
    # series 0: energies 3, 0, 1 -> threshold 4 / (2 + 1) = 1.33 -> only channel 0
    # series 1: energies 1, 1, 1 -> threshold 3 / 4 = 0.75 -> all three
    energy = torch.tensor([[3.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    assert dsp.important(energy).tolist() == [[True, False, False], [True, True, True]]


def test_keep_indices_rule_and_safeguards() -> None:
    analysis = dsp.ActivationAnalysis(
        (
            dsp.TapStats("a", (5, 1, 0, 2, 0, 0), dead=(4, 5)),
            dsp.TapStats("b", (0, 0, 1), dead=(0, 1)),
        ),
        n_series=5,
    )
    groups = (((0, 2), (2, 4), (4, 6)), ((0, 3),))
    # n > 1 keeps 0 and 3; group (4, 6) is empty -> its best (first on ties) is kept;
    # tap b keeps nothing -> its best channel, 2.
    assert dsp.keep_indices(analysis, 1, groups) == ((0, 3, 4), (2,))
    assert dsp.keep_indices(analysis, 0, groups) == ((0, 1, 3, 4), (2,))
    assert analysis.dead_counts == (2, 2)


def test_analysis_counts_dead_channels() -> None:
    X, _ = _toy(n=6)
    seed_torch(0)
    net = Lite(TINY).eval()
    with torch.no_grad():
        net.bn2.weight[1] = 0.0
        net.bn2.bias[1] = -1.0  # channel 1 of DWSC-1 is zero after the ReLU everywhere
    analysis = dsp.analyse(net, X, batch_size=4)
    assert analysis.n_series == 6
    assert analysis.channel_counts == (6, 3, 3)
    assert 1 in analysis.taps[1].dead
    assert analysis.taps[1].counts[1] == 0
    assert all(0 <= c <= 6 for t in analysis.taps for c in t.counts)


@pytest.mark.parametrize("reinit", [None, 3])
def test_shrink_builds_a_smaller_working_net(reinit: int | None) -> None:
    net = Lite(LiteConfig(2))
    keep = ((0, 1, 40, 90), (3, 4), (7,))
    small = dsp.shrink(net, keep, reinit_seed=reinit)
    assert small.config.branch_widths == (2, 1, 1)
    assert small.config.dwsc_widths == (2, 1)
    assert small(torch.randn(2, 1, 20)).shape == (2, 2)
    copied = torch.equal(small.fc.weight, net.fc.weight[:, [7]])
    assert copied is (reinit is None)


def test_pipeline_protocol_retrain_shrinks() -> None:
    X, y = _toy(n=16)
    request = TrainRequest(
        get_arch("lite"), epochs=2, sparsity=1e-3, seed=0, batch_size=8, protocol="dsp-retrain"
    )
    outcome = train(request, X, y, 2)
    (member,) = outcome.members
    assert member.kept is not None and member.retrain is not None
    assert sum(member.kept) < 96 + 32 + 32
    assert member.params < 10_318
    assert [r.sparsity for r in member.retrain.history] == [0.0, 0.0]
    assert 0.0 <= outcome.train_accuracy <= 1.0


class _OneClass(torch.nn.Module):
    """Logits that always favour class 0, in any mode (a collapsed member)."""

    def forward(self, x):
        return torch.tensor([[5.0, 0.0]]).expand(len(x), 2)


def test_member_accuracy_warns_when_no_better_than_the_majority(caplog) -> None:
    from dsp_deploy.train.loop import TrainResult
    from dsp_deploy.train.pipeline import _member_accuracy

    X = np.zeros((10, 1, 8), np.float32)
    result = TrainResult((), best_epoch=3, best_loss=0.1, seconds=0.0)
    with caplog.at_level("WARNING", logger="dsp_deploy.train.pipeline"):
        balanced = _member_accuracy(_OneClass(), X, np.array([0, 1] * 5), 7, result)
    assert balanced == 0.5
    assert "seed 7 scores 0.500" in caplog.text and "majority class (0.500)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="dsp_deploy.train.pipeline"):
        mostly_zero = np.array([0] * 9 + [1])
        assert _member_accuracy(_OneClass(), X, mostly_zero, 7, result) == 0.9
    assert "majority class (0.900)" in caplog.text  # 0.9 is still no better than always 0


def test_member_accuracy_of_a_working_member_is_quiet(caplog) -> None:
    X, y = _toy(n=16)
    request = TrainRequest(get_arch("lite"), epochs=30, sparsity=0.0, seed=0, batch_size=8)
    with caplog.at_level("WARNING", logger="dsp_deploy.train.pipeline"):
        (member,) = train(request, X, y, 2).members
    assert member.train_accuracy > 0.5 and "majority" not in caplog.text


@pytest.mark.parametrize("protocol", ["dsp-retrain", "dsp-finetune"])
def test_pipeline_from_given_dsp_weights_matches_training_them(protocol: str) -> None:
    from dsp_deploy.train.loop import predict_proba

    X, y = _toy(n=16)
    spec = get_arch("lite")
    sparse = train(TrainRequest(spec, epochs=2, sparsity=1e-3, seed=0, batch_size=8), X, y, 2)
    state = sparse.model.net.state_dict()
    request = TrainRequest(spec, epochs=2, sparsity=1e-3, seed=0, batch_size=8, protocol=protocol)
    scratch = train(request, X, y, 2)
    given = train(request, X, y, 2, sparse_states=[state])
    (member,) = given.members
    assert member.train is None and scratch.members[0].train is not None
    assert member.kept == scratch.members[0].kept
    assert member.sparse_analysis == scratch.members[0].sparse_analysis
    np.testing.assert_array_equal(predict_proba(given.model, X), predict_proba(scratch.model, X))


def test_pipeline_refuses_dsp_weights_it_cannot_use() -> None:
    X, y = _toy(n=16)
    spec = get_arch("lite")
    state = spec.build(2).state_dict()
    with pytest.raises(InputError, match="need protocol dsp-retrain or dsp-finetune, not 'none'"):
        train(TrainRequest(spec, epochs=1), X, y, 2, sparse_states=[state])
    retrain = TrainRequest(spec, epochs=1, protocol="dsp-retrain")
    with pytest.raises(
        InputError, match="2 trained DSP states given; expected one per member of lite: 1"
    ):
        train(retrain, X, y, 2, sparse_states=[state, state])
    with pytest.raises(InputError, match="state of member 0 does not fit its net"):
        train(retrain, X, y, 2, sparse_states=[spec.build(3).state_dict()])


def test_pipeline_rejects_unknown_protocol() -> None:
    with pytest.raises(InputError, match="protocol"):
        TrainRequest(get_arch("lite"), protocol="magic")


# --- the command -------------------------------------------------------------------


@pytest.fixture
def toy_npz(tmp_path) -> str:
    X, y = _toy(n=20, length=24)
    Xt, yt = _toy(n=10, length=24, seed=1)
    path = tmp_path / "toy.npz"
    np.savez(path, X=X[:, 0], y=y, X_test=Xt[:, 0], y_test=yt)
    return str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "resnet"], "unknown arch"),
        (["--arch", "lite", "--epochs", "0"], "epochs"),
        (["--arch", "lite", "--protocol", "magic"], "protocol"),
        (["--arch", "lite", "--device", "tpu"], "device"),
        *([(["--arch", "lite", "--device", "cuda"], "device 'cuda'")] if NO_CUDA else []),
    ],
)
def test_cli_bad_options(run_cli, toy_npz, tmp_path, args, message) -> None:
    result = run_cli("train", *args, "--dataset", toy_npz, "-o", tmp_path / "m.onnx")
    assert result.code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_cli_output_is_a_directory(run_cli, toy_npz, tmp_path) -> None:
    result = run_cli("train", "--arch", "lite", "--dataset", toy_npz, "-o", tmp_path)
    assert result.code == 2 and "is a directory" in result.stderr


def test_cli_unknown_dataset(run_cli, tmp_path) -> None:
    result = run_cli("train", "--arch", "lite", "--dataset", "NoSuchSet", "-o", tmp_path / "m.onnx")
    assert result.code == 2 and "NoSuchSet" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_train_json_and_calibration(run_cli, toy_npz, tmp_path) -> None:
    out, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    result = run_cli(
        "train", "--arch", "lite", "--dataset", toy_npz, "--epochs", "2", "--seed", "3",
        "-o", out, "--calib-out", calib, "--json", "--quiet", "--threads", "1",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    # the ONNX file's count, as compress/inspect/bench report it; torch's beside it
    assert summary["params"] == 10_480 and summary["trainable_params"] == 10_318
    assert summary["epochs"] == 2
    assert summary["members"][0]["seed"] == 3
    assert summary["device"] == ("cpu" if NO_CUDA else "cuda")
    assert set(summary["dead_channels"]) == {"inception", "dwsc1", "dwsc2"}
    assert summary["dead_channels"]["dwsc1"][1] == 32
    with np.load(calib, allow_pickle=False) as f:
        assert f["x"].shape == (20, 1, 24) and f["x"].dtype == np.float32
        assert f["y"].dtype == np.int64
    assert out.stat().st_size > 10_000


def test_end_to_end_train_export_eval(run_cli, tmp_path) -> None:
    """ItalyPowerDemand (aeon-bundled, 67 train series, L = 24): train → ONNX → eval."""
    out = tmp_path / "ipd.onnx"
    trained = run_cli(
        "train", "--arch", "lite", "--dataset", "ItalyPowerDemand", "--epochs", "30",
        "--seed", "1", "-o", out, "--json", "--quiet", "--threads", "1",
    )  # fmt: skip
    assert trained.code == 0, trained.stderr
    evaluated = run_cli("eval", out, "--dataset", "ItalyPowerDemand", "--json", "--threads", "1")
    assert evaluated.code == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["n"] == 1029
    assert report["accuracy"] > 0.7, report  # chance is 0.5


def test_member_accuracy_after_too_few_epochs_says_untrained_not_batchnorm(caplog) -> None:
    from dsp_deploy.train.loop import EpochRecord, TrainResult
    from dsp_deploy.train.pipeline import _member_accuracy

    X, y = np.zeros((10, 1, 8), np.float32), np.array([0, 1] * 5)
    chance = EpochRecord(epoch=1, loss=0.70, ce=0.69, sparsity=0.01, lr=1e-3)
    with caplog.at_level("WARNING", logger="dsp_deploy.train.pipeline"):
        _member_accuracy(_OneClass(), X, y, 7, TrainResult((chance,), 1, 0.70, 0.0))
    assert "untrained (best cross-entropy 0.6900, chance is 0.6931, after 1 epochs)" in caplog.text
    assert "BatchNorm" not in caplog.text
    caplog.clear()
    fitted = EpochRecord(epoch=1, loss=0.16, ce=0.155, sparsity=0.005, lr=1e-3)
    with caplog.at_level("WARNING", logger="dsp_deploy.train.pipeline"):
        _member_accuracy(_OneClass(), X, y, 7, TrainResult((fitted,), 1, 0.16, 0.0))
    assert "BatchNorm running statistics" in caplog.text and "untrained" not in caplog.text
