"""Apply a ``PruningPlan``: a pure function from (model, plan) to a new, smaller model.

``Prune(plan)`` is a functional ``ModelPass`` on onnx-ir (``prune`` its protobuf
wrapper): it never touches its input. It normalises its clone as ``find_groups`` did
(``graph.Normalise``); a plan names nodes by position and tensors by name, which index
the same nodes there because normalisation is deterministic and keeps node order; the
plan is applied only when that model's fingerprint is the one the plan was made for
(``compress.fingerprint``), else ``PlanError``. Steps:

1. compensation on the consumers, in original input positions:
   fold   Conv: b[o] += Σ_{p in block(o)} v_p · Σ_taps W[o, p − j·b_in, ·] (one block, j = 0,
          unless grouped); Gemm / MatMul: C[o] += α/β · Σ_p v_p · B'[p, o] (B' = B for
          transB 0 and MatMul, Bᵀ for transB 1). The bias is the consumer's input 2 (added
          when missing: a MatMul that gains one becomes ``Gemm(A, B, C)``, equal for a 2-D
          A) or the constant of the ``Add`` that follows a MatMul;
   refit  W̃' = W̃ G[:, K] (G[K, K] + εI)⁻¹ with W̃ = [W | b] and K = kept positions + bias
          (ε = 1e-9 · mean diag G, a guard against exactly collinear channels);
2. every ``Slice`` keeps the positions whose atom survives (``np.take`` on its axis; a
   Reshape's literal channel count becomes the number kept);
   a depthwise Conv gets ``group`` = its remaining channels; a grouped Conv's W becomes
   the stack of W[R_j, K_j] over its staying groups j (``rules`` has the algebra), its
   ``group`` their number; each op's ``finish`` (``ops``) writes such attributes;
3. a tensor left with no channel loses its Concat edge, so the nodes computing it (the
   source Conv and its per-channel chain) become unused;
4. changed parameters become new initializers (named ``<old>_pruned`` by onnx-ir's
   ``NameFixPass``, which keeps names unique), so a tensor shared by two nodes is never
   sliced twice; the readers of one shared tensor whose new values are equal (their
   nodes shrank alike) read one new initializer, the others get one copy each; nodes and
   initializers nobody reads are dropped (``RemoveUnusedNodesPass``);
5. the shapes of intermediate values are cleared and inferred again, then checked: every
   value that had a shape has one of the same rank, and a tensor carrying channels has
   as many on axis 1 as the plan keeps (else ``PlanError``); graph inputs, outputs
   (names, dynamic dims), opset, doc strings and ``metadata_props`` stay.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnx_ir.passes.common.naming import NameFixPass, SimpleNameGenerator

from dsp_deploy.compress import ops
from dsp_deploy.compress.fingerprint import check_fingerprint
from dsp_deploy.compress.flow import Edit
from dsp_deploy.compress.graph import (
    attr,
    infer_shapes,
    intermediates,
    normalise_model,
    shape_of,
)
from dsp_deploy.compress.plan import Compensation, PruningPlan
from dsp_deploy.compress.rules import COUNT, DEPTHWISE, PRODUCER, Blocks, Consumer
from dsp_deploy.errors import PlanError
from dsp_deploy.irgraph import constant_value
from dsp_deploy.passes import ModelPass, apply

logger = logging.getLogger(__name__)

Key = tuple[int, int]  # (node position, input index)


class _Params:
    """Parameter values by (node position, input), starting from the model's constants."""

    def __init__(self, nodes: tuple[ir.Node, ...]) -> None:
        self.nodes = nodes
        self.changed: dict[Key, np.ndarray] = {}

    def get(self, node: int, k: int) -> np.ndarray | None:
        if (node, k) in self.changed:
            return self.changed[(node, k)]
        inputs = self.nodes[node].inputs
        return constant_value(inputs[k]) if k < len(inputs) else None

    def set(self, node: int, k: int, value: np.ndarray) -> None:
        self.changed[(node, k)] = value


