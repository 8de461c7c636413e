"""LITE / InceptionTime in PyTorch: parameter formulas, shapes, padding, pruning copies, and
the fast training kernels against the plain modules (outputs and gradients)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from dsp_deploy.archs import ARCHS, get_arch  # noqa: E402
from dsp_deploy.errors import InputError  # noqa: E402
from dsp_deploy.nets.ensemble import Ensemble, Probabilities  # noqa: E402
from dsp_deploy.nets.fast import max_pool1d_same, merged_conv1d, padded_conv1d  # noqa: E402
from dsp_deploy.nets.inception import Inception, InceptionConfig  # noqa: E402
from dsp_deploy.nets.layers import (  # noqa: E402
    SameConv1d,
    count_params,
    hybrid_filters,
    peak_filter,
    same_pads,
    trend_filter,
    use_fast_kernels,
)
from dsp_deploy.nets.lite import Lite, LiteConfig  # noqa: E402
from dsp_deploy.train.sparsity import dsp_penalty  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.mark.parametrize("n_classes", [2, 10])
def test_lite_parameter_formula(n_classes: int) -> None:
    net = Lite(LiteConfig(n_classes))
    assert count_params(net) == 10_252 + 33 * n_classes
    assert count_params(net, trainable=False) == 438
    assert count_params(net, trainable=True) == 9_814 + 33 * n_classes


@pytest.mark.parametrize("n_classes", [2, 10])
def test_inception_parameter_formula(n_classes: int) -> None:
    assert count_params(Inception(InceptionConfig(n_classes))) == 420_192 + 129 * n_classes


@pytest.mark.parametrize(
    ("branches", "dwsc", "n_classes"),
    [((32, 32, 32), (32, 32), 3), ((14, 9, 8), (16, 12), 5), ((1, 0, 3), (1, 2), 2)],
)
def test_pruned_lite_formula(branches, dwsc, n_classes) -> None:
    config = LiteConfig(n_classes, branches, dwsc)
    assert count_params(Lite(config)) == config.param_count()


def test_shapes_and_taps() -> None:
    x = torch.randn(3, 1, 37)
    logits, taps = Lite(LiteConfig(4)).forward_with_taps(x)
    assert logits.shape == (3, 4)
    assert [t.shape for t in taps] == [(3, 96, 37), (3, 32, 37), (3, 32, 37)]
    with torch.no_grad():
        logits, taps = Inception(InceptionConfig(5)).forward_with_taps(x)
    assert logits.shape == (3, 5)
    assert [t.shape for t in taps] == [(3, 128, 37)] * 6
    # taps are post-ReLU (residual ReLU for modules 3 and 6)
    assert all(float(t.min()) >= 0 for t in taps)


@pytest.mark.parametrize(
    ("k", "d", "expected"), [(40, 1, (19, 20)), (10, 4, (18, 18)), (3, 1, (1, 1))]
)
def test_same_pads_keras(k: int, d: int, expected: tuple[int, int]) -> None:
    assert same_pads(k, d) == expected


@pytest.mark.parametrize(("k", "d"), [(40, 1), (20, 2), (10, 4), (7, 3), (1, 1)])
def test_same_conv_matches_manual_keras_padding(k: int, d: int) -> None:
    conv = SameConv1d(2, 3, k, dilation=d)
    x = torch.randn(2, 2, 50)
    total = (k - 1) * d
    expected = F.conv1d(F.pad(x, (total // 2, total - total // 2)), conv.conv.weight, dilation=d)
    assert conv(x).shape == (2, 3, 50)
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-6)


def test_hybrid_filters() -> None:
    filters = hybrid_filters()
    assert len(filters) == 17
    assert sum(len(f) for f in filters) == 438
    assert trend_filter(4, increasing=True).tolist() == [-1, 1, -1, 1]
    assert trend_filter(4, increasing=False).tolist() == [1, -1, 1, -1]
    assert peak_filter(4).tolist() == [-1, -1, 2, 2, -1, -1]
    p8 = peak_filter(8)  # quarters of r = [0.25, 1.0]
    np.testing.assert_allclose(p8, [-0.25, -1, -1, -0.25, 0.5, 2, 2, 0.5, -0.25, -1, -1, -0.25])
    assert [len(f) for f in filters[12:]] == [6, 12, 24, 48, 96]


def _kill(bn: torch.nn.BatchNorm1d, channels: list[int]) -> None:
    """Make `channels` exactly zero after this BN's ReLU (γ = 0, β < 0)."""
    with torch.no_grad():
        bn.weight[channels] = 0.0
        bn.bias[channels] = -1.0


