"""One node's refit for ``compress.reconstruct``: read its weights, accumulate, write back.

Every kind is written as y = Wᵀ[x; 1] per output row (``lsq``): a Conv of kernel k over
its unfolded input (W: (C_out, C_in, k) → (C_in·k, C_out), the bias as the last row), a
Gemm as α·op(B) and β·C (written back with α = β = 1, ``transB`` kept), a MatMul as B
and the constant of its bias ``Add`` (none: no intercept). A depthwise Conv is scaled per
channel: W[c] ← a_c W[c], b[c] ← a_c b[c] + e_c. New values are new initializers named
after the node (``<node>_refit_W``), so a tensor shared with another node is never
changed; the old ones go with onnx-ir's unused-node removal at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from dsp_deploy.compress.conv_gram import ConvShape, LagSums
from dsp_deploy.compress.graph import attr
from dsp_deploy.compress.lsq import Depthwise, Normal, row_chunks, unfold
from dsp_deploy.irgraph import constant_value, initializer

__all__ = ["LevelFit", "Target", "accumulate", "new_fit", "prior", "write"]

CONV, GEMM, MATMUL, DEPTHWISE = "conv", "gemm", "matmul", "depthwise"


@dataclass(frozen=True)
class Target:
    """A node to refit: ``fetch`` from the pruned model, ``target`` from the original
    (rows ``rows`` of axis 1; () all); ``bias`` the Add holding a MatMul's bias."""

    node: str
    kind: str
    fetch: str
    target: str
    rows: tuple[int, ...]
    level: int
    bias: str | None = None


def _bias_value(add: ir.Node, matmul_out: ir.Value) -> tuple[int, np.ndarray]:
    k = 1 if add.inputs[0] is matmul_out else 0
    return k, constant_value(add.inputs[k])


def prior(node: ir.Node, t: Target, nodes: dict[str, ir.Node]) -> np.ndarray:
    """The node's current weights as W₀ (features [+ 1], outputs), float64."""
    w = constant_value(node.inputs[1]).astype(np.float64)
    bias = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if t.kind == CONV:
        mat = w.reshape(w.shape[0], -1).T
        b = np.zeros(w.shape[0]) if bias is None else bias.astype(np.float64)
    elif t.kind == GEMM:
        mat = attr(node, "alpha", 1.0) * (w.T if attr(node, "transB", 0) else w)
        b = np.zeros(mat.shape[1])
        if bias is not None:
            b = attr(node, "beta", 1.0) * np.broadcast_to(bias, (1, mat.shape[1])).reshape(-1)
    else:
        mat = w
        if t.bias is None:
            return mat
        value = _bias_value(nodes[t.bias], node.outputs[0])[1].astype(np.float64)
        b = np.broadcast_to(value.reshape(-1), (mat.shape[1],))
    return np.concatenate([mat, np.asarray(b, np.float64)[None, :]], axis=0)


def new_fit(node: ir.Node, t: Target) -> Normal | Depthwise:
    w = constant_value(node.inputs[1])
    if t.kind == DEPTHWISE:
        return Depthwise(w.shape[0])
    features = int(np.prod(w.shape[1:])) if t.kind == CONV else w.shape[0]
    if t.kind == GEMM and attr(node, "transB", 0):
        features = w.shape[1]
    outputs = w.shape[0] if t.kind == CONV else int(np.prod(w.shape)) // features
    intercept = t.kind != MATMUL or t.bias is not None
    return Normal(features + intercept, outputs, intercept)


def _conv_rows(node: ir.Node, x: np.ndarray) -> np.ndarray:
    k = constant_value(node.inputs[1]).shape[2]
    pads = attr(node, "pads", [0, 0])
    return unfold(
        x,
        k,
        attr(node, "dilations", [1])[0],
        attr(node, "strides", [1])[0],
        (pads[0], pads[1]),
    )


def _target_rows(y: np.ndarray, t: Target) -> np.ndarray:
    """(N, O, L…) or (N, O) original outputs → (N·L, O') rows of the kept channels."""
    if t.rows:
        y = np.take(y, t.rows, axis=1)
    if y.ndim == 2:
        return y
    return np.moveaxis(y.reshape(y.shape[0], y.shape[1], -1), 1, 2).reshape(-1, y.shape[1])


def _summed(node: ir.Node, t: Target) -> ConvShape | None:
    """The Conv's shape where its G, B come from lag sums (1-D, stride 1), else None."""
    if t.kind != CONV or attr(node, "strides", [1])[0] != 1:
        return None
    k = constant_value(node.inputs[1]).shape[2]
    pads = attr(node, "pads", [0, 0])
    return ConvShape(k, attr(node, "dilations", [1])[0], (pads[0], pads[1]))


