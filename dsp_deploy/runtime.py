"""App-side predictor: an ONNX classifier plus the metadata it carries → class labels.

Needs only numpy and onnxruntime (no onnx, torch or aeon), so it runs wherever the
model must run, a Raspberry Pi included.

Contract
--------
``Classifier(path, threads=None)`` opens ``path`` in onnxruntime (CPU) and reads the
``dsp.*`` metadata that ``dsp-deploy train`` writes (:mod:`dsp_deploy.metadata`). The
model has one float input ``(N, C, L)`` and its first output is ``(N, K)`` scores.

*Input.* ``series`` is a list, tuple or numpy array (anything with ``__array__``) of
real numbers, read as ``(n, C, L)``:

* 3-D ``(n, C, L)``: a batch, as is;
* 2-D ``(n, L)``: a batch of univariate series when the model has C = 1 (or an unknown
  C); one multivariate series ``(C, L)`` when the model has C > 1;
* 1-D ``(L,)``: one univariate series.

C and L must equal the model's (``dsp.input_channels``/``dsp.input_length``, or the input's
fixed dims); nothing is resampled or padded, since a model's kernels read a fixed time
scale: resample or crop the series yourself. Strings, mappings, objects, complex
numbers, ragged lists, empty input, NaN or ±inf raise ``SeriesError`` (a ``ValueError``;
``SeriesTypeError`` is also a ``TypeError``) saying what was expected and what was found.

*Normalisation* (``dsp.normalisation = znorm-per-series``), per case and channel, over
the L time steps, in float64 then rounded to float32:

    μ = Σₜ xₜ / L,   σ = √(Σₜ (xₜ − μ)² / L),   zₜ = (xₜ − μ) / σ,   z = 0 if σ ≤ 1e-10·|μ|

— bit for bit :func:`dsp_deploy.data.znormalise`, which prepared the training data (the
last clause makes constant series zeros, never NaN, despite round-off in σ).

*Output.* ``predict_proba`` returns float32 ``(n, K)``: the model's output, with one
softmax applied when it holds logits. ``predict`` returns its argmax per row as class
names from ``dsp.classes`` (a numpy string array), or as int64 indices when the model
carries no class names.

*Models without our metadata* work too, under the one default every reader of a model
shares (:mod:`dsp_deploy.signature`): no ``dsp.normalisation`` → the input goes in as
raw float32; no ``dsp.output`` → the first output is probabilities when a Softmax
produces it, else detected once at load from a probe input (rows ≥ 0 summing to 1 →
probabilities, else logits, which get the softmax); no ``dsp.classes`` → ``predict``
gives argmax indices. One warning (logged) says what was assumed and names the
``dsp-deploy metadata`` command that declares it. ``Classifier(path, normalisation=
"znorm", classes=[...], output="logits")`` overrides the metadata for this process.

The graph is read with onnx when it is installed, else from the file's bytes, so a
vendored copy of this file (with ``signature``, ``signature_output``,
``signature_origins``, ``protobuf_wire``, ``metadata`` and ``errors``) beside numpy and
onnxruntime alone reads the same. A fixed batch dim b is honoured by running chunks of b
(the last one padded with zeros). A missing, unreadable or unsupported model raises
``ModelError``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import onnxruntime as ort

from dsp_deploy import signature as contract  # imports no onnx
from dsp_deploy.errors import InputError, ModelError
from dsp_deploy.signature import ModelSignature

logger = logging.getLogger(__name__)

__all__ = ["Classifier", "ModelSignature", "SeriesError", "SeriesTypeError", "znormalise"]

_MAX_ABS = 1e150  # larger values overflow float64 sums of squares
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT_OUTPUTS = ("tensor(float)", "tensor(double)", "tensor(float16)")
_KIND_NAMES = {
    "U": "text",
    "S": "bytes",
    "O": "objects (None, ragged or mixed values?)",
    "b": "booleans",
    "c": "complex numbers",
    "M": "dates",
    "m": "time deltas",
}


class SeriesError(InputError, ValueError):
    """Series the model cannot take: wrong rank, channels or length; NaN/inf; empty."""


class SeriesTypeError(SeriesError, TypeError):
    """Input that is not numbers: a string, a mapping, objects, complex values."""


class Classifier:
    """Classify raw time series with an ONNX model; see the module docstring.

    >>> clf = Classifier("models/lite_gunpoint.onnx")  # doctest: +SKIP
    >>> clf.predict(series)  # doctest: +SKIP
    array(['1'], dtype='<U1')
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        normalisation: str | None = None,
        classes: Sequence[str] | None = None,
        output: str | None = None,
    ) -> None:
        self._path = Path(path)
        self._session, softmax = _open_session(self._path, threads)
        self._metadata = MappingProxyType(dict(self._session.get_modelmeta().custom_metadata_map))
        sig = _signature(self._session, self._path, softmax)
        label = f"model {self._path}"
        sig = contract.override(
            sig, classes=classes, normalisation=normalisation, output=output, label=label
        )
        self._outputs = [sig.output_name]
        self._signature = sig = contract.detect_output(sig, self._run_once, label)
        warning = contract.default_warning(sig, str(self._path))
        if warning is not None:
            logger.warning("%s", warning)
        self._names = None if sig.classes is None else np.asarray(sig.classes, dtype=str)
        logger.debug(
            "loaded %s: input %s (C=%s, L=%s), %s classes, normalisation %s",
            self._path, sig.input_name, sig.channels, sig.length,
            "?" if sig.classes is None else len(sig.classes), sig.normalisation,
        )  # fmt: skip

    @property
    def signature(self) -> ModelSignature:
        """Input/output names, C, L, fixed batch, classes, normalisation, output kind."""
        return self._signature

    @property
    def classes(self) -> tuple[str, ...] | None:
        """Class names in output order, or None when the model does not carry them."""
        return self.signature.classes

    @property
    def input_length(self) -> int | None:
        """The series length L the model takes (None: any)."""
        return self.signature.length

    @property
    def input_channels(self) -> int | None:
        """The channels C the model takes (None: unknown, 1-D/2-D input read as C = 1)."""
        return self.signature.channels

    @property
    def metadata(self) -> Mapping[str, str]:
        """All ``metadata_props`` of the model (read-only)."""
        return self._metadata

    def __repr__(self) -> str:
        sig = self.signature
        n = "?" if sig.classes is None else len(sig.classes)
        return f"Classifier({str(self._path)!r}, classes={n}, C={sig.channels}, L={sig.length})"

    def predict_proba(self, series: Any) -> np.ndarray:
        """Probabilities ``(n, K)`` float32 for one series or a batch (logits get a softmax)."""
        x = self._prepare(series)
        out = self._run(x)
        if self.signature.logits:
            out = contract.softmax(out)
        return out

    def predict(self, series: Any) -> np.ndarray:
        """The best class per series ``(n,)``: names from ``dsp.classes``, else int64 indices."""
        best = self.predict_proba(series).argmax(axis=1)
        return best if self._names is None else self._names[best]

    def _prepare(self, series: Any) -> np.ndarray:
        sig = self.signature
        x = _as_batch(_as_array(series), sig.channels)
        _check_shape(x, sig.channels, sig.length)
        if not sig.normalises:
            _check_values(x, limit=_FLOAT32_MAX)
            return np.ascontiguousarray(x, dtype=np.float32)
        return znormalise(x)

    def _run_once(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(self._outputs, {self._session.get_inputs()[0].name: x})[0]

    def _run(self, x: np.ndarray) -> np.ndarray:
        size = self.signature.batch
        if size is None or len(x) == size:
            return _as_scores(self._session.run(self._outputs, {self.signature.input_name: x})[0])
        n = len(x)
        pad = np.zeros(((-n) % size, *x.shape[1:]), dtype=x.dtype)
        chunks = np.concatenate([x, pad]).reshape(-1, size, *x.shape[1:])
        name = self.signature.input_name
        out = [self._session.run(self._outputs, {name: chunk})[0] for chunk in chunks]
        return _as_scores(np.concatenate(out)[:n])


def znormalise(x: np.ndarray) -> np.ndarray:
    """z-normalise each series over the last axis of ``(..., L)``, as float32.

    Bit for bit :func:`dsp_deploy.data.znormalise` (see the module doc), but NaN/±inf,
    values beyond ±1e150 (their squares would overflow) or L = 0 raise ``SeriesError``.
    """
    src = np.asarray(x)
    if src.ndim == 0 or src.size == 0:
        raise SeriesError(f"expected series with values; got shape {src.shape}")
    z = src.astype(np.float64)  # a copy: normalised in place below
    length = z.shape[-1]
    # One series that cannot overflow (float32 or int): the common app call, where Python
    # floats beat numpy's 1-element arrays. Constant or non-finite: the general path.
    if z.size == length and (src.dtype.itemsize <= 4 or src.dtype.kind in "iu"):
        one = _znormalise_one(z.reshape(length))
        if one is not None:
            return one.reshape(z.shape)
        z = src.astype(np.float64)
    _check_values(z if z.ndim > 1 else z[None])
    return _znormalise_many(z, length)


def _znormalise_one(z: np.ndarray) -> np.ndarray | None:
    """One finite 1-D float64 series normalised in place, as float32; else None."""
    # NaN/±inf first: sums of them warn. (Not ``z @ z``: BLAS threads that spin after a
    # call steal CPU from onnxruntime's kernels on small machines.)
    if not math.isfinite(float(np.maximum.reduce(np.abs(z)))):
        return None
    length = len(z)
    mean = float(np.add.reduce(z)) / length
    z -= mean
    std = math.sqrt(float(np.add.reduce(z * z)) / length)
    if not std > 1e-10 * abs(mean):  # a constant series
        return None
    z /= std
    return z.astype(np.float32)


def _znormalise_many(z: np.ndarray, length: int) -> np.ndarray:
    """Finite float64 series ``(..., L)`` normalised in place, as float32."""
    mean = np.add.reduce(z, axis=-1, keepdims=True) / length
    z -= mean
    std = np.sqrt(np.add.reduce(z * z, axis=-1, keepdims=True) / length)
    constant = std <= 1e-10 * np.abs(mean)
    if constant.any():
        z[np.broadcast_to(constant, z.shape)] = 0.0
        std[constant] = 1.0
    z /= std
    return z.astype(np.float32)


# --- model -----------------------------------------------------------------------------


def _open_session(path: Path, threads: int | None) -> tuple[ort.InferenceSession, bool]:
    """The session, and whether the graph's first output comes from a Softmax."""
    if not path.is_file():
        found = "a folder" if path.is_dir() else "nothing"
        raise ModelError(f"model file {path}: expected an ONNX file, found {found}")
    options = ort.SessionOptions()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InputError(f"threads must be a whole number ≥ 1; got {threads!r}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    softmax = _ends_in_softmax(path)
    options.log_severity_level = 4  # its errors come back as the exception below
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own pybind exception types
        raise ModelError(f"model file {path} cannot be loaded by onnxruntime: {e}") from e
    return session, softmax


def _ends_in_softmax(path: Path) -> bool:
    """Read the graph with onnx's checks when onnx is installed, from the bytes otherwise."""
    try:  # onnx comes with dsp-deploy; an app that vendors this file beside onnxruntime
        from dsp_deploy.io import load_model  # alone gets onnxruntime's own checks only
    except ImportError:
        logger.debug("onnx is not installed: %s goes to onnxruntime unchecked", path)
        return contract.file_ends_in_softmax(path.read_bytes())
    model = load_model(path)  # ModelError for what onnxruntime could crash or allocate on
    return contract.graph_ends_in_softmax(model.graph)


def _signature(session: ort.InferenceSession, path: Path, softmax: bool) -> ModelSignature:
    """The shared signature, for one float input (N, C, L) and float scores (N, K) first."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 3:
        found = ", ".join(f"{i.name}: {i.type} {i.shape}" for i in inputs)
        raise ModelError(f"model {path}: expected one float input (N, C, L); found {found}")
    out = outputs[0]
    shape = out.shape or [None, None]  # a graph without output shapes: checked per call
    if out.type not in _FLOAT_OUTPUTS or len(shape) != 2:
        raise ModelError(
            f"model {path}: expected a first output of float scores (N, K); "
            f"found {out.name}: {out.type} {out.shape}"
        )
    return contract.from_session(session, f"model {path}", ends_in_softmax=softmax)


# --- input -----------------------------------------------------------------------------


def _as_array(series: Any) -> np.ndarray:
    """``series`` as a real-valued numpy array; SeriesTypeError/SeriesError otherwise."""
    if isinstance(series, np.ndarray):
        x = series
    elif isinstance(series, str | bytes | Mapping | set | frozenset) or not (
        isinstance(series, Sequence) or hasattr(series, "__array__")
    ):
        raise SeriesTypeError(
            f"expected a list, tuple or numpy array of numbers; got {type(series).__name__}"
        )
    else:
        try:
            x = np.asarray(series)
        except ValueError as e:  # numpy: "inhomogeneous shape after N dimensions"
            raise SeriesError(
                f"series of different lengths (ragged input); expected equal lengths: {e}"
            ) from e
    if x.dtype.kind not in "iuf":
        found = _KIND_NAMES.get(x.dtype.kind, str(x.dtype))
        raise SeriesTypeError(f"expected real numbers (int or float); found {found}")
    return x


def _as_batch(x: np.ndarray, channels: int | None) -> np.ndarray:
    """Read a 1-D/2-D/3-D array as (n, C, L), per the module docstring."""
    if x.ndim == 3:
        return x
    if x.ndim == 2:
        return x[None] if channels is not None and channels > 1 else x[:, None, :]
    if x.ndim == 1 and (channels is None or channels == 1):
        return x[None, None, :]
    if channels in (None, 1):
        want = "(L,), (n, L) or (n, 1, L)"
    else:
        want = f"({channels}, L) or (n, {channels}, L)"
    raise SeriesError(f"expected series shaped {want}; got shape {x.shape}")


def _check_shape(x: np.ndarray, channels: int | None, length: int | None) -> None:
    n, c, steps = x.shape
    if n == 0 or c == 0 or steps == 0:
        raise SeriesError(f"expected at least one series with values; got shape {x.shape}")
    if channels is not None and c != channels:
        raise SeriesError(f"series have {c} channels; the model expects {channels}")
    if length is not None and steps != length:
        raise SeriesError(
            f"series have length {steps}; the model expects {length} "
            "(resample or crop them to that length first)"
        )


def _check_values(x: np.ndarray, limit: float = _MAX_ABS) -> None:
    """SeriesError naming the first series (along axis 0) with NaN, ±inf or |x| > limit."""
    rows = x.reshape(len(x), -1)
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        raise SeriesError(
            f"series {int(np.argmax(bad))} holds NaN or infinite values ({int(bad.sum())} "
            f"of {len(x)} series do); expected finite numbers"
        )
    big = np.abs(rows).max(axis=1) > limit
    if big.any():
        raise SeriesError(
            f"series {int(np.argmax(big))} holds values beyond ±{limit:g}; expected smaller "
            "magnitudes"
        )


# --- output ----------------------------------------------------------------------------


def _as_scores(out: np.ndarray) -> np.ndarray:
    if out.ndim != 2:
        raise ModelError(f"the model returned scores of shape {out.shape}; expected (n, K)")
    return out if out.dtype == np.float32 else out.astype(np.float32)