def _randomise_bn(net: torch.nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)


def test_lite_pruned_copy_is_exact_when_removed_channels_are_dead() -> None:
    net = Lite(LiteConfig(3))
    _randomise_bn(net)
    keep = [
        [i for i in range(96) if i % 3 and i not in range(32, 64)] + [40],
        list(range(0, 32, 2)),
        [1, 5, 7],
    ]
    keep[0] = sorted(keep[0])
    _kill(net.bn1, sorted(set(range(96)) - set(keep[0])))
    _kill(net.bn2, sorted(set(range(32)) - set(keep[1])))
    _kill(net.bn3, sorted(set(range(32)) - set(keep[2])))
    small = net.pruned(keep)
    assert small.config.branch_widths == (21, 1, 22)
    assert small.config.dwsc_widths == (16, 3)
    x = torch.randn(4, 1, 60)
    net.eval(), small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), net(x), rtol=1e-5, atol=1e-5)


def test_inception_pruned_copy_is_exact_when_removed_channels_are_dead() -> None:
    net = Inception(InceptionConfig(2))
    _randomise_bn(net)
    keep = [sorted(set(range(0, 128, 5)) | {100, 101}) for _ in range(6)]
    for d, block in enumerate(net.blocks):
        dead = sorted(set(range(128)) - set(keep[d]))
        _kill(block.bn, dead)
        if d in net.ends:  # the shortcut's BN feeds the same post-residual ReLU
            _kill(net.shortcuts[net.ends.index(d)].bn, dead)
    small = net.pruned(keep)
    assert small.config.module_widths[0] == (7, 6, 7, 7)
    x = torch.randn(3, 1, 40)
    net.eval(), small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), net(x), rtol=1e-5, atol=1e-5)


def test_inception_branch_of_width_zero_is_removed() -> None:
    config = InceptionConfig(2, ((3, 0, 2, 0), (0, 0, 0, 1), (2, 2, 2, 2)), residual_every=3)
    net = Inception(config)
    assert len(net.blocks[0].convs) == 2 and net.blocks[0].pool_conv is None
    assert net.blocks[2].bottleneck is None  # its input has one channel
    assert net(torch.randn(2, 1, 30)).shape == (2, 2)


def test_ensemble_is_mean_softmax() -> None:
    members = [Lite(LiteConfig(3)) for _ in range(3)]
    x = torch.randn(2, 1, 30)
    ens = Ensemble(members).eval()
    with torch.no_grad():
        expected = sum(torch.softmax(m.eval()(x), dim=-1) for m in members) / 3
        torch.testing.assert_close(ens(x), expected)
        torch.testing.assert_close(Probabilities(members[0])(x).sum(dim=-1), torch.ones(2))


def test_registry() -> None:
    assert set(ARCHS) == {"lite", "litetime", "inception", "inceptiontime"}
    assert get_arch("LITETime").members == 5
    assert get_arch("lite").member_seeds(None) == (9409,)
    assert get_arch("inceptiontime").member_seeds(7) == (7, 8, 9, 10, 11)
    with pytest.raises(InputError, match="unknown arch 'resnet'"):
        get_arch("resnet")
    with pytest.raises(InputError):
        LiteConfig(2, dwsc_widths=(0, 4))


# --- fast kernels: the training path computes the plain path's function ----------------

CONV_CASES = [  # (in, out, k, dilation, groups, pads)
    (3, 4, 5, 1, 1, (2, 2)),
    (3, 4, 4, 1, 1, (1, 2)),  # Keras "same" for an even kernel
    (1, 6, 7, 2, 1, (5, 7)),
    (5, 5, 4, 3, 5, (4, 5)),  # depthwise, dilated, asymmetric
    (6, 6, 3, 4, 6, (4, 4)),
    (4, 4, 3, 1, 2, (1, 1)),  # grouped: falls back to torch's kernels
    (5, 3, 1, 1, 1, (0, 0)),  # pointwise
]