def _fold(params: _Params, c: Consumer, comp: Compensation) -> None:
    node = params.nodes[c.node]
    weight = params.get(c.node, 1)
    w = weight.astype(np.float64)
    v = np.zeros(len(c.layout))
    for p, value in comp.values:
        v[p] = value
    if c.kind == "conv":
        taps = w.reshape(w.shape[0], w.shape[1], -1).sum(axis=2)  # (C_out, b_in)
        by_group = taps.reshape(c.groups, -1, taps.shape[1])
        delta = np.einsum("jok,jk->jo", by_group, v.reshape(c.groups, -1)).reshape(-1)
    else:
        alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
        b = w.T if attr(node, "transB", 0) else w
        delta = alpha / beta * (v @ b)
    bias = params.get(*c.bias_at)
    # A new bias must match the weight's element type; an old one keeps its own shape
    # (a (1, n) or scalar bias broadcasts the same way after the sum).
    new = delta if bias is None else bias.astype(np.float64) + delta
    params.set(*c.bias_at, new.astype(weight.dtype if bias is None else bias.dtype))


def _affine(params: _Params, c: Consumer) -> tuple[np.ndarray, np.ndarray]:
    """The consumer as y = W x + b per position: W (out, positions), b (out,)."""
    node = params.nodes[c.node]
    w = params.get(c.node, 1).astype(np.float64)
    bias = params.get(*c.bias_at)
    if c.kind == "conv":
        mat = w.reshape(w.shape[0], w.shape[1])
        return mat, np.zeros(len(mat)) if bias is None else bias.astype(np.float64)
    alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
    mat = alpha * (w if attr(node, "transB", 0) else w.T)
    n = len(mat)
    b = np.zeros(n) if bias is None else beta * np.broadcast_to(bias, (1, n)).reshape(n)
    return mat, np.asarray(b, dtype=np.float64)


def _refit(params: _Params, c: Consumer, comp: Compensation, removed: frozenset[int]) -> None:
    node = params.nodes[c.node]
    mat, b = _affine(params, c)
    full = np.concatenate([mat, b[:, None]], axis=1)
    keep = [p for p, a in enumerate(c.layout) if a not in removed] + [len(c.layout)]
    g = comp.gram
    sub = g[np.ix_(keep, keep)]
    sub = sub + 1e-9 * np.mean(np.diag(sub)) * np.eye(len(keep))
    fitted = np.linalg.solve(sub, (full @ g[:, keep]).T).T
    new = np.zeros_like(full)
    new[:, keep] = fitted
    w_new, b_new = new[:, :-1], new[:, -1]
    original = params.get(c.node, 1)
    if c.kind == "conv":
        params.set(c.node, 1, w_new.reshape(original.shape).astype(original.dtype))
        params.set(*c.bias_at, b_new.astype(original.dtype))
        return
    alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
    w_new = w_new / alpha
    params.set(c.node, 1, (w_new if attr(node, "transB", 0) else w_new.T).astype(original.dtype))
    bias = params.get(*c.bias_at)
    shape = bias.shape if bias is not None and bias.size == len(b_new) else b_new.shape
    params.set(*c.bias_at, (b_new / beta).reshape(shape).astype(original.dtype))


def _compensate(params: _Params, plan: PruningPlan, removed: frozenset[int]) -> None:
    consumers = {c.node: c for c in plan.analysis.consumers}
    for comp in plan.compensations:
        c = consumers[comp.node]
        if comp.gram is not None:
            _refit(params, c, comp, removed)
        else:
            _fold(params, c, comp)


def _slice(params: _Params, plan: PruningPlan, removed: frozenset[int]) -> dict[int, int]:
    groups: dict[int, int] = {}
    for s in plan.analysis.slices:
        keep = [p for p, a in enumerate(s.layout) if a not in removed]
        if len(keep) == len(s.layout) or not keep:  # not keep: the node goes (_cut_empty)
            continue
        value = params.get(s.node, s.input)
        if s.role == COUNT:
            params.set(s.node, s.input, _with_entry(value, s.axis, len(keep)))
            continue
        params.set(s.node, s.input, np.take(value, keep, axis=s.axis))
        if s.role == DEPTHWISE:
            groups[s.node] = len(keep)
        if s.role == PRODUCER and s.input == 1 and _added_conv_bias(params, s.node):
            # A bias that compensation gave a bias-free Conv follows its output channels.
            params.set(s.node, 2, np.take(params.get(s.node, 2), keep, axis=0))
    return groups


