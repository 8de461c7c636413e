"""Property tests: random conv graphs with planted dead channels.

Each net is 1–3 stages; a stage is 1–3 parallel Convs (1–4 channels each, kernel 1/3/5)
concatenated, then Relu. Planted channels have a zero weight row and bias −1, so they
are 0 after the Relu on *every* input. Every other channel is provably live on the
calibration set, which holds the all-zero series: on that series a stage-k value is
at most V_k, so a live channel with bias ``b = 1 + Σ|w| · V_{k-1}`` is ≥ 1 before its
Relu at every position (V_0 = 0: the first stage sees only zeros and padding). Hence
the exact expectations, with no luck involved:

* ``dead`` removes exactly the planted channels (a whole source or branch included)
  and, by the construction above, never a live one; every stage keeps ≥ 1 channel;
* the outputs are unchanged on fresh inputs (planted channels are dead everywhere);
* a fully planted source is gone from the graph and its Concat reads one input less;
* the input model is untouched; an empty plan reproduces the outputs bit for bit.

The default profile runs 500 graphs per property (issue 7); ``HYPOTHESIS_PROFILE=quick``
runs 50. A failure prints the drawn net (its ``seed`` rebuilds the weights) and a
``@reproduce_failure`` blob.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsp_deploy.compress.calibrate import run_model
from dsp_deploy.compress.groups import find_groups
from dsp_deploy.compress.pipeline import compress
from dsp_deploy.compress.plan import empty_plan
from dsp_deploy.compress.prune import prune
from dsp_deploy.compress.verify import compare
from dsp_deploy.io import Calibration

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402

_COMMON = {
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("default", max_examples=500, **_COMMON)
settings.register_profile("quick", max_examples=50, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@dataclass(frozen=True)
class Net:
    """A random net; ``planted[label]`` = its dead channels, ``stages`` = source labels
    per stage, ``concat[k]`` = the Concat node of stage k (None for one branch)."""

    model: onnx.ModelProto
    seed: int
    planted: Mapping[str, tuple[int, ...]]
    width: Mapping[str, int]
    stages: tuple[tuple[str, ...], ...]
    concat: tuple[str | None, ...]


def _stage_plan(draw, width: int) -> list[tuple[int, int, set[int]]]:
    """(channels, kernel, planted dead channels) per branch; ≥ 1 live channel overall."""
    branches = [
        (draw(st.integers(1, 4)), draw(st.sampled_from([1, 3, 5])))
        for _ in range(draw(st.integers(1, 3)))
    ]
    dead = [draw(st.sets(st.integers(0, out - 1), max_size=out)) for out, _ in branches]
    if all(len(d) == out for d, (out, _) in zip(dead, branches, strict=True)):
        b = draw(st.integers(0, len(branches) - 1))
        dead[b].discard(draw(st.integers(0, branches[b][0] - 1)))
    return [(out, k, d) for (out, k), d in zip(branches, dead, strict=True)]


@st.composite
def conv_nets(draw) -> Net:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray] = {}
    body, planted, widths, stages, concats = [], {}, {}, [], []
    prev, width, bound, node = "x", 1, 0.0, 0
    for k in range(draw(st.integers(1, 3))):
        names, labels, next_bound = [], [], 0.0
        for j, (out, ksize, dead) in enumerate(_stage_plan(draw, width)):
            name, label = f"c{k}{j}", f"Conv_{node}"
            w = rng.normal(0, 1 / np.sqrt(width * ksize), (out, width, ksize))
            spread = np.abs(w).sum(axis=(1, 2)) * bound  # max |W x| on the zero series
            b = 1.0 + spread
            w[sorted(dead)], b[sorted(dead)] = 0.0, -1.0
            values[f"{name}_w"], values[f"{name}_b"] = w, b
            live = [c for c in range(out) if c not in dead]
            next_bound = max(next_bound, *(b[c] + spread[c] for c in live), 0.0)
            pads = (ksize - 1) // 2
            body.append(f"{name} = Conv <pads = [{pads}, {pads}]> ({prev}, {name}_w, {name}_b)")
            planted[label], widths[label] = tuple(sorted(dead)), out
            names.append(name)
            labels.append(label)
            node += 1
        concat = None
        if len(names) > 1:
            body.append(f"cat{k} = Concat <axis = 1> ({', '.join(names)})")
            concat, node = f"Concat_{node}", node + 1
        body.append(f"r{k} = Relu ({names[0] if concat is None else f'cat{k}'})")
        node += 1
        prev, width, bound = f"r{k}", sum(widths[lbl] for lbl in labels), next_bound
        stages.append(tuple(labels))
        concats.append(concat)
    body.append(f"h = Identity ({prev})")
    values["fc_w"] = rng.normal(0, 1 / np.sqrt(width), (2, width)) / max(1.0, bound)
    values["fc_b"] = rng.normal(0, 0.1, 2)
    model = G.build("\n".join(body) + G.HEAD, values)
    for i, n in enumerate(model.graph.node):  # the names the pass would give them
        n.name = f"{n.op_type}_{i}"
    return Net(model, seed, planted, widths, tuple(stages), tuple(concats))


def calibration_inputs() -> np.ndarray:
    """23 standard-normal series and the all-zero series that proves liveness."""
    return np.concatenate([np.zeros((1, 1, G.L), np.float32), G.inputs(23)])


def removed_channels(result) -> dict[str, tuple[int, ...]]:
    analysis, removed = result.plan.analysis, result.plan.removed_atoms
    return {
        s.label: tuple(k for k, a in enumerate(s.atoms) if a in removed)
        for s in analysis.sources
        if s.node >= 0
    }


@given(conv_nets())
def test_dead_removes_exactly_the_planted_channels(net: Net) -> None:
    before = net.model.SerializeToString()
    result = compress(net.model, Calibration({"x": calibration_inputs()}, None), holdout=0.0)
    assert net.model.SerializeToString() == before
    assert removed_channels(result) == dict(net.planted)
    assert result.verified
    fresh = {"x": G.inputs(5, seed=123)}
    expected = run_model(net.model, fresh)
    report = compare(expected, run_model(result.model, fresh), atol=1e-6, rtol=1e-5)
    assert report.within_tolerance, report
    # structure: whole dead sources are gone, their Concat reads fewer inputs
    nodes = {n.name: n for n in result.model.graph.node}
    gone = {label for label, dead in net.planted.items() if len(dead) == net.width[label]}
    assert gone.isdisjoint(nodes)
    for labels, concat in zip(net.stages, net.concat, strict=True):
        left = [lbl for lbl in labels if lbl not in gone]
        assert left and all(lbl in nodes for lbl in left)
        if concat is not None:
            assert len(nodes[concat].input) == len(left)


@given(conv_nets())
def test_empty_plan_reproduces_outputs_and_input_is_untouched(net: Net) -> None:
    before = net.model.SerializeToString()
    out = prune(net.model, empty_plan(find_groups(net.model)))
    assert net.model.SerializeToString() == before
    fresh = {"x": G.inputs(4, seed=7)}
    np.testing.assert_array_equal(run_model(net.model, fresh)[0], run_model(out, fresh)[0])