@pytest.mark.parametrize(("cin", "cout", "k", "d", "groups", "pads"), CONV_CASES)
def test_padded_conv1d_backward_is_exact(cin, cout, k, d, groups, pads) -> None:
    """float64 gradcheck: the forward-convolution backward against finite differences."""
    x = torch.randn(2, cin, 11, dtype=torch.float64, requires_grad=True)
    w = torch.randn(cout, cin // groups, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, requires_grad=True)

    def conv(x, w, b):
        return padded_conv1d(x, w, b, pads=pads, dilation=d, groups=groups)

    expected = F.conv1d(F.pad(x, pads), w, b, dilation=d, groups=groups)
    torch.testing.assert_close(conv(x, w, b), expected, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(conv, (x, w, b))


@pytest.mark.parametrize(
    ("cin", "cout", "k", "d", "groups", "pads"), [c for c in CONV_CASES if c[4] in (1, c[0])]
)
def test_padded_conv1d_matches_torch_float32(cin, cout, k, d, groups, pads) -> None:
    x = torch.randn(8, cin, 60, requires_grad=True)
    w = torch.randn(cout, cin // groups, k, requires_grad=True)
    g = torch.randn(8, cout, 60 + sum(pads) - (k - 1) * d)
    grads = []
    for conv in (padded_conv1d, None):
        x.grad = w.grad = None
        y = (
            conv(x, w, pads=pads, dilation=d, groups=groups)
            if conv
            else F.conv1d(F.pad(x, pads), w, dilation=d, groups=groups)
        )
        y.backward(g)
        grads.append((y.detach(), x.grad, w.grad))
    for got, expected in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_merged_conv1d_is_the_concatenation() -> None:
    x = torch.randn(3, 1, 40, dtype=torch.float64)
    weights = [torch.randn(o, 1, k, dtype=torch.float64) for o, k in ((2, 40), (3, 7), (1, 2))]
    pads = [same_pads(w.shape[-1]) for w in weights]
    expected = torch.cat([F.conv1d(F.pad(x, p), w) for w, p in zip(weights, pads, strict=True)], 1)
    torch.testing.assert_close(merged_conv1d(x, weights, pads), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("length", [1, 2, 9])
def test_max_pool_first_max_gradient_with_ties(k: int, length: int) -> None:
    # Rounded values tie often, as ReLU zeros do: the gradient must go where torch's does.
    x = torch.randn(2, 3, length, dtype=torch.float64).round().requires_grad_()
    g = torch.randn(2, 3, length, dtype=torch.float64)
    y = F.max_pool1d(x, k, stride=1, padding=k // 2)
    (expected,) = torch.autograd.grad(y, x, g)
    got = max_pool1d_same(x, k)
    assert torch.equal(got, y)
    (grad,) = torch.autograd.grad(got, x, g)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="odd"):
        max_pool1d_same(x, 2)


def _grads(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, fast: bool):
    """Logits, taps, ∂loss/∂x and ∂loss/∂θ for CE + DSP penalty (λ large enough to matter)."""
    use_fast_kernels(net, fast)
    net.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    logits, taps = net.forward_with_taps(x)
    loss = F.cross_entropy(logits, y) + dsp_penalty(taps, [1.0] * len(taps), 1e-3)
    loss.backward()
    params = {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    return logits.detach(), [t.detach() for t in taps], x.grad, params


@pytest.mark.parametrize("family", ["lite", "inception"])
@pytest.mark.parametrize("training", [True, False])
def test_fast_and_plain_paths_agree(family: str, training: bool) -> None:
    net = Lite(LiteConfig(3)) if family == "lite" else Inception(InceptionConfig(3))
    _randomise_bn(net)
    net.train(training)
    x, y = torch.randn(6, 1, 57), torch.tensor([0, 1, 2, 0, 1, 2])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    plain = _grads(net, x, y, fast=False)
    net.load_state_dict(state)  # undo the BN running-statistics update
    fast = _grads(net, x, y, fast=True)
    torch.testing.assert_close(fast[0], plain[0], rtol=0, atol=1e-5)
    for a, b in zip(fast[1], plain[1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast[2], plain[2], rtol=0, atol=1e-5)
    assert fast[3].keys() == plain[3].keys()
    for name, grad in plain[3].items():
        torch.testing.assert_close(fast[3][name], grad, rtol=0, atol=1e-5, msg=name)
    assert max(g.abs().max() for g in plain[3].values()) > 1e-2  # gradients are not vacuous


def test_fast_kernels_switch_and_keep_parameters() -> None:
    net = Lite(LiteConfig(2))
    flags = [m.fast_kernels for m in net.modules() if hasattr(m, "fast_kernels")]
    # Lite, 3 branches, the hybrid block and its 17 filters, 2 depthwise, 2 pointwise convs
    assert len(flags) == 1 + 3 + 1 + 17 + 2 + 2 and all(flags)
    assert use_fast_kernels(net, False) is net
    assert not any(m.fast_kernels for m in net.modules() if hasattr(m, "fast_kernels"))
    assert count_params(net) == 10_252 + 33 * 2
