"""Sequential reconstruction: refit every consumer of pruned channels to the original network.

After ``prune`` removes channels, each channel-mixing consumer k (a Conv of group 1,
any kernel, dilation or stride; a Gemm; a MatMul) that reads a removed position, or
whose input comes from a node already refitted, is refitted so that its output
reproduces the *original* network's output at that point — the pre-BN conv output,
the logits for a Gemm head — from the input the pruned-and-refitted upstream actually
gives it on the calibration set (ThiNet; He et al. 2017; the layer-wise sequential
reconstruction of OBC / SparseGPT). The fit is ridge least squares towards the pruned
weights, streamed over batches, with λ chosen on held-out samples (``lsq``). A depthwise
Conv downstream of a refit gets a per-channel scale and bias correction instead (FLAP's
bias compensation, with a scale). Only the kept output channels are fitted.

Cost. At most ``MAX_SAMPLES`` calibration series (a seeded subset) are read: 512 series
give a Gram matrix ≥ 512 · L_out rows, far more than the C·k + 1 columns of any
consumer here. Per 1-D stride-1 Conv of kernel k the Gram matrix costs O(k · N · C² · L)
(``conv_gram``: no unfolded rows are formed; the Convs that read one tensor share it).

Order. The nodes to refit get a *level*: 1 + the highest level among the refitted nodes
upstream of them (0 when none). Nodes of one level never feed each other, so one
onnxruntime pass of the current model (their inputs) and one of the original (their
targets) per level serve all of them, whatever the number of layers. Each pass starts
from the frontier the pass before it stored (``checkpoint``: the tensors no later refit
can change) and runs only the nodes between it and the level's tensors, so the passes
of a reconstruction cost about one whole pass of each model, not levels / 2; memory
for the frontier is bounded (``checkpoint.BUDGET``), above it a pass starts from the
input.

Not refitted (kept as ``prune`` left them, their ``mean`` bias fold included, and
named in ``ReconstructReport.skipped``): grouped Convs that are not depthwise, Convs
that are not 1-D or keep an ``auto_pad``, and Gemm / MatMul over more than
``rules.REFIT_FEATURES`` features. The input models are never changed; the result keeps
the model's float dtype (statistics in float64, weights cast back).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from dsp_deploy.compress.checkpoint import Checkpointed, frontiers, plain
from dsp_deploy.compress.graph import attr, normalised
from dsp_deploy.compress.lsq import HOLD_EVERY, one_blas_thread
from dsp_deploy.compress.plan import PruningPlan
from dsp_deploy.compress.refit import (
    CONV,
    DEPTHWISE,
    GEMM,
    MATMUL,
    LevelFit,
    Target,
    prior,
    write,
)
from dsp_deploy.compress.rules import REFIT_FEATURES
from dsp_deploy.inference import batches
from dsp_deploy.irgraph import constant_value, finish
from dsp_deploy.passes import copy_model

__all__ = ["ReconstructReport", "Refitted", "reconstruct"]

logger = logging.getLogger(__name__)

MAX_SAMPLES = 512  # series a reconstruction reads (its cost is passes × samples)


@dataclass(frozen=True)
class Refitted:
    """One node refitted: its kind, level and the ridge λ chosen (None: depthwise)."""

    node: str
    kind: str
    level: int
    ridge: float | None


@dataclass(frozen=True)
class ReconstructReport:
    refits: tuple[Refitted, ...]
    levels: int
    skipped: tuple[tuple[str, str], ...]  # (node, why it was not refitted)


@dataclass(frozen=True)
class Reconstructed:
    model: onnx.ModelProto
    report: ReconstructReport


def _depthwise(node: ir.Node) -> bool:
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return False
    w = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    g = attr(node, "group", 1)
    return w is not None and w.ndim == 3 and g > 1 and w.shape[1] == 1 and w.shape[0] == g


def _unfit(node: ir.Node, kind: str) -> str | None:
    """Why the node cannot be refitted (None: it can)."""
    w = constant_value(node.inputs[1])
    if w is None:
        return "its weight is not a constant"
    if kind == CONV:
        if attr(node, "group", 1) != 1:
            return "a grouped Conv"
        if w.ndim != 3 or attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return "not a 1-D Conv with explicit pads"
        return None
    features = w.shape[1 if kind == GEMM and attr(node, "transB", 0) else 0] if w.ndim == 2 else 0
    if w.ndim != 2 or features > REFIT_FEATURES:
        return f"more than {REFIT_FEATURES} input features"
    return None


def _rows(layout: Sequence[int], removed: frozenset[int]) -> tuple[int, ...]:
    return tuple(p for p, a in enumerate(layout) if a not in removed)


def _candidates(plan: PruningPlan, names: Sequence[str], nodes: Mapping[str, ir.Node]):
    """(name → (kind, reads a removed position, kept output rows, bias Add)), skipped."""
    analysis, removed = plan.analysis, plan.removed_atoms
    sources = {s.node: s.atoms for s in analysis.sources}
    found, skipped = {}, []
    for c in analysis.consumers:
        name = names[c.node]
        node = nodes.get(name)
        if node is None:
            continue
        why = _unfit(node, c.kind)
        reads = any(a in removed for a in c.layout)
        if why is not None:
            if reads:
                skipped.append((name, why))
            found[name] = (None, reads, (), None)
            continue
        rows = _rows(sources[c.node], removed) if c.node in sources else ()
        bias = names[c.bias[0]] if c.kind == MATMUL and c.bias is not None else None
        found[name] = (c.kind, reads, rows, bias)
    for name, node in nodes.items():
        if name not in found and _depthwise(node):
            layout = analysis.layouts.get(node.inputs[0].name)
            found[name] = (DEPTHWISE, False, _rows(layout, removed) if layout else (), None)
    return found, tuple(skipped)


def _targets(graph: ir.Graph, found: Mapping) -> tuple[Target, ...]:
    """The nodes to refit with their levels, in graph (topological) order."""
    depth: dict[ir.Value, tuple[int, bool]] = {}  # (level upstream, changed upstream)
    out = []
    for node in graph:
        ups = [depth.get(v, (0, False)) for v in node.inputs if v is not None]
        level, dirty = max((u[0] for u in ups), default=0), any(u[1] for u in ups)
        kind, reads, rows, bias = found.get(node.name, (None, False, (), None))
        if kind is not None and (reads or dirty):
            level += 1
            fetch = node.outputs[0].name if kind == DEPTHWISE else node.inputs[0].name
            target = node.outputs[0].name
            if bias is not None:
                target = next(u.node for u in node.outputs[0].uses()).outputs[0].name
            out.append(Target(node.name, kind, fetch, target, rows, level, bias))
        for v in node.outputs:
            depth[v] = (level, dirty or reads or kind is not None and level > 0)
    return tuple(out)


def _held(start: int, count: int, total: int) -> np.ndarray:
    index = np.arange(start, start + count)
    return index % HOLD_EVERY == HOLD_EVERY - 1 if total >= 2 * HOLD_EVERY else index < 0


def _fit_level(model: ir.Model, sides: tuple[Checkpointed, Checkpointed], level, keeps,
               inputs, batch_size: int) -> list[Refitted]:  # fmt: skip
    """Fit the Targets ``level`` on one pass of each side (current, original) and write
    them into ``model``; ``keeps``: the frontier each side stores for the next level."""
    nodes = {n.name: n for n in model.graph}
    fetch = list(dict.fromkeys(t.fetch for t in level))  # Convs after one bottleneck share it
    target = list(dict.fromkeys(t.target for t in level))
    current, reference = sides
    current.begin(model, fetch, keeps[0])
    reference.begin(None, target, keeps[1])
    fits = LevelFit(nodes, level)
    total, start = len(next(iter(inputs.values()))), 0
    for b, feed in enumerate(batches(inputs, batch_size)):
        xs = dict(zip(fetch, _float64(current.batch(b, feed)), strict=True))
        ys = dict(zip(target, _float64(reference.batch(b, feed)), strict=True))
        held = _held(start, len(xs[fetch[0]]), total)
        start += len(held)
        fits.add([xs[t.fetch] for t in level], [ys[t.target] for t in level], held)
    current.end()
    reference.end()
    return [_solve(model, nodes, fit, t) for fit, t in zip(fits.fits(), level, strict=True)]


def _float64(values: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [v.astype(np.float64) for v in values]


def _solve(model: ir.Model, nodes: dict[str, ir.Node], fit, t: Target) -> Refitted:
    node = nodes[t.node]
    if t.kind == DEPTHWISE:
        solved, lam = fit.solve(), None
    else:
        solved, lam = fit.solve(prior(node, t, nodes))
    write(model.graph, node, t, solved, nodes)
    return Refitted(t.node, t.kind, t.level, lam)


def _subset(inputs: Mapping[str, np.ndarray], cap: int) -> Mapping[str, np.ndarray]:
    n = len(next(iter(inputs.values())))
    if n <= cap:
        return inputs
    keep = np.sort(np.random.default_rng(0).permutation(n)[:cap])
    return {k: v[keep] for k, v in inputs.items()}


def reconstruct(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    plan: PruningPlan,
    inputs: Mapping[str, np.ndarray],
    *,
    batch_size: int = 64,
    threads: int | None = None,
    max_samples: int = MAX_SAMPLES,
) -> Reconstructed:
    """``pruned`` (``prune(original, plan)``) with its consumers refitted to ``original``
    on ``inputs`` (at most ``max_samples`` of them, a seeded subset; module docstring);
    neither model is changed."""
    inputs = _subset(inputs, max_samples)
    normal = normalised(original)
    names = tuple(n.name for n in normal.graph)
    model = ir.from_proto(copy_model(pruned))
    found, skipped = _candidates(plan, names, {n.name: n for n in model.graph})
    targets = _targets(model.graph, found)
    levels = max((t.level for t in targets), default=0)
    with one_blas_thread():
        refits = _fit_levels(model, normal, targets, inputs, (batch_size, threads))
    logger.info("reconstructed %d nodes in %d levels", len(refits), levels)
    return Reconstructed(ir.to_proto(model), ReconstructReport(tuple(refits), levels, skipped))


def _frontiers(current: ir.Model, reference: ir.Model, targets, levels: int):
    """Per level, the frontier each side keeps for the next (``checkpoint.frontiers``)."""
    if not (plain(current) and plain(reference)):
        return [((), ())] * levels
    made = {o.name: n.name for n in reference.graph for o in n.outputs}
    fetched, aimed = {}, {}
    for t in targets:
        fetched[t.fetch] = max(fetched.get(t.fetch, 0), t.level)
        aimed[t.target] = max(aimed.get(t.target, 0), t.level)
    seeds = {t.node: t.level for t in targets}
    produced = {made[t.target]: t.level for t in targets if t.target in made}
    ours = frontiers(current, seeds, fetched, levels)
    theirs = frontiers(reference, produced, aimed, levels)
    return list(zip(ours, theirs, strict=True))


def _fit_levels(model: ir.Model, normal: ir.Model, targets, inputs, opts) -> list[Refitted]:
    batch_size, threads = opts
    refits: list[Refitted] = []
    levels = max((t.level for t in targets), default=0)
    if targets:
        keeps = _frontiers(model, normal, targets, levels)
        count = -(-len(next(iter(inputs.values()))) // batch_size)
        sides = (Checkpointed(count, threads), Checkpointed(count, threads, model=normal))
        for level in range(1, levels + 1):
            mine = [t for t in targets if t.level == level]
            refits += _fit_level(model, sides, mine, keeps[level - 1], inputs, batch_size)
        finish(model)
    return refits
