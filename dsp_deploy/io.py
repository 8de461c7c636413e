"""Model files: the only module that reads or writes ONNX models.

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

Calibration files live in :mod:`dsp_deploy.calib_io`, atomic writes in
:mod:`dsp_deploy.atomic`, the memory bound in :mod:`dsp_deploy.memory`; this module
re-exports their public names, so ``io`` stays the one I/O entry point for callers.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
from onnx import external_data_helper, numpy_helper

from dsp_deploy import external_data, modelcheck
from dsp_deploy.atomic import write_atomic
from dsp_deploy.calib_io import (
    CLASSES_KEY,
    LABELS_KEY,
    Calibration,
    load_calibration,
    model_inputs,
    read_npz,
    save_calibration,
)
from dsp_deploy.errors import InputError, ModelError
from dsp_deploy.passes import copy_model

logger = logging.getLogger(__name__)

__all__ = [
    "CLASSES_KEY",
    "LABELS_KEY",
    "Calibration",
    "load_calibration",
    "load_model",
    "model_inputs",
    "read_npz",
    "save_calibration",
    "save_model",
    "uses_external_data",
    "write_atomic",
]


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an untrusted ONNX model; ``ModelError`` naming the file if unusable.

    External data is read relative to the model's folder, after its locations and sizes
    pass ``external_data.check_external_data``; the model returned holds it in memory.
    Nothing is read before the file's size is known to fit (``modelcheck.check_file``).
    """
    p = Path(path)
    modelcheck.check_file(p)
    foreign = foreign_format(p)
    if foreign is not None:
        raise ModelError(f"model file {p} is {foreign}, not ONNX")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning-wrapped errors, ...
        raise ModelError(f"model file {p} is not a readable ONNX model: {e}") from e
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"model file {p} holds no ONNX graph (is it an ONNX file?)")
    modelcheck.check_structure(model, p)
    if any(True for _ in external_data.external_tensors(model)):
        external_data.check_external_data(model, p)
        _load_external_data(model, p)
    modelcheck.check_model(model, p)
    return model


_EXPORT_HINT = "export it to ONNX first (README: Bring your own model)"
_PICKLE = f"a pickle (a PyTorch checkpoint or scikit-learn model?): {_EXPORT_HINT}"
_MAGIC = (  # (leading bytes, what the file is)
    (b"\x89HDF\r\n\x1a\n", f"an HDF5 file (a Keras .h5 model?): {_EXPORT_HINT} (tf2onnx)"),
    (b"\x93NUMPY", "a NumPy .npy array (calibration data belongs in --calib)"),
    *((b"\x80" + bytes([v]), _PICKLE) for v in range(2, 6)),  # pickle protocols 2 to 5
)
_SUFFIXES = {
    ".pt": f"a PyTorch checkpoint: {_EXPORT_HINT}",
    ".pth": f"a PyTorch checkpoint: {_EXPORT_HINT}",
    ".ckpt": f"a training checkpoint: {_EXPORT_HINT}",
    ".safetensors": f"a safetensors weights file: {_EXPORT_HINT}",
    ".keras": f"a Keras model: {_EXPORT_HINT} (tf2onnx)",
    ".h5": f"an HDF5 file (a Keras .h5 model?): {_EXPORT_HINT} (tf2onnx)",
    ".tflite": f"a TensorFlow Lite model: {_EXPORT_HINT}",
    ".npz": "a NumPy .npz archive (calibration data belongs in --calib)",
}


def foreign_format(path: Path) -> str | None:
    """What a file that is surely not ONNX is (by its first bytes or name), else None.

    onnx writes ``ir_version`` (protobuf key ``\x08``) first. A ZIP (``torch.save``
    since PyTorch 1.6, ``.npz``), a pickle, HDF5 or ``.npy`` file starts with magic
    bytes of its own; a file named ``.pt``/``.pth``/... that does not start like ONNX is
    taken for what its name says.
    """
    with path.open("rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        if b"data.pkl" in head or path.suffix.lower() in (".pt", ".pth"):
            return f"a PyTorch checkpoint (torch.save): {_EXPORT_HINT}"
        return _SUFFIXES.get(path.suffix.lower(), "a ZIP archive")
    known = next((what for magic, what in _MAGIC if head.startswith(magic)), None)
    if known is not None or head.startswith(b"\x08"):
        return known
    return _SUFFIXES.get(path.suffix.lower())


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
    return any(True for _ in external_data.external_tensors(model))


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
    out = copy_model(model)
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
    if tensor.data_type == onnx.TensorProto.STRING or external_data.is_external(tensor):
        return None
    if not tensor.HasField("raw_data"):
        array = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return tensor.raw_data


def _external_location(model: onnx.ModelProto) -> str | None:
    for tensor in external_data.external_tensors(model):
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
