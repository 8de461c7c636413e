"""Property tests: random conv graphs with planted dead channels.

Each net is 1–3 stages; a stage is 1–3 parallel Convs (1–4 channels each, kernel 1/3/5)
concatenated, or (after a stage of the first kind) one grouped Conv (g ≥ 2 groups,
b_out = 1–3 outputs per group, never depthwise), then Relu. The head is GAP → Flatten →
Gemm, a Flatten over (C, L) → Gemm (C·L features), or GAP after a Mul by a 1-channel
attention map (1×1 Conv → Sigmoid, > 0, so a live channel stays live through it; its
Conv is a source of one channel, pinned, never removed). Planted channels have a
zero weight row and bias −1, so they are 0 after the Relu on *every* input. Every other
channel is provably live on the calibration set, which holds the all-zero series: on
that series a stage-k value is at most V_k, so a live channel with bias
``b = 1 + Σ|w| · V_{k-1}`` (Σ over the weights it reads) is ≥ 1 before its Relu at
every position (V_0 = 0: the first stage sees only zeros and padding). Hence the exact
expectations, with no luck involved:

* ``dead`` removes only planted channels (a whole source or branch included), every
  stage keeps ≥ 1 channel, and when every grouped Conv's planted channels are balanced
  (equal per staying group) it removes exactly the planted ones;
* a grouped Conv: before it, whole input blocks may be planted (then its group's
  outputs are too, so the group is dead, not constant) and the other blocks some
  channels each; the number removed per input block and per output group is the oracle
  of ``plan``'s docstring, computed here from the planted counts alone: b_in and b_out
  for a dropped group, the minimum over the staying groups otherwise; ``group`` drops by
  the number of dropped groups;
* the outputs are unchanged on fresh inputs (planted channels are dead everywhere);
* a source whose every channel went is gone from the graph and its Concat reads one
  input less;
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

from dsp_deploy.compress.groups import find_groups
from dsp_deploy.compress.pipeline import compress
from dsp_deploy.compress.plan import empty_plan
from dsp_deploy.compress.prune import prune
from dsp_deploy.compress.verify import compare
from dsp_deploy.inference import run_model
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
class Grouped:
    """Oracle for the grouped Conv ``label``: it reads ``inputs`` ((source, channel) per
    position); removed per input block and per output group; the ``group`` left."""

    label: str
    groups: int
    inputs: tuple[tuple[str, int], ...]
    removed_in: tuple[int, ...]
    removed_out: tuple[int, ...]
    group: int


@dataclass(frozen=True)
class Net:
    """A random net; ``planted[label]`` = its dead channels, ``stages`` = source labels
    per stage, ``concat[k]`` = the Concat node of stage k (None for one branch);
    ``exact``: the planted channels are balanced at every grouped Conv."""

    model: onnx.ModelProto
    seed: int
    planted: Mapping[str, tuple[int, ...]]
    width: Mapping[str, int]
    stages: tuple[tuple[str, ...], ...]
    concat: tuple[str | None, ...]
    grouped: tuple[Grouped, ...]
    exact: bool


def _free_dead(draw, sizes: list[int]) -> list[set[int]]:
    """Planted channels per branch, anywhere; ≥ 1 live channel overall."""
    dead = [draw(st.sets(st.integers(0, out - 1), max_size=out)) for out in sizes]
    if all(len(d) == out for d, out in zip(dead, sizes, strict=True)):
        b = draw(st.integers(0, len(sizes) - 1))
        dead[b].discard(draw(st.integers(0, sizes[b] - 1)))
    return dead


def _block_dead(draw, groups: int, size: int, whole: set[int]) -> list[set[int]]:
    """Planted positions per block of ``size``: blocks in ``whole`` entirely, each other
    one the same count (balanced) or any count, always < ``size``."""
    balanced, count = draw(st.booleans()), draw(st.integers(0, size - 1))
    blocks = []
    for j in range(groups):
        n = size if j in whole else count if balanced else draw(st.integers(0, size - 1))
        blocks.append(set(draw(st.permutations(range(size)))[:n]))
    return blocks


def _divisors(width: int) -> list[int]:
    """Group counts for ``width`` channels; g = width (b_in = 1) only for a prime width."""
    proper = [g for g in range(2, width) if width % g == 0]
    return proper or [width]


def _oracle(ins: list[set[int]], outs: list[set[int]], b_in: int, b_out: int, whole: set[int]):
    """(removed per input block, per output group, group left, balanced?)."""
    stay = [j for j in range(len(ins)) if j not in whole]
    r, s = min(len(ins[j]) for j in stay), min(len(outs[j]) for j in stay)
    removed_in = tuple(b_in if j in whole else r for j in range(len(ins)))
    removed_out = tuple(b_out if j in whole else s for j in range(len(outs)))
    balanced = all(len(ins[j]) == r and len(outs[j]) == s for j in stay)
    return removed_in, removed_out, len(stay), balanced


Branch = tuple[int, int, int]  # (channels, kernel, group)


def _feeding(draw, branches: list[Branch]) -> tuple[int, set[int], list[set[int]], list[set[int]]]:
    """Plan a stage read by a grouped Conv: (g, whole blocks, planted per block, planted
    per branch)."""
    total = sum(out for out, _, _ in branches)
    g = draw(st.sampled_from(_divisors(total)))
    whole = draw(st.sets(st.integers(0, g - 1), max_size=g - 1))
    ins = _block_dead(draw, g, total // g, whole)
    flat = {j * (total // g) + c for j, block in enumerate(ins) for c in block}
    dead, start = [], 0
    for out, _, _ in branches:
        dead.append({p - start for p in flat if start <= p < start + out})
        start += out
    return g, whole, ins, dead


def _grouped_stage(draw, width: int, pending, label: str):
    """One grouped Conv reading the planned stage: (branches, planted, oracle, balanced)."""
    g, whole, ins, positions = pending
    b_in, b_out = width // g, draw(st.integers(2 if width == g else 1, 3))  # not depthwise
    outs = _block_dead(draw, g, b_out, whole)
    removed_in, removed_out, left, balanced = _oracle(ins, outs, b_in, b_out, whole)
    oracle = Grouped(label, g, positions, removed_in, removed_out, left)
    dead = [{j * b_out + c for j, block in enumerate(outs) for c in block}]
    return [(g * b_out, draw(st.sampled_from([1, 3, 5])), g)], dead, oracle, balanced


HEADS = {
    "gap": "h = Identity ({prev})" + G.HEAD,
    "flatten": """
    h = Identity ({prev})
    f = Flatten (h)
    z = Gemm <transB = 1> (f, fc_w, fc_b)
    probabilities = Softmax <axis = 1> (z)
    """,
    "attention": """
    h0 = Identity ({prev})
    e = Conv (h0, att_w, att_b)
    a = Sigmoid (e)
    h = Mul (h0, a)
    """
    + G.HEAD,
}


@st.composite
def conv_nets(draw) -> Net:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray] = {}
    body, planted, widths, stages, concats, grouped = [], {}, {}, [], [], []
    prev, width, bound, node, exact = "x", 1, 0.0, 0, True
    pending = None  # the next stage is grouped: (g, whole blocks, planted, positions)
    count = draw(st.integers(1, 3))
    for k in range(count):
        feeds = None
        if pending is not None:
            branches, dead, oracle, balanced = _grouped_stage(draw, width, pending, f"Conv_{node}")
            grouped.append(oracle)
            exact &= balanced
        else:
            branches = [
                (draw(st.integers(1, 4)), draw(st.sampled_from([1, 3, 5])), 1)
                for _ in range(draw(st.integers(1, 3)))
            ]
            if k + 1 < count and sum(b[0] for b in branches) >= 2 and draw(st.booleans()):
                feeds = _feeding(draw, branches)
                dead = feeds[3]
            else:
                dead = _free_dead(draw, [out for out, _, _ in branches])
        names, labels, next_bound = [], [], 0.0
        for j, ((out, ksize, g), d) in enumerate(zip(branches, dead, strict=True)):
            name, label = f"c{k}{j}", f"Conv_{node}"
            w = rng.normal(0, 1 / np.sqrt(width // g * ksize), (out, width // g, ksize))
            spread = np.abs(w).sum(axis=(1, 2)) * bound  # max |W x| on the zero series
            b = 1.0 + spread
            w[sorted(d)], b[sorted(d)] = 0.0, -1.0
            values[f"{name}_w"], values[f"{name}_b"] = w, b
            live = [c for c in range(out) if c not in d]
            next_bound = max(next_bound, *(b[c] + spread[c] for c in live), 0.0)
            pads, group = (ksize - 1) // 2, f"group = {g}, " if g > 1 else ""
            body.append(
                f"{name} = Conv <{group}pads = [{pads}, {pads}]> ({prev}, {name}_w, {name}_b)"
            )
            planted[label], widths[label] = tuple(sorted(d)), out
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
        pending = None
        if feeds is not None:
            positions = tuple((lbl, c) for lbl in labels for c in range(widths[lbl]))
            pending = (*feeds[:3], positions)
    head = draw(st.sampled_from(list(HEADS)))
    features = width * G.L if head == "flatten" else width
    values["fc_w"] = rng.normal(0, 1 / np.sqrt(features), (2, features)) / max(1.0, bound)
    values["fc_b"] = rng.normal(0, 0.1, 2)
    if head == "attention":  # its Conv is a source of one channel, pinned, never removed
        label = f"Conv_{len(body) + 1}"
        planted[label], widths[label] = (), 1
        values["att_w"] = rng.normal(0, 1 / np.sqrt(width), (1, width, 1))
        values["att_b"] = rng.normal(0, 0.1, 1)
    body.append(HEADS[head].format(prev=prev))
    model = G.build("\n".join(body), values)
    for i, n in enumerate(model.graph.node):  # the names the pass would give them
        n.name = f"{n.op_type}_{i}"
    grouped_ = tuple(grouped)
    return Net(model, seed, planted, widths, tuple(stages), tuple(concats), grouped_, exact)


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


def _group_attr(node: onnx.NodeProto) -> int:
    return next(
        (onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1
    )


def _check_grouped(oracle: Grouped, removed: Mapping[str, tuple[int, ...]], net: Net, nodes):
    """Removed per input block and per output group, and ``group``, as the oracle says."""
    gone = [c in removed[lbl] for lbl, c in oracle.inputs]
    b_in, b_out = len(gone) // oracle.groups, net.width[oracle.label] // oracle.groups
    assert oracle.removed_in == tuple(
        sum(gone[j * b_in : (j + 1) * b_in]) for j in range(oracle.groups)
    )
    assert oracle.removed_out == tuple(
        sum(c // b_out == j for c in removed[oracle.label]) for j in range(oracle.groups)
    )
    assert _group_attr(nodes[oracle.label]) == oracle.group


@given(conv_nets())
def test_dead_removes_exactly_the_planted_channels(net: Net) -> None:
    before = net.model.SerializeToString()
    result = compress(net.model, Calibration({"x": calibration_inputs()}, None), holdout=0.0)
    assert net.model.SerializeToString() == before
    removed = removed_channels(result)
    assert all(set(removed[lbl]) <= set(dead) for lbl, dead in net.planted.items())
    if net.exact:
        assert removed == dict(net.planted)
    assert result.verified
    fresh = {"x": G.inputs(5, seed=123)}
    expected = run_model(net.model, fresh)
    report = compare(expected, run_model(result.model, fresh), atol=1e-6, rtol=1e-5)
    assert report.within_tolerance, report
    nodes = {n.name: n for n in result.model.graph.node}
    for oracle in net.grouped:
        _check_grouped(oracle, removed, net, nodes)
    # structure: whole removed sources are gone, their Concat reads fewer inputs
    gone = {label for label, r in removed.items() if len(r) == net.width[label]}
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
