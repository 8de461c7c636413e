"""The only module that reads or writes model and calibration files.

Contract:

* ``load_model(path)``: the file exists, is a non-empty regular file, parses as an ONNX
  ``ModelProto`` and passes ``onnx.checker.check_model``; otherwise ``ModelError`` naming
  the file and what was found.
* ``save_model(model, path, inputs=...)``: atomic — the bytes go to a temporary file in
  the destination folder, are flushed to disk, then ``os.replace`` d onto ``path``, so a
  reader sees the old file or the whole new one, never a torn one. ``path`` may not be a
  directory nor any of ``inputs`` (``InputError``), so a run can never overwrite its
  own input.
* ``load_calibration(path, model)``: an ``.npz`` read with ``allow_pickle=False``.
  Arrays are keyed by the model's input names (all of them for a multi-input model); a
  single-input model also accepts exactly one array under any key. An optional ``y``
  holds integer labels. Every input array has the model input's rank, batch on axis 0,
  the model's fixed dims elsewhere, a real numeric dtype, at least one sample and only
  finite values; it is returned as C-contiguous float32. Anything else raises
  ``CalibrationError`` saying what was expected and what the file holds.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

import numpy as np
import onnx

from dsp_deploy.errors import CalibrationError, InputError, ModelError

logger = logging.getLogger(__name__)

LABELS_KEY = "y"

__all__ = ["Calibration", "load_calibration", "load_model", "model_inputs", "save_model"]


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an ONNX model; ``ModelError`` naming the file if it cannot be used."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file {p} does not exist")
    if not p.is_file():
        raise ModelError(f"model path {p} is not a file")
    if p.stat().st_size == 0:
        raise ModelError(f"model file {p} is empty (0 bytes); expected an ONNX model")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning-wrapped errors, ...
        raise ModelError(f"model file {p} is not a readable ONNX model: {e}") from e
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"model file {p} holds no ONNX graph (is it an ONNX file?)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"model file {p} fails the ONNX checker: {first}") from e
    return model


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    inputs: Sequence[str | os.PathLike] = (),
) -> None:
    """Write ``model`` to ``path`` atomically; refuse a directory or one of ``inputs``."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"output path {p} is a directory; expected a file path")
    target = p.resolve()
    for source in inputs:
        if Path(source).resolve() == target:
            raise InputError(f"output path {p} is the input file {source}; choose another path")
    if not target.parent.is_dir():
        raise InputError(f"output folder {p.parent} does not exist")
    data = model.SerializeToString()
    write_atomic(target, lambda f: f.write(data))
    logger.info("wrote %s (%d bytes)", p, len(data))


def write_atomic(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``target`` through ``write(file)`` so that it appears whole or not at all.

    The bytes go to a temp file in the destination folder, are flushed to disk and then
    ``os.replace``d onto ``target``; the file gets the usual permissions (umask), not the
    0600 of ``mkstemp``.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    try:  # Linux reports it without changing it (os.umask would, for a moment, process-wide)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    """Calibration samples: float32 arrays keyed by model input name, batch on axis 0."""

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


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise CalibrationError(f"calibration file {path} does not exist")
    if not path.is_file():
        raise CalibrationError(f"calibration path {path} is not a file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise CalibrationError(
                    f"calibration file {path} holds a single .npy array; expected an .npz archive"
                )
            return {k: npz[k] for k in npz.files}
    except CalibrationError:
        raise
    except ValueError as e:  # object arrays need pickle; refused on purpose
        raise CalibrationError(
            f"calibration file {path} holds object (pickled) arrays; expected numeric arrays"
        ) from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise CalibrationError(f"calibration file {path} is not a readable .npz: {e}") from e


def _select(arrays: Mapping[str, np.ndarray], names: Sequence[str], path: Path) -> dict[str, str]:
    """Map each model input name to the key of its array in the file."""
    features = [k for k in arrays if k != LABELS_KEY]
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
    if array.dtype.kind not in "biuf":
        raise CalibrationError(f"{where} has dtype {array.dtype}; expected a real numeric array")
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
    out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise CalibrationError(f"{where} has {bad} NaN/inf values; expected finite numbers")
    return out


def _check_labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    where = f"calibration labels 'y' in {path}"
    if y.dtype.kind not in "biuf" or y.ndim != 1 or len(y) != n:
        raise CalibrationError(
            f"{where} have dtype {y.dtype} shape {y.shape}; expected {n} integer labels"
        )
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise CalibrationError(f"{where} are not whole numbers; expected class indices")
    if (y < 0).any():
        raise CalibrationError(f"{where} hold negative values; expected class indices >= 0")
    return y.astype(np.int64)


def load_calibration(path: str | os.PathLike, model: onnx.ModelProto) -> Calibration:
    """Read a calibration ``.npz`` for ``model``; ``CalibrationError`` if it does not fit."""
    p = Path(path)
    arrays = _read_npz(p)
    values = model_inputs(model)
    keys = _select(arrays, [v.name for v in values], p)
    inputs = {v.name: _check_input(arrays[keys[v.name]], v, keys[v.name], p) for v in values}
    sizes = {k: len(a) for k, a in inputs.items()}
    if len(set(sizes.values())) != 1:
        raise CalibrationError(f"calibration arrays in {p} differ in sample count: {sizes}")
    n = next(iter(sizes.values()))
    labels = _check_labels(arrays[LABELS_KEY], n, p) if LABELS_KEY in arrays else None
    logger.info("calibration %s: %d samples, inputs %s", p, n, sorted(inputs))
    return Calibration(MappingProxyType(inputs), labels)
