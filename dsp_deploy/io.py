"""The only module that reads or writes model and calibration files.

Contract:

* ``load_model(path)``: an untrusted model is checked before anything is allocated for
  it or onnxruntime sees it (``dsp_deploy.modelcheck``): a non-empty regular file under
  2 GiB that fits in memory; a parsable ``ModelProto`` with sane structure (node count,
  nesting, op domains onnxruntime runs, opsets); external data only from plain files
  inside the model's folder, with regions that fit their files and memory; then the
  ONNX checker, strict shape inference, sane declared/inferred sizes, finite weights.
  Otherwise ``ModelError`` naming the file and what was found. External data is loaded
  into the returned model.
* ``save_model(model, path, inputs=..., external_data=None)``: atomic — the bytes go to
  a temporary file in the destination folder, are flushed to disk, then ``os.replace`` d
  onto ``path``, so a reader sees the old file or the whole new one, never a torn one.
  ``path`` may not be a directory nor any of ``inputs`` (``InputError``), so a run can
  never overwrite its own input. When an input model kept external data (or the model
  passes 2 GiB), large tensors go to ``<path name>.<content hash>.data`` beside it,
  written before the model that points at it.
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
  — so a huge or hostile file is a clear error, never an out-of-memory kill.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import logging
import math
import os
import re
import secrets
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from dsp_deploy import modelcheck
from dsp_deploy.dtypes import cast_input
from dsp_deploy.errors import CalibrationError, InputError, ModelError

logger = logging.getLogger(__name__)

LABELS_KEY = "y"
CLASSES_KEY = "classes"  # class names beside the labels; not a model input

__all__ = [
    "Calibration",
    "available_memory",
    "load_calibration",
    "load_model",
    "model_inputs",
    "read_npz",
    "save_model",
]


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an untrusted ONNX model; ``ModelError`` naming the file if unusable.

    External data is read relative to the model's folder, after its locations and sizes
    pass ``modelcheck.check_external_data``; the model returned holds it in memory.
    Nothing is read before the file's size is known to fit (``modelcheck.check_file``).
    """
    p = Path(path)
    modelcheck.check_file(p)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning-wrapped errors, ...
        raise ModelError(f"model file {p} is not a readable ONNX model: {e}") from e
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"model file {p} holds no ONNX graph (is it an ONNX file?)")
    modelcheck.check_structure(model, p)
    if any(True for _ in modelcheck.external_tensors(model)):
        modelcheck.check_external_data(model, p)
        _load_external_data(model, p)
    modelcheck.check_model(model, p)
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Read the (checked) external tensors into ``model``; onnx re-checks the locations."""
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"model file {path}: cannot read its external data: {first}") from e


def uses_external_data(path: str | os.PathLike) -> bool:
    """Whether the ONNX file at ``path`` keeps tensors in external data files."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not an ONNX file (e.g. a calibration .npz): keeps no external data
        return False
    return any(True for _ in modelcheck.external_tensors(model))


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    inputs: Sequence[str | os.PathLike] = (),
    external_data: bool | None = None,
) -> None:
    """Write ``model`` to ``path`` atomically; refuse a directory or one of ``inputs``.

    ``external_data=None`` writes tensors of ``EXTERNAL_THRESHOLD`` bytes or more to a
    data file beside ``path`` when one of ``inputs`` is an ONNX file with external data
    (the output keeps its input's layout) or the model would pass protobuf's 2 GiB limit.
    The data file is named ``<path name>.<hash of its bytes>.data`` and is written first;
    the model file is then replaced atomically, so a reader sees the old model with its
    old data or the new model with its new data, never a model pointing at a torn file.
    A data file that an earlier save left for this ``path`` is removed afterwards.
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"output path {p} is a directory; expected a file path")
    target = p.resolve()
    for source in inputs:
        if Path(source).resolve() == target:
            raise InputError(f"output path {p} is the input file {source}; choose another path")
    if not target.parent.is_dir():
        raise InputError(f"output folder {p.parent} does not exist")
    if external_data is None:
        external_data = model.ByteSize() >= modelcheck.PROTOBUF_LIMIT or any(
            uses_external_data(s) for s in inputs
        )
    if external_data:
        model, blob = _split_external(model, target.name)
        location = _external_location(model)
        if location is not None:
            write_atomic(target.parent / location, lambda f: f.write(blob))
            logger.info("wrote %s (%d bytes of external data)", location, len(blob))
    data = model.SerializeToString()
    write_atomic(target, lambda f: f.write(data))
    _remove_stale_data(target, _external_location(model) if external_data else None)
    logger.info("wrote %s (%d bytes)", p, len(data))


EXTERNAL_THRESHOLD = 1024  # bytes; smaller tensors stay inline, as onnx does by default
_ALIGN = 64  # tensor offsets in the data file, so a reader can map them aligned
_DATA_FILE = re.compile(r"\.[0-9a-f]{16}\.data")


def _split_external(model: onnx.ModelProto, name: str) -> tuple[onnx.ModelProto, bytes]:
    """A copy of ``model`` whose large tensors point into one data blob, and the blob."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    chunks: list[bytes] = []
    offset = 0
    moved = []
    for tensor in _all_tensors(out):
        raw = _raw_bytes(tensor)
        if raw is None or len(raw) < EXTERNAL_THRESHOLD:
            continue
        pad = -offset % _ALIGN
        chunks.append(b"\0" * pad)
        offset += pad
        moved.append((tensor, offset, len(raw)))
        chunks.append(raw)
        offset += len(raw)
    blob = b"".join(chunks)
    location = f"{name}.{hashlib.sha256(blob).hexdigest()[:16]}.data"
    for tensor, start, length in moved:
        external_data_helper.set_external_data(tensor, location, offset=start, length=length)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
    return out, blob


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                graphs.extend([attr.g] if attr.HasField("g") else attr.graphs)


