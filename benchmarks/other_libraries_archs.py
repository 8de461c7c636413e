"""tsai's architectures for ``benchmarks/other_libraries.py``: builders and dead-channel plants.

The planting rule and why each module is (not) planted: ``other_libraries``'s docstring.
"""

from __future__ import annotations

import random
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LENGTH, CLASSES, SEED = 96, 3, 0
RELU_DEAD = -0.5


def stub_torchvision() -> bool:
    """An empty ``torchvision.models`` where torchvision cannot load (see the docstring)."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or the operator-registration RuntimeError
        package, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
        package.__path__, models.__path__ = [], []
        package.models = models
        sys.modules.update({"torchvision": package, "torchvision.models": models})
        return True
    return False


@dataclass(frozen=True)
class Plant:
    """Modules whose full name matches ``pattern``: ``kind`` bn or conv, constant ``value``."""

    pattern: str
    kind: str
    value: float = RELU_DEAD


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[int], object]
    plants: tuple[Plant, ...]
    c_ins: tuple[int, ...] = (1,)
    note: str = ""
    fixed_length: str = ""  # why no dyn-L export, where torch runs other lengths all the same


def _tsai(module: str, name: str) -> Callable:
    import importlib

    return getattr(importlib.import_module(f"tsai.models.{module}"), name)


def _inception_plants(prefix: str) -> tuple[Plant, ...]:
    # Modules 2 and 5 end in the residual Add; 0, 1, 3, 4 feed the next module only.
    return (Plant(rf"{prefix}\.inception\.[0134]\.norm$", "bn"),)


ARCHS = (
    Arch(
        "FCN",
        lambda c: _tsai("FCN", "FCN")(c, CLASSES, layers=[32, 64, 32]),
        (Plant(r"^convblock[123]\.1$", "bn"),),
    ),
    Arch(
        "ResNet",
        lambda c: _tsai("ResNet", "ResNet")(c, CLASSES),
        (Plant(r"^resblock\d\.convblock[12]\.1$", "bn"),),
        note="widths fixed by tsai (64/128)",
    ),
    Arch(
        "ResCNN",
        lambda c: _tsai("ResCNN", "ResCNN")(c, CLASSES),
        (Plant(r"^block1\.convblock[12]\.1$", "bn"), Plant(r"^block[234]\.1$", "bn", 0.0)),
        note="block2-4: LeakyReLU, PReLU, ELU (β = 0)",
    ),
    Arch(
        "InceptionTime",
        lambda c: _tsai("InceptionTime", "InceptionTime")(c, CLASSES, nf=8),
        (Plant(r"^inceptionblock\.inception\.[0134]\.bn$", "bn"),),
    ),
    Arch(
        "InceptionTimePlus",
        lambda c: _tsai("InceptionTimePlus", "InceptionTimePlus")(c, CLASSES, nf=8),
        _inception_plants(r"^backbone\.0"),
    ),
    Arch(
        "XceptionTime",
        lambda c: _tsai("XceptionTime", "XceptionTime")(c, CLASSES, nf=8, adaptive_size=48),
        (
            Plant(r"^block\.xception\.[02]\.convs\.\d\.pointwise_conv$", "conv", 0.0),
            Plant(r"^block\.xception\.[02]\.maxconvpool\.1$", "conv", 0.0),
            Plant(r"^head\.[12]\.1$", "bn"),
        ),
        note="adaptive_size 48 (tsai's 50 does not divide 96); modules 0, 2 have no "
        "activation: conv rows zeroed",
        fixed_length="the exporter writes AdaptiveAvgPool1d only for a static length it divides",
    ),
    Arch(
        "OmniScaleCNN",
        lambda c: _tsai("OmniScaleCNN", "OmniScaleCNN")(c, CLASSES, LENGTH),
        (Plant(r"^net\.[012]\.conv_list\.\d+\.bn$", "bn"),),
    ),
    Arch(
        "XCM",
        lambda c: _tsai("XCM", "XCM")(c, CLASSES, LENGTH, nf=32),
        (
            Plant(r"^conv2dblock\.2$", "bn"),
            Plant(r"^conv1dblock\.1$", "bn"),
            Plant(r"^conv1d\.1$", "bn"),
        ),
        c_ins=(1, 3),
    ),
    Arch(
        "TCN",
        lambda c: _tsai("TCN", "TCN")(c, CLASSES, layers=4 * [16]),
        (Plant(r"^tcn\.\d\.conv1$", "conv"),),
        note="conv1 under weight_norm: weight_g zeroed",
    ),
    Arch(
        "mWDN",
        lambda c: _tsai("mWDN", "mWDN")(c, CLASSES, LENGTH, nf=8),
        _inception_plants(r"^_model\.backbone\.0"),
        note="base_arch InceptionTimePlus",
    ),
    Arch(
        "MLSTM_FCN",
        lambda c: _tsai("RNN_FCN", "MLSTM_FCN")(
            c, CLASSES, LENGTH, hidden_size=16, conv_layers=[32, 64, 32]
        ),
        (Plant(r"^convblock[123]\.1$", "bn"),),
        c_ins=(1, 3),
        note="squeeze-excite after blocks 1, 2; LSTM beside",
    ),
    Arch(
        "XResNet1d18",
        lambda c: _tsai("XResNet1d", "xresnet1d18")(c, CLASSES),
        (Plant(r"^[01]\.1$", "bn"), Plant(r"^\d\.\d\.convpath\.0\.1$", "bn")),
        note="stem 0, 1 and each block's first conv (stem 2 feeds the residual stream)",
    ),
    Arch(
        "InCoordTime",
        lambda c: _tsai("InceptionTimePlus", "InCoordTime")(c, CLASSES, nf=8),
        _inception_plants(r"^backbone\.0"),
        note="AddCoords1d before every conv",
    ),
)


def seed_all(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def randomize_norms(model, rng: np.random.Generator) -> None:
    """BatchNorm γ, β, μ, σ² drawn as a trained net's differ (see the docstring)."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine:
                n = m.num_features
                for t, values in (
                    (m.weight, rng.uniform(0.5, 1.5, n)),
                    (m.bias, rng.normal(0, 0.1, n)),
                    (m.running_mean, rng.normal(0, 0.1, n)),
                    (m.running_var, rng.uniform(0.5, 1.5, n)),
                ):
                    t.copy_(torch.from_numpy(values))


