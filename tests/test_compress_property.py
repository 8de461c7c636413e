"""Property tests: random conv graphs with planted dead channels.

``dead`` removes every planted channel and no live one (a channel that is non-zero on
some calibration sample), never empties a layer, leaves the input model untouched and
reproduces the outputs on fresh inputs. ``HYPOTHESIS_PROFILE=thorough`` runs more cases.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsp_deploy.compress.calibrate import run_model, with_outputs
from dsp_deploy.compress.groups import find_groups
from dsp_deploy.compress.pipeline import compress
from dsp_deploy.compress.plan import empty_plan
from dsp_deploy.compress.prune import prune
from dsp_deploy.compress.verify import compare
from dsp_deploy.io import Calibration

sys.path.insert(0, str(Path(__file__).parent))
import onnx_graphs as G  # noqa: E402

settings.register_profile(
    "default", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@st.composite
def conv_nets(draw):
    """(model, planted dead channels per source label) for a random chain, maybe a Concat."""
    w = G.Weights(draw(st.integers(0, 2**16)))
    layers = draw(st.integers(1, 3))
    concat = draw(st.booleans())
    body, planted, width, prev, node = [], {}, 1, "x", 0
    where: dict[str, tuple[str, int]] = {}  # source label -> (its ReLU tensor, offset)
    for k in range(layers):
        parts, offset = [], 0
        for branch in range(2 if concat and k == 0 else 1):
            out, ksize = draw(st.integers(2, 5)), draw(st.sampled_from([1, 3, 5]))
            dead = draw(st.sets(st.integers(0, out - 1), max_size=out - 1))
            name = f"c{k}{branch}"
            w.conv(name, out, width, ksize, dead)
            w.values[f"{name}_b"][[c for c in range(out) if c not in dead]] += 1.0
            pads = (ksize - 1) // 2
            body.append(f"{name} = Conv <pads = [{pads}, {pads}]> ({prev}, {name}_w, {name}_b)")
            planted[f"Conv_{node}"] = tuple(sorted(dead))
            where[f"Conv_{node}"] = (f"r{k}", offset)
            offset += out
            parts.append(name)
            node += 1
        if len(parts) > 1:
            body.append(f"cat{k} = Concat <axis = 1> ({', '.join(parts)})")
            node += 1
            src = f"cat{k}"
        else:
            src = parts[0]
        body.append(f"r{k} = Relu ({src})")
        node += 1
        prev, width = f"r{k}", sum(w.values[f"{p}_w"].shape[0] for p in parts)
    body.append(f"h = Identity ({prev})")
    w.dense("fc", width, 2)
    return G.build("\n".join(body) + G.HEAD, w.values), planted, where


@given(conv_nets())
def test_dead_removes_the_planted_channels_and_no_live_one(net) -> None:
    model, planted, where = net
    before = model.SerializeToString()
    x = G.inputs(24)
    result = compress(model, Calibration({"x": x}, None), batch_size=8, holdout=0.0)
    assert model.SerializeToString() == before
    removed = plan_removed(result)
    # A live channel may be zero by chance on these samples (negative weights on ReLU
    # outputs); "live" is judged on the data, independently of the pass's statistics.
    relus = sorted({t for t, _ in where.values()})
    values = dict(zip(relus, run_model(with_outputs(model, relus), {"x": x})[1:], strict=True))
    for label, channels in removed.items():
        assert set(planted[label]) <= set(channels)
        tensor, offset = where[label]
        for c in set(channels) - set(planted[label]):
            assert not values[tensor][:, offset + c].any()
    assert all(r.channels[1] >= 1 for r in result.layers)
    fresh = {"x": G.inputs(5, seed=123)}
    report = compare(run_model(model, fresh), run_model(result.model, fresh), atol=1e-6, rtol=1e-5)
    assert result.verified
    # Planted channels are dead for every input; chance-dead ones may wake on fresh data.
    assert report.within_tolerance or removed != planted


def plan_removed(result) -> dict[str, tuple[int, ...]]:
    analysis, removed = result.plan.analysis, result.plan.removed_atoms
    return {
        s.label: tuple(k for k, a in enumerate(s.atoms) if a in removed)
        for s in analysis.sources
        if s.node >= 0
    }


@given(conv_nets())
def test_empty_plan_reproduces_outputs_and_input_is_untouched(net) -> None:
    model = net[0]
    before = model.SerializeToString()
    out = prune(model, empty_plan(find_groups(model)))
    assert model.SerializeToString() == before
    fresh = {"x": G.inputs(4, seed=7)}
    np.testing.assert_array_equal(run_model(model, fresh)[0], run_model(out, fresh)[0])
