"""Calibration and dataset ``.npz`` files: read bounded, checked against the model.

Contract:

* ``load_calibration(path, model)``: an ``.npz`` read with ``allow_pickle=False``.
  Arrays are keyed by the model's input names (all of them for a multi-input model); a
  single-input model also accepts exactly one array under any key. An optional ``y``
  holds integer labels; an optional ``classes`` (names, as ``train --calib-out`` writes
  them) is ignored. Every input array has the model input's rank, batch on axis 0,
  the model's fixed dims elsewhere and at least one sample; it is returned as a
  C-contiguous array of the model input's own element type (float16/32/64, int8…64,
  uint8…64, bool, string), cast only where no value changes but by a float's rounding
  (``dsp_deploy.dtypes``): floats finite and within the type's range (1e6 is refused for
  float16, never turned into inf); integers into a float input only when exact there
  (|v| <= 2**11 for float16, 2**24 for float32, 2**53 for float64), since sensor counts
  are data while a silent rounding is not; floats into an integer input only when
  integral and in range, integers in range (-1 is refused for uint8); bool inputs take
  bool arrays or 0/1 values, and bool arrays feed nothing else; complex, structured and
  object arrays are refused. Labels ``y``: one per sample, whole numbers >= 0 (integer or
  float dtype, not bool) and below the model's class count when the model declares it
  (``dsp.classes`` metadata, else a fixed last dim of its first output). Anything else
  raises ``CalibrationError`` saying what was expected and what the file holds.
* ``read_npz(path)``: the arrays of any ``.npz`` (calibration or dataset), refused
  before any data is read when a member is not an ``.npy`` array, needs pickle, or
  declares (in its header: shape × itemsize) more bytes than the memory available now
  (:mod:`dsp_deploy.memory`) — so a huge or hostile file is a clear error, never an
  out-of-memory kill.
* ``save_calibration(path, **arrays)``: atomic (:mod:`dsp_deploy.atomic`), no pickles.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx

from dsp_deploy import memory
from dsp_deploy.atomic import write_atomic
from dsp_deploy.dtypes import cast_input
from dsp_deploy.errors import CalibrationError, InputError

logger = logging.getLogger(__name__)

LABELS_KEY = "y"


CLASSES_KEY = "classes"  # class names beside the labels; not a model input

__all__ = [
    "CLASSES_KEY",
    "LABELS_KEY",
    "Calibration",
    "load_calibration",
    "model_inputs",
    "read_npz",
    "save_calibration",
]


def save_calibration(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write a calibration ``.npz`` (no pickles) atomically, e.g. ``x=..., y=...``."""
    target = Path(path).resolve()
    if target.is_dir():
        raise InputError(f"output path {path} is a directory; expected an .npz file path")
    if not target.parent.is_dir():
        raise InputError(f"output folder {Path(path).parent} does not exist")
    write_atomic(target, lambda f: np.savez(f, **arrays))


@dataclass(frozen=True)
class Calibration:
    """Calibration samples keyed by model input name, batch on axis 0, each array in its
    model input's element type."""

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, index: np.ndarray) -> Calibration:
        """The samples at ``index`` (a new object; arrays are copies)."""
        labels = None if self.labels is None else self.labels[index]
        return Calibration(MappingProxyType({k: v[index] for k, v in self.inputs.items()}), labels)


def model_inputs(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, ...]:
    """Graph inputs that are fed at run time (initializers listed as inputs excluded)."""
    inits = {t.name for t in model.graph.initializer}
    return tuple(v for v in model.graph.input if v.name not in inits)


def _dims(value: onnx.ValueInfoProto) -> tuple[int | str | None, ...]:
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)


def read_npz(
    path: str | os.PathLike,
    *,
    what: str = "calibration file",
    error: type[InputError] = CalibrationError,
    work_bytes_per_value: int = 8,
) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, no pickles; refused *before* reading if it cannot fit.

    ``what`` names the file in messages and ``error`` is raised. The need is estimated
    from the ``.npy`` headers alone: Σ values × (itemsize + ``work_bytes_per_value``,
    the caller's working copies per value) must not exceed ``memory.available_memory()``.
    """
    p = Path(path)
    if not p.exists():
        raise error(f"{what} {p} does not exist")
    if not p.is_file():
        raise error(f"{what} {p} is not a file")
    try:
        headers = _npy_headers(p)
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
        raise error(f"{what} {p} is not a readable .npz: {_first_line(e)}") from e
    for key, (_, dtype) in headers.items():
        if dtype.hasobject:
            raise error(f"{what} {p} holds object (pickled) array '{key}'; expected numeric arrays")
    _check_fits(p, headers, what, error, work_bytes_per_value)
    try:
        with np.load(p, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
        raise error(f"{what} {p} is not a readable .npz: {_first_line(e)}") from e


def _npy_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every member, from the ``.npy`` headers only (no data read)."""
    if not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise ValueError("it holds a single .npy array; expected an .npz archive")
        raise ValueError("not a zip archive")
    headers = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename!r} is not an .npy array")
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read(f)
            headers[info.filename.removesuffix(".npy")] = (tuple(shape), dtype)
    return headers