def _zero_conv(conv, channels: list[int], value: float) -> None:
    weight = conv.weight_g if hasattr(conv, "weight_g") else conv.weight
    if hasattr(conv, "parametrizations"):  # torch.nn.utils.parametrizations.weight_norm
        weight = conv.parametrizations.weight.original0
    weight.data[channels] = 0
    if conv.bias is not None:
        conv.bias.data[channels] = value
    elif value != 0:
        raise ValueError(f"conv without bias cannot be planted with {value}")


def plant(model, plants: tuple[Plant, ...], rng: np.random.Generator) -> list[dict]:
    """Plant every module a pattern matches; the records say where and which channels."""
    import torch

    records = []
    with torch.no_grad():
        for name, module in model.named_modules():
            spec = next((p for p in plants if re.search(p.pattern, name)), None)
            if spec is None:
                continue
            width = module.num_features if spec.kind == "bn" else module.out_channels
            k = max(1, round(width / 4))
            channels = sorted(int(c) for c in rng.choice(width, k, replace=False))
            if spec.kind == "bn":
                module.weight.data[channels] = 0
                module.bias.data[channels] = spec.value
            else:
                _zero_conv(module, channels, spec.value)
            records.append(
                {
                    "module": name,
                    "kind": spec.kind,
                    "width": width,
                    "channels": channels,
                    "value": spec.value,
                }
            )
    if not records:
        raise ValueError(f"no module matches {[p.pattern for p in plants]}")
    return records


def check_plants(model, records: list[dict], *batches: np.ndarray) -> None:
    """Each planted channel is its constant at its module's output on every batch."""
    import torch

    modules, seen = dict(model.named_modules()), {}
    hooks = [
        modules[r["module"]].register_forward_hook(
            lambda _m, _i, out, r=r: seen.setdefault(r["module"], []).append(
                out[:, r["channels"]].detach().numpy()
            )
        )
        for r in records
    ]
    try:
        with torch.no_grad():
            for x in batches:
                model(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    for r in records:
        values = np.concatenate([v.ravel() for v in seen[r["module"]]])
        if not np.all(values == np.float32(r["value"])):
            raise AssertionError(f"planted channels of {r['module']} are not constant {r['value']}")