class LevelFit:
    """The fits of one level's Targets, fed batch by batch (``add``), then ``fits()``.
    Stride-1 Convs that read one tensor share its lag sums
    (``conv_gram.LagSums``, one per part: fit and held-out rows), assembled once."""

    def __init__(self, nodes: dict[str, ir.Node], level: Sequence[Target]) -> None:
        self.nodes, self.level = nodes, tuple(level)
        self._fits = [new_fit(nodes[t.node], t) for t in level]
        self.shapes = [_summed(nodes[t.node], t) for t in level]
        self.groups: dict[str, list[int]] = {}
        for i, (t, shape) in enumerate(zip(level, self.shapes, strict=True)):
            if shape is not None:
                self.groups.setdefault(t.fetch, []).append(i)
        self.sums: dict[tuple[str, bool], LagSums] = {}
        self.yy = [dict.fromkeys((False, True), 0.0) for _ in level]

    def add(self, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], held: np.ndarray) -> None:
        """One batch: each Target's input and original output (float64); ``held``: the
        samples held out for choosing λ."""
        for i, t in enumerate(self.level):
            if self.shapes[i] is None:
                accumulate(self._fits[i], self.nodes[t.node], t, xs[i], ys[i], held)
        for fetch, group in self.groups.items():
            for part, mask in ((True, held), (False, ~held)):
                if mask.any():
                    self._add_group(fetch, group, xs[group[0]][mask], [ys[i][mask] for i in group],
                                    part)  # fmt: skip

    def _add_group(self, fetch: str, group: list[int], x, ys, part: bool) -> None:
        ys = [self._kept(i, y) for i, y in zip(group, ys, strict=True)]
        key = (fetch, part)
        if key not in self.sums:
            self.sums[key] = LagSums([self.shapes[i] for i in group], x.shape[1], x.shape[2])
        self.sums[key].add(x, ys)
        for i, y in zip(group, ys, strict=True):
            self.yy[i][part] += float(np.vdot(y, y))

    def _kept(self, i: int, y: np.ndarray) -> np.ndarray:
        rows = self.level[i].rows
        return np.take(y, rows, axis=1) if rows else y

    def fits(self) -> list[Normal | Depthwise]:
        """Every Target's fit, the shared sums added."""
        for (fetch, part), sums in self.sums.items():
            for i, (g, b) in zip(self.groups[fetch], sums.result(), strict=True):
                self._fits[i].add_sums(g, b, self.yy[i][part], part)
        self.sums = {}
        return self._fits


def accumulate(
    fit: Normal | Depthwise, node: ir.Node, t: Target, x: np.ndarray, y: np.ndarray, held
) -> None:
    """Add one batch to a fit that forms its rows (not a Conv with lag sums: ``LevelFit``):
    ``x`` fetched from the pruned model, ``y`` the original's, float64; ``held`` a boolean
    mask of the samples held out for choosing λ."""
    if isinstance(fit, Depthwise):
        fit.add(x, np.take(y, t.rows, axis=1) if t.rows else y)
        return
    for mask in (held, ~held):
        if not mask.any():
            continue
        xs, ys = x[mask], y[mask]
        if t.kind != CONV:
            fit.add(xs.reshape(len(xs), -1), _target_rows(ys, t), bool(mask is held))
            continue
        step = row_chunks(int(np.prod(ys.shape[2:])), fit.features)
        for i in range(0, len(xs), step):
            rows = _conv_rows(node, xs[i : i + step])
            fit.add(rows, _target_rows(ys[i : i + step], t), bool(mask is held))


def _set(graph: ir.Graph, node: ir.Node, k: int, array: np.ndarray, tag: str) -> None:
    name, n = f"{node.name}_refit_{tag}", 1
    while name in graph.initializers:
        n += 1
        name = f"{node.name}_refit_{tag}{n}"
    value = initializer(np.ascontiguousarray(array), name)
    graph.register_initializer(value)
    if len(node.inputs) <= k:
        node.resize_inputs(k + 1)
    node.replace_input_with(k, value)


def write(graph: ir.Graph, node: ir.Node, t: Target, solved, nodes: dict[str, ir.Node]) -> None:
    """Write the solution (``Normal``: W*; ``Depthwise``: (a, e)) into ``node``."""
    w = constant_value(node.inputs[1])
    dtype = w.dtype
    if t.kind == DEPTHWISE:
        a, e = solved
        bias = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        b = np.zeros(len(a)) if bias is None else bias.astype(np.float64)
        _set(graph, node, 1, (w * a.reshape(-1, *([1] * (w.ndim - 1)))).astype(dtype), "W")
        _set(graph, node, 2, (a * b + e).astype(dtype), "B")
        return
    mat = solved[:-1] if t.kind != MATMUL or t.bias is not None else solved
    b = solved[-1]
    if t.kind == CONV:
        _set(graph, node, 1, mat.T.reshape(w.shape).astype(dtype), "W")
        _set(graph, node, 2, b.astype(dtype), "B")
    elif t.kind == GEMM:
        _set(graph, node, 1, (mat.T if attr(node, "transB", 0) else mat).astype(dtype), "W")
        _set(graph, node, 2, b.astype(dtype), "B")
        node.attributes["alpha"] = ir.AttrFloat32("alpha", 1.0)
        node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    else:
        _set(graph, node, 1, mat.astype(dtype), "W")
        if t.bias is not None:
            add = nodes[t.bias]
            k, old = _bias_value(add, node.outputs[0])
            shape = old.shape if old.size == b.size else b.shape
            _set(graph, add, k, b.reshape(shape).astype(old.dtype), "B")