def _regroup(params: _Params, b: Blocks, removed: frozenset[int]) -> int | None:
    """Rewrite a grouped Conv's W (and B) from its staying groups; returns its new
    ``group`` (None: nothing removed, or every output goes and the Conv with them)."""
    w = params.get(b.node, 1)
    b_out, b_in = len(b.outputs) // b.groups, w.shape[1]
    rows = [
        [j * b_out + p for p, a in enumerate(b.output_block(j)) if a not in removed]
        for j in range(b.groups)
    ]
    cols = [
        [c for c in range(b_in) if b.inputs is None or b.inputs[j * b_in + c] not in removed]
        for j in range(b.groups)
    ]
    touched = any(a in removed for a in (*b.outputs, *(b.inputs or ())))
    if not touched or not any(rows):
        return None
    stay = [j for j in range(b.groups) if rows[j] or cols[j]]
    sizes = {(len(rows[j]), len(cols[j])) for j in stay}
    if len(sizes) != 1 or 0 in next(iter(sizes)):
        name = params.nodes[b.node].name
        raise PlanError(f"plan leaves the groups of grouped Conv {name} unequal or empty")
    params.set(b.node, 1, np.concatenate([w[rows[j]][:, cols[j]] for j in stay]))
    bias = params.get(b.node, 2)
    if bias is not None:
        params.set(b.node, 2, bias[[r for j in stay for r in rows[j]]])
    return len(stay)


def _with_entry(value: np.ndarray, index: int, entry: int) -> np.ndarray:
    out = value.copy()
    out[index] = entry
    return out


def _added_conv_bias(params: _Params, node: int) -> bool:
    inputs = params.nodes[node].inputs
    return (node, 2) in params.changed and (len(inputs) < 3 or inputs[2] is None)


def _shared_key(old: ir.Value | None, value: np.ndarray) -> tuple | None:
    """Readers of one tensor ``old`` whose new values are equal share one initializer."""
    if old is None:
        return None  # a new bias: its node's own
    return old.name, value.dtype.str, value.shape, hashlib.sha256(value.data).digest()


class _Preferred(SimpleNameGenerator):
    """New initializers are named after the tensor they replace: ``w_pruned``, then
    ``w_pruned2``… for further copies of ``w`` (``NameFixPass`` settles any clash)."""

    def __init__(self, names: dict[ir.Value, str]) -> None:
        bases = Counter()
        self.names = {}
        for value, base in names.items():
            bases[base] += 1
            self.names[value] = base if bases[base] == 1 else f"{base}{bases[base]}"

    def generate_value_name(self, value: ir.Value) -> str:
        return self.names.get(value) or value.name or "v"


def _new_value(params: _Params, i: int, k: int, value: np.ndarray, new: dict) -> ir.Value:
    """The initializer node ``i`` reads at ``k``: shared with equal readers of one tensor."""
    node = params.nodes[i]
    old = node.inputs[k] if k < len(node.inputs) else None
    value = np.ascontiguousarray(value)
    key = _shared_key(old, value)
    if key in new:
        return new[key]
    tensor = ir.Tensor(value)
    made = ir.Value(shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor)
    new[key or made] = made
    made.meta["preferred"] = f"{old.name}_pruned" if old is not None else f"{node.name}_bias"
    return made


def _write(model: ir.Model, params: _Params) -> None:
    """Every changed parameter read from a new initializer (named by ``NameFixPass``)."""
    made: dict = {}
    for (i, k), value in sorted(params.changed.items()):
        node = params.nodes[i]
        if len(node.inputs) <= k:
            node.resize_inputs(k + 1)
        node.replace_input_with(k, _new_value(params, i, k, value, made))
    names = {v: v.meta["preferred"] for v in made.values()}
    NameFixPass(_Preferred(names))(model)
    for value in made.values():
        value.const_value.name = value.name
        model.graph.register_initializer(value)


def _finish(nodes: tuple[ir.Node, ...], groups: dict[int, int]) -> None:
    """Each op's own rewrite after slicing (``OpEntry.finish``: Conv groups, MatMul → Gemm)."""
    for i, node in enumerate(nodes):
        entry = ops.entry(node)
        if entry is not None and entry.finish is not None:
            entry.finish(node, Edit(group=groups.get(i)))


def _keep_inputs(node: ir.Node, kept: list[ir.Value | None]) -> None:
    for j, value in enumerate(kept):
        node.replace_input_with(j, value)
    node.resize_inputs(len(kept))


