"""Tensors stored outside the model file: finding them and checking them before reading.

``check_external_data(model, path)``: every tensor stored outside the model file names
  a relative location inside the model's folder (no ``..`` escape, no absolute path, no
  symlink on the way), a regular file that holds the tensor's whole region; a declared
  ``length`` equals the bytes its dims and type need; all of it fits the available memory.
  onnx 1.23 refuses the escapes and short files itself; this check runs first so the
  message is ours and nothing is read before the sizes are known.
Memory available is ``modelcheck.memory_budget`` (``available=`` overrides it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx

from dsp_deploy.errors import ModelError
from dsp_deploy.modelcheck import (
    attribute_tensors,
    graph_tensors,
    graphs,
    memory_budget,
    size_text,
    tensor_bytes,
)

__all__ = ["check_external_data", "external_tensors", "is_external"]


def external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of ``model`` (initializers, attributes, subgraphs) stored externally."""
    for graph, _ in graphs(model.graph):
        yield from (t for t in graph_tensors(graph) if is_external(t))
    for function in model.functions:
        for node in function.node:
            yield from (t for t in attribute_tensors(node) if is_external(t))


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL


def check_external_data(model: onnx.ModelProto, path: Path, *, available: int | None = None) -> int:
    """Check every external tensor's location and region; returns their total bytes."""
    folder = path.parent.resolve()
    total = 0
    for tensor in external_tensors(model):
        info = {e.key: e.value for e in tensor.external_data}
        where = f"model file {path}: tensor {tensor.name!r} location {info.get('location')!r}"
        data = _resolve_location(info.get("location", ""), folder, where)
        total += _check_region(tensor, info, data, where)
    memory = memory_budget(available)
    if memory is not None and total > memory:
        raise ModelError(
            f"model file {path} keeps {size_text(total)} of weights in external data; "
            f"{size_text(memory)} of memory is available"
        )
    return total


def _resolve_location(location: str, folder: Path, where: str) -> Path:
    if not location or not isinstance(location, str):  # bytes: not valid UTF-8
        raise ModelError(f"{where}: expected a file name beside the model")
    if Path(location).is_absolute() or location.startswith(("/", "\\")) or ":" in location:
        raise ModelError(f"{where}: an absolute path; expected a path relative to {folder}")
    target = folder / location
    current = folder
    for part in Path(location).parts:  # refuse a symlink anywhere on the way, not just last
        current = current / part
        if current.is_symlink():
            raise ModelError(f"{where}: {current} is a symbolic link; expected a plain file")
    if not target.resolve().is_relative_to(folder):
        raise ModelError(f"{where}: points outside the model's folder {folder}")
    if not target.is_file():
        found = "a folder" if target.is_dir() else "nothing"
        raise ModelError(f"{where}: expected a data file at {target}, found {found}")
    return target


def _check_region(tensor: onnx.TensorProto, info: dict[str, str], data: Path, where: str) -> int:
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError as e:
        raise ModelError(f"{where}: offset/length are not whole numbers ({info})") from e
    if tensor.dims and min(tensor.dims) < 0:
        raise ModelError(f"{where}: negative dims {list(tensor.dims)}")
    need = tensor_bytes(tensor.data_type, tuple(tensor.dims))
    if need is None:
        raise ModelError(f"{where}: data type {tensor.data_type} cannot be stored externally here")
    if length is not None and length != need:
        raise ModelError(
            f"{where}: length {length} bytes; dims {list(tensor.dims)} of type "
            f"{onnx.TensorProto.DataType.Name(tensor.data_type)} need {need}"
        )
    size = data.stat().st_size
    if offset < 0 or offset + need > size:
        raise ModelError(
            f"{where}: expected {need} bytes at offset {offset}; {data.name} holds {size} bytes"
        )
    return need
