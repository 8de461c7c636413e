"""Model input element types: calibration arrays cast to them, random inputs drawn in them.

A calibration array A for a model input of element type T becomes C-contiguous T, with no
value changed except by a float's rounding, or is refused (``CalibrationError``, one line
naming the array, the model input, T and the offending value):

* T float (float16, float32, float64). A float: finite values only, each within T's range
  (|v| <= 65504 for float16, 3.4e38 for float32); values round to T's nearest, as an
  exporter's cast would, but never overflow to inf. A integer: only when every value is
  exact in T, |v| <= 2**(p + 1) with p T's stored significand bits (2**11 = 2048 for
  float16, 2**24 for float32, 2**53 for float64): sensor counts are data, a silent
  rounding is not.
* T integer (int8…int64, uint8…uint64). A integer: every value within T's range. A float:
  every value finite, integral and within T's range.
* T bool. A bool, or integer or float 0/1 values.
* T string. A unicode string array (``<U``), as is.

A bool array for a numeric input is refused (a mask under the wrong key, most likely),
and so are complex, structured and object arrays, and inputs of other element types
(bfloat16, float8, complex): there is no cast that keeps every value.

``random_feeds`` draws inputs for the random-input report in each array's own dtype:
floats standard normal (rounded to the dtype), integers uniform over the range the
calibration array spans (min..max inclusive: lengths, indices and codes stay valid),
bools fair coin flips. An input it cannot draw (strings) gets its first calibration
samples instead, and ``skipped`` says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import onnx

from dsp_deploy.errors import CalibrationError

if TYPE_CHECKING:
    from dsp_deploy.calib_io import Calibration

__all__ = ["RandomFeeds", "cast_input", "input_dtype", "random_feeds"]

_T = onnx.TensorProto
_SUPPORTED = frozenset(
    {
        *(_T.FLOAT16, _T.FLOAT, _T.DOUBLE),
        *(_T.INT8, _T.INT16, _T.INT32, _T.INT64),
        *(_T.UINT8, _T.UINT16, _T.UINT32, _T.UINT64),
        *(_T.BOOL, _T.STRING),
    }
)


def input_dtype(value: onnx.ValueInfoProto) -> np.dtype | None:
    """The numpy dtype a model input takes; None for element types no array casts to."""
    elem = value.type.tensor_type.elem_type
    if elem not in _SUPPORTED:
        return None
    return np.dtype(str) if elem == _T.STRING else onnx.helper.tensor_dtype_to_np_dtype(elem)


def _type_name(value: onnx.ValueInfoProto) -> str:
    """numpy's name of the input's element type (ONNX's for types numpy has not)."""
    dtype = input_dtype(value)
    if dtype is None:
        elem = value.type.tensor_type.elem_type
        return onnx.helper.tensor_dtype_to_string(elem).removeprefix("TensorProto.").lower()
    return "string" if dtype.kind == "U" else dtype.name


def cast_input(array: np.ndarray, value: onnx.ValueInfoProto, where: str) -> np.ndarray:
    """``array`` as model input ``value``'s element type (module docstring), or refused.

    ``where`` names the array in messages (e.g. "calibration array 'x' in c.npz").
    """
    target = input_dtype(value)
    wants = f"model input '{value.name}' is {_type_name(value)}"
    if target is None:
        raise CalibrationError(
            f"{where}: {wants}; calibration can feed float, integer, bool and string inputs"
        )
    if target.kind == "U" or array.dtype.kind == "U":
        if target.kind != array.dtype.kind:
            raise CalibrationError(f"{where} has dtype {array.dtype}; {wants}")
        return np.ascontiguousarray(array)
    if array.dtype.kind not in "iufb" or (array.dtype.kind == "b" and target.kind != "b"):
        takes = "True/False or 0/1" if target.kind == "b" else "real numbers (float or integer)"
        raise CalibrationError(f"{where} has dtype {array.dtype}; {wants} and takes {takes}")
    if array.size == 0:  # no values to check; the caller refuses an empty array
        return np.ascontiguousarray(array, dtype=target)
    if target.kind == "f":
        return _to_float(array, target, where, wants)
    return _to_integer(array, target, where, wants)


def _to_float(array: np.ndarray, target: np.dtype, where: str, wants: str) -> np.ndarray:
    info = np.finfo(target)
    if array.dtype.kind in "iu":
        limit = 2 ** (info.nmant + 1)
        lo, hi = int(array.min()), int(array.max())
        if max(-lo, hi) > limit:
            raise CalibrationError(
                f"{where} holds integer {hi if hi > -lo else lo}, which {target} cannot hold "
                f"exactly (limit 2**{info.nmant + 1}); {wants}: scale the values or store floats"
            )
        return np.ascontiguousarray(array, dtype=target)
    finite = np.isfinite(array)
    if not finite.all():
        raise CalibrationError(
            f"{where} has {int((~finite).sum())} NaN/inf values (first "
            f"{_show(array[~finite].flat[0])}); {wants} and takes finite numbers"
        )
    with np.errstate(over="ignore"):  # checked right below
        out = np.ascontiguousarray(array, dtype=target)
    over = ~np.isfinite(out)
    if over.any():
        raise CalibrationError(
            f"{where} holds {_show(array[over].flat[0])}, beyond {target}'s range "
            f"(|v| <= {float(info.max):.6g}); {wants}: scale the values"
        )
    return out


def _to_integer(array: np.ndarray, target: np.dtype, where: str, wants: str) -> np.ndarray:
    lo_ok, hi_ok = (0, 1) if target.kind == "b" else (np.iinfo(target).min, np.iinfo(target).max)
    if array.dtype.kind == "f":
        whole = np.isfinite(array) & (array == np.floor(array))
        if not whole.all():
            raise CalibrationError(
                f"{where} holds {_show(array[~whole].flat[0])}, not a whole number; {wants} "
                "and takes whole numbers"
            )
    if array.dtype.kind != "b":
        lo, hi = array.min().item(), array.max().item()  # Python numbers: exact comparisons
        bad = lo if lo < lo_ok else hi if hi > hi_ok else None
        if bad is not None:
            raise CalibrationError(
                f"{where} holds {_show(bad)}, outside {target}'s range {lo_ok}..{hi_ok}; {wants}"
            )
    return np.ascontiguousarray(array, dtype=target)


def _show(value: object) -> str:
    """An offending value for a message: whole numbers exact, other floats to 6 digits."""
    number = value.item() if isinstance(value, np.generic) else value
    if isinstance(number, float) and not (number.is_integer() and abs(number) < 2**64):
        return f"{number:.6g}"
    return str(int(number))


@dataclass(frozen=True)
class RandomFeeds:
    """Random inputs keyed by model input name, and a note per input not drawn."""

    feeds: Mapping[str, np.ndarray]
    skipped: tuple[str, ...]


def random_feeds(calibration: Calibration, n: int, rng: np.random.Generator) -> RandomFeeds:
    """``min(n, len(calibration))`` random samples per input, drawn per dtype (docstring)."""
    k = min(n, len(calibration))
    feeds, skipped = {}, []
    for name, array in calibration.inputs.items():
        drawn = _draw(array, (k, *array.shape[1:]), rng)
        if drawn is None:
            drawn = array[:k]
            skipped.append(f"input '{name}' ({array.dtype}) not drawn: calibration samples fed")
        feeds[name] = drawn
    return RandomFeeds(MappingProxyType(feeds), tuple(skipped))


def _draw(like: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray | None:
    """Random values shaped ``shape`` in ``like``'s dtype; None when it cannot be drawn."""
    kind = like.dtype.kind
    if kind == "f":
        return rng.standard_normal(shape).astype(like.dtype)
    if kind in "iu":
        return rng.integers(like.min(), like.max(), size=shape, dtype=like.dtype, endpoint=True)
    if kind == "b":
        return rng.random(shape) < 0.5
    return None
