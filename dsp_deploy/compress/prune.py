"""Apply a ``PruningPlan``: a pure function from (model, plan) to a new, smaller model.

The input model is never mutated: the pass works on ``normalise(model)``, a copy. A plan
names nodes by position and tensors by name, which index the same nodes in the model and
in its copy because ``normalise`` keeps node order; the plan is applied only when the
copy's fingerprint is the one the plan was made for (``compress.fingerprint``), else
``PlanError``. Steps:

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
   ``group`` their number;
3. a tensor left with no channel loses its Concat edge, so the nodes computing it (the
   source Conv and its per-channel chain) become unused;
4. changed parameters become new initializers under fresh names, so a tensor shared by
   two nodes is never sliced twice; the readers of one shared tensor whose new values
   are equal (their nodes shrank alike) read one new initializer, the others get one
   copy each; nodes and initializers nobody reads are dropped;
5. intermediate ``value_info`` is cleared and shapes are inferred again; graph inputs,
   outputs (names, dynamic dims), opset, doc strings and ``metadata_props`` stay.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import onnx
from onnx import numpy_helper

from dsp_deploy.compress.fingerprint import fingerprint
from dsp_deploy.compress.graph import GraphIndex, attr, drop_unused_nodes, normalise, set_ints
from dsp_deploy.compress.plan import Compensation, PruningPlan
from dsp_deploy.compress.rules import COUNT, DEPTHWISE, PRODUCER, Blocks, Consumer
from dsp_deploy.errors import PlanError

logger = logging.getLogger(__name__)

Key = tuple[int, int]  # (node position, input index)


class _Params:
    """Parameter values by (node, input), starting from the model's constants."""

    def __init__(self, index: GraphIndex) -> None:
        self.index = index
        self.changed: dict[Key, np.ndarray] = {}

    def get(self, node: int, k: int) -> np.ndarray | None:
        if (node, k) in self.changed:
            return self.changed[(node, k)]
        inputs = self.index.nodes[node].input
        return self.index.constants.get(inputs[k]) if k < len(inputs) and inputs[k] else None

    def set(self, node: int, k: int, value: np.ndarray) -> None:
        self.changed[(node, k)] = value


def _fold(params: _Params, c: Consumer, comp: Compensation) -> None:
    node = params.index.nodes[c.node]
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
    node = params.index.nodes[c.node]
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
    node = params.index.nodes[c.node]
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
        name = params.index.nodes[b.node].name
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
    inputs = params.index.nodes[node].input
    return (node, 2) in params.changed and (len(inputs) < 3 or not inputs[2])


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = f"{name}_pruned", 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_pruned{k}"
    taken.add(candidate)
    return candidate


def _shared_key(old: str, value: np.ndarray) -> tuple | None:
    """Readers of one tensor ``old`` whose new values are equal share one initializer."""
    if not old:
        return None  # a new bias: its node's own
    return old, value.dtype.str, value.shape, hashlib.sha256(value.data).digest()


def _write(model: onnx.ModelProto, params: _Params, groups: dict[int, int]) -> None:
    graph = model.graph
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    taken |= {n for node in graph.node for n in node.input} | {i.name for i in graph.input}
    written: dict[tuple, str] = {}
    for (i, k), value in sorted(params.changed.items()):
        node = graph.node[i]
        old = node.input[k] if k < len(node.input) else ""
        value = np.ascontiguousarray(value)
        key = _shared_key(old, value)
        name = written.get(key) if key else None
        if name is None:
            name = _unique(old or f"{node.name}_bias", taken)
            graph.initializer.append(numpy_helper.from_array(value, name))
            if key:
                written[key] = name
        while len(node.input) <= k:
            node.input.append("")
        node.input[k] = name
    for i, group in groups.items():
        set_ints(graph.node[i], "group", group)
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) > 2:  # it took a bias: Gemm(A, B, C)
            node.op_type = "Gemm"


def _cut_empty(graph: onnx.GraphProto, plan: PruningPlan, removed: frozenset[int]) -> None:
    """Unhook tensors left with no channel: Concat drops them; every other reader must
    be a node whose own channel outputs are empty too (it goes with them)."""
    layouts = plan.analysis.layouts
    empty = {t for t, lay in layouts.items() if lay and all(a in removed for a in lay)}
    if not empty:
        return
    for node in graph.node:
        read = [n for n in node.input if n in empty]
        if not read:
            continue
        if node.op_type == "Concat" and len(read) < len(node.input):
            kept = [n for n in node.input if n not in empty]
            del node.input[:]
            node.input.extend(kept)
            continue
        tracked = [o for o in node.output if o in layouts]
        if not tracked or not all(o in empty for o in tracked):
            raise PlanError(f"plan empties {read[0]}, which {node.name} still needs")
    logger.debug("deleted %d empty tensors and their nodes", len(empty))


def _drop_unused(graph: onnx.GraphProto) -> None:
    needed = drop_unused_nodes(graph)
    initializers = {t.name for t in graph.initializer}
    used = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)
    # Old IRs list initializers as inputs too; drop those that went, keep real inputs.
    inputs = [v for v in graph.input if v.name in needed or v.name not in initializers]
    del graph.input[:]
    graph.input.extend(inputs)


def _check_fingerprint(normal: onnx.ModelProto, plan: PruningPlan) -> None:
    found = fingerprint(normal)
    if found != plan.fingerprint:
        raise PlanError(
            f"the plan was made for another model (fingerprint {plan.fingerprint[:12] or 'none'}"
            f" ≠ {found[:12]} of this one); make the plan from this model with find_groups"
        )


def prune(model: onnx.ModelProto, plan: PruningPlan) -> onnx.ModelProto:
    """A new model with the plan's units removed; ``model`` itself is left untouched.

    Raises ``PlanError`` when ``plan`` was made for another model (or the same nodes in
    another order).
    """
    out = normalise(model)
    _check_fingerprint(out, plan)
    index = GraphIndex.build(out)
    removed = plan.removed_atoms
    params = _Params(index)
    _compensate(params, plan, removed)
    groups = _slice(params, plan, removed)
    for b in plan.analysis.blocks:
        if (group := _regroup(params, b, removed)) is not None:
            groups[b.node] = group
    _cut_empty(out.graph, plan, removed)
    _write(out, params, groups)
    _drop_unused(out.graph)
    del out.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    out.graph.value_info.extend(inferred.graph.value_info)
    logger.info("pruned %d units (%d atoms)", len(plan.remove), len(removed))
    return out