def _check_fits(
    path: Path,
    headers: Mapping[str, tuple[tuple[int, ...], np.dtype]],
    what: str,
    error: type[InputError],
    work_bytes_per_value: int,
) -> None:
    need = sum(
        math.prod(shape) * (dtype.itemsize + work_bytes_per_value)
        for shape, dtype in headers.values()
    )
    available = memory.available_memory()
    if available is not None and need > available:
        biggest = max(headers, key=lambda k: math.prod(headers[k][0]) * headers[k][1].itemsize)
        shape, dtype = headers[biggest]
        raise error(
            f"{what} {path} needs about {memory.gib(need)} of memory to load (array '{biggest}' "
            f"has shape {shape} {dtype}); only {memory.gib(available)} is available: "
            "use fewer samples"
        )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _select(arrays: Mapping[str, np.ndarray], names: Sequence[str], path: Path) -> dict[str, str]:
    """Map each model input name to the key of its array in the file."""
    features = [k for k in arrays if k not in (LABELS_KEY, CLASSES_KEY)]
    if all(n in features for n in names):
        return {n: n for n in names}
    if len(names) == 1 and len(features) == 1:
        return {names[0]: features[0]}
    raise CalibrationError(
        f"calibration file {path} holds arrays {sorted(arrays)}; expected "
        + (f"one array for input '{names[0]}'" if len(names) == 1 else f"arrays {list(names)}")
    )


def _check_input(array: np.ndarray, value: onnx.ValueInfoProto, key: str, path: Path) -> np.ndarray:
    where = f"calibration array '{key}' in {path}"
    out = cast_input(array, value, where)
    dims = _dims(value)
    expected = "(N, " + ", ".join(str(d) if isinstance(d, int) else "?" for d in dims[1:]) + ")"
    if array.ndim != len(dims):
        raise CalibrationError(
            f"{where} has shape {array.shape}; model input '{value.name}' expects {expected}"
        )
    for axis, (have, want) in enumerate(zip(array.shape, dims, strict=True)):
        if axis > 0 and isinstance(want, int) and want > 0 and have != want:
            raise CalibrationError(
                f"{where} has shape {array.shape}; model input '{value.name}' expects {expected}"
            )
    if array.size == 0:
        raise CalibrationError(f"{where} is empty (shape {array.shape}); expected samples")
    return out


def _check_labels(y: np.ndarray, n: int, path: Path, n_classes: int | None = None) -> np.ndarray:
    where = f"calibration labels 'y' in {path}"
    if y.dtype.kind not in "iuf" or y.ndim != 1 or len(y) != n:
        raise CalibrationError(
            f"{where} have dtype {y.dtype} shape {y.shape}; expected {n} integer labels"
        )
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise CalibrationError(f"{where} are not whole numbers; expected class indices")
    if (y < 0).any():
        raise CalibrationError(f"{where} hold negative values; expected class indices >= 0")
    if n_classes is not None and (y >= n_classes).any():
        raise CalibrationError(
            f"{where} go up to {int(y.max())}; the model predicts {n_classes} classes "
            f"(indices 0..{n_classes - 1})"
        )
    return y.astype(np.int64)


def _class_count(model: onnx.ModelProto) -> int | None:
    """Classes the model predicts: its ``dsp.classes`` metadata, else a fixed output width."""
    from dsp_deploy import metadata

    try:
        names = metadata.class_names(metadata.read_metadata(model))
    except ValueError:  # unreadable metadata: fall back on the output shape
        names = None
    if names:
        return len(names)
    dims = _dims(model.graph.output[0]) if model.graph.output else ()
    return dims[-1] if len(dims) == 2 and isinstance(dims[-1], int) and dims[-1] > 0 else None


def load_calibration(path: str | os.PathLike, model: onnx.ModelProto) -> Calibration:
    """Read a calibration ``.npz`` for ``model``; ``CalibrationError`` if it does not fit."""
    p = Path(path)
    arrays = read_npz(p)
    values = model_inputs(model)
    keys = _select(arrays, [v.name for v in values], p)
    inputs = {v.name: _check_input(arrays[keys[v.name]], v, keys[v.name], p) for v in values}
    sizes = {k: len(a) for k, a in inputs.items()}
    if len(set(sizes.values())) != 1:
        raise CalibrationError(f"calibration arrays in {p} differ in sample count: {sizes}")
    n = next(iter(sizes.values()))
    labels = (
        _check_labels(arrays[LABELS_KEY], n, p, _class_count(model))
        if LABELS_KEY in arrays
        else None
    )
    logger.info("calibration %s: %d samples, inputs %s", p, n, sorted(inputs))
    return Calibration(MappingProxyType(inputs), labels)