def _cut_empty(nodes: tuple[ir.Node, ...], plan: PruningPlan, removed: frozenset[int]) -> None:
    """Unhook tensors left with no channel: Concat drops them; every other reader must
    be a node whose own channel outputs are empty too (it goes with them)."""
    layouts = plan.analysis.layouts
    empty = {t for t, lay in layouts.items() if lay and all(a in removed for a in lay)}
    if not empty:
        return
    for node in nodes:
        read = [v for v in node.inputs if v is not None and v.name in empty]
        if not read:
            continue
        if node.op_type == "Concat" and len(read) < len(node.inputs):
            _keep_inputs(node, [v for v in node.inputs if v is None or v.name not in empty])
            continue
        tracked = [o.name for o in node.outputs if o.name in layouts]
        if not tracked or not all(o in empty for o in tracked):
            raise PlanError(f"plan empties {read[0].name}, which {node.name} still needs")
    logger.debug("deleted %d empty tensors and their nodes", len(empty))


def _drop_unused(model: ir.Model) -> None:
    RemoveUnusedNodesPass()(model)
    graph = model.graph
    # Old IRs list initializers as inputs too; drop those that went, keep real inputs.
    for value in [v for v in graph.inputs if v.name in graph.initializers and not v.uses()]:
        graph.inputs.remove(value)
        del graph.initializers[value.name]


def _reshaped(model: ir.Model, plan: PruningPlan, removed: frozenset[int], checked: bool) -> None:
    """Clear the intermediate shapes; ``checked``: infer them again and check those pruning
    changed (module docstring): a tensor carrying channels keeps the rank the analysis
    saw, and axis 1 holds the positions kept."""
    for value in intermediates(model.graph):
        value.shape = None
    if not checked:
        return
    infer_shapes(model)
    seen, layouts = plan.analysis.shapes, plan.analysis.layouts
    for value in intermediates(model.graph):
        old, new = seen.get(value.name), shape_of(value)
        if old is None:
            continue
        if new is None or len(new) != len(old):
            raise PlanError(f"pruned tensor {value.name} has shape {new}; expected rank {len(old)}")
        kept = sum(a not in removed for a in layouts[value.name])
        if len(new) > 1 and new[1] not in (None, kept):
            raise PlanError(f"pruned tensor {value.name} has {new[1]} channels; expected {kept}")


@dataclass(frozen=True)
class PruneReport:
    """Units and atoms removed, consumers compensated."""

    units: int
    atoms: int
    compensated: int


class Prune(ModelPass[PruneReport]):
    """Remove the plan's units from the model the plan was made for (module docstring)."""

    def __init__(self, plan: PruningPlan) -> None:
        super().__init__()
        self.plan = plan

    def rewrite(self, model: ir.Model) -> tuple[bool, PruneReport]:
        normalise_model(model, shapes=False)
        check_fingerprint(model, self.plan.fingerprint)
        return _prune_normal(model, self.plan)


def _prune_normal(
    model: ir.Model, plan: PruningPlan, checked: bool = True
) -> tuple[bool, PruneReport]:
    """Steps 1-5 of the module docstring on ``model``, normalised and the plan's own;
    ``checked=False`` only clears the intermediate shapes (step 5 without inference)."""
    nodes, removed = tuple(model.graph), plan.removed_atoms
    params = _Params(nodes)
    _compensate(params, plan, removed)
    groups = _slice(params, plan, removed)
    for b in plan.analysis.blocks:
        if (group := _regroup(params, b, removed)) is not None:
            groups[b.node] = group
    _cut_empty(nodes, plan, removed)
    _write(model, params)
    _finish(nodes, groups)
    _drop_unused(model)
    _reshaped(model, plan, removed, checked)
    logger.info("pruned %d units (%d atoms)", len(plan.remove), len(removed))
    report = PruneReport(len(plan.remove), len(removed), len(plan.compensations))
    return bool(removed or plan.compensations), report


def prune(model: onnx.ModelProto, plan: PruningPlan) -> onnx.ModelProto:
    """A new model with the plan's units removed; ``model`` itself is left untouched.

    Raises ``PlanError`` when ``plan`` was made for another model (or the same nodes in
    another order).
    """
    return apply(Prune(plan), model).model


def prune_analysed(plan: PruningPlan, *, checked: bool = True) -> onnx.ModelProto:
    """``prune`` of the plan's own model, from the normalised model its analysis holds
    (a clone of ``ChannelAnalysis.model``): no conversion, normalisation or fingerprint.
    ``checked=False``: step 5 without inference (intermediates without shapes), for a
    model that is only run (the k-fold report's)."""
    normal = plan.analysis.model
    if normal is None:
        raise PlanError("the plan's analysis holds no model; prune(model, plan) takes one")
    clone = normal.clone()
    _prune_normal(clone, plan, checked)
    return ir.to_proto(clone)