def _raw_bytes(tensor: onnx.TensorProto) -> bytes | None:
    """The tensor's bytes as raw_data (typed fields converted); None for strings."""
    if tensor.data_type == onnx.TensorProto.STRING or modelcheck.is_external(tensor):
        return None
    if not tensor.HasField("raw_data"):
        array = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return tensor.raw_data


def _external_location(model: onnx.ModelProto) -> str | None:
    for tensor in modelcheck.external_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                return entry.value
    return None


def _remove_stale_data(target: Path, keep: str | None) -> None:
    """Delete data files an earlier save wrote for ``target`` (``<name>.<hash>.data``)."""
    for old in target.parent.glob(f"{glob.escape(target.name)}.*.data"):
        if old.name != keep and _DATA_FILE.fullmatch(old.name[len(target.name) :]):
            old.unlink(missing_ok=True)
            logger.debug("removed stale external data %s", old)


def write_atomic(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``target`` through ``write(file)`` so that it appears whole or not at all.

    The bytes go to a temp file ``.<name>.<16 hex>.tmp`` in the destination folder, are
    flushed to disk and then ``os.replace``d onto ``target``; the file gets the usual
    permissions (umask), not 0600. Any exception (Ctrl-C included) removes the temp file.
    A writer killed outright (SIGKILL, the OOM killer) cannot: its temp file stays until
    the next write of the same ``target`` removes it. Each writer holds an exclusive
    ``flock`` on its temp file until the rename, and a lock dies with its process, so a
    temp file whose lock can be taken is a dead writer's.
    """
    _remove_stale_temps(target)
    while not _write_temp_and_rename(target, write):
        pass  # another writer's clean-up removed our new temp file before we locked it


def _write_temp_and_rename(target: Path, write: Callable[[BinaryIO], object]) -> bool:
    # Named before it exists, so that clean-up knows it whenever an interrupt lands; with
    # 64 random bits, O_EXCL never meets another writer's file in practice.
    tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    fd = -1
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not _names(tmp, fd):
            return False
        with os.fdopen(fd, "wb", closefd=False) as f:
            write(f)
            f.flush()
            os.fsync(fd)
        os.fchmod(fd, 0o666 & ~_umask())
        os.replace(tmp, target)  # still locked: no other writer's clean-up can take it
        return True
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` is the file open as ``fd``."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


def _remove_stale_temps(target: Path) -> None:
    """Remove the temp files of ``target`` that no live writer holds (killed writers')."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"[0-9a-f]{16}\.tmp")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in filter(pattern.fullmatch, names):
        path = target.parent / name
        try:  # no symlinks, and never block on a FIFO planted under that name
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
            logger.info("removed %s, left by a writer that was killed", path)
        except OSError:  # BlockingIOError: a live writer holds it
            pass
        finally:
            os.close(fd)


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
    the caller's working copies per value) must not exceed ``available_memory()``.
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
    available = available_memory()
    if available is not None and need > available:
        biggest = max(headers, key=lambda k: math.prod(headers[k][0]) * headers[k][1].itemsize)
        shape, dtype = headers[biggest]
        raise error(
            f"{what} {path} needs about {_gib(need)} of memory to load (array '{biggest}' "
            f"has shape {shape} {dtype}); only {_gib(available)} is available: use fewer samples"
        )


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup limit."""
    limits = [n for n in (_system_available(), _cgroup_available()) if n is not None]
    return min(limits) if limits else None


def _system_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # other POSIX systems (macOS has no /proc)
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    """cgroup v2: a container's own limit, which MemAvailable does not show."""
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int((cgroup / "memory.current").read_text()), 0)
    except (OSError, ValueError):
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


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
