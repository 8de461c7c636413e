"""Time-series classification datasets, offline: UCR/aeon sets by name, user files by path.

Where a source is found and how its files are parsed (UCR/aeon names, ``.ts``, ``.tsv``,
``.npz``; the memory checks before reading): :mod:`dsp_deploy.dataset_files`. This module
turns what they read into ``Dataset`` splits: gaps, normalisation, padding, labels.

Contract
--------
``load_train_test(source)`` returns the official train and test splits as ``Dataset``:
``X`` float32 ``(n, C, L)`` (C = 1 for the univariate UCR sets; multivariate ``.ts`` files
keep their channels), ``y`` int64 indices into ``classes``, shared by both splits.

Each series x (one case, one channel) is prepared the same way for every source:

1. **Observed part.** ℓ = 1 + index of the last finite value of x. NaN after ℓ marks the
   end of a shorter series (the UCR ``.tsv`` files right-pad variable-length series with
   NaN). A series with no finite value at all is a ``DatasetError``; so is ±inf.
2. **Missing values** (NaN, or ``?`` in ``.ts``) inside ``x[:ℓ]`` are filled by linear
   interpolation between their neighbours; leading ones take the first observed value.
3. **z-normalisation** over the observed part: ``z = (x - mean) / std``; a constant
   series (std ≤ 1e-10·|mean|: zero up to rounding) becomes exact zeros, never NaN —
   the "std 0 → 1" rule of the papers, robust to float round-off.
4. **Padding** to L = the longest ℓ over train *and* test, with zeros — the series mean
   in z-space. With ``normalise=False`` the pad value is the observed mean in raw units.

Why pad rather than resample: resampling stretches each series by its own factor, so the
same gesture performed slowly or quickly would change its frequency content, and the
models' fixed-size kernels (LITE's hand-crafted filters above all) read a fixed time
scale. The UCR "adjusted" versions pad too (with low-amplitude noise); padding with the
mean is the deterministic version of that. The one length for both splits makes a model
trained on one split accept the other. Caveat: in a fixed-length set with missing values
at the end (MelbournePedestrian: 120 of 2439 test days end early) the missing tail is
read as a shorter series, which after padding equals filling it with the series mean.

``require_trainable(train)`` is what ``train`` and ``sweep`` add before training: at
least two classes, series of at least two steps, and not every series constant.

Labels: classes are the sorted unique training labels (numerically when every label is a
number, keeping the text as the name: "1", "2", "10"); a test label unseen in training is
a ``DatasetError``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from dsp_deploy.dataset_files import RawSplit, read_source
from dsp_deploy.errors import DatasetError

logger = logging.getLogger(__name__)

__all__ = [
    "SPLITS",
    "Dataset",
    "label_key",
    "load_dataset",
    "load_train_test",
    "require_trainable",
    "znormalise",
]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Dataset:
    """One split of a classification dataset, ready to feed a model."""

    X: np.ndarray  # float32 (n, C, L); z-normalised per series unless normalise=False
    y: np.ndarray  # int64 (n,), indices into `classes`
    classes: tuple[str, ...]  # class names in label-index order (shared by train and test)
    name: str  # dataset name (or file stem)
    split: str  # "train" | "test"


def load_train_test(
    source: str | os.PathLike, *, normalise: bool = True
) -> tuple[Dataset, Dataset]:
    """Both official splits of ``source`` (a dataset name or a path); see the module doc."""
    name, train, test = read_source(source)
    classes, y_train, y_test = _encode_labels(train.labels, test.labels, test.where)
    if train.values.shape[1] != test.values.shape[1]:
        raise DatasetError(
            f"{test.where} has {test.values.shape[1]} channels; "
            f"{train.where} has {train.values.shape[1]}"
        )
    (x_train, l_train), (x_test, l_test) = _fill_gaps(train), _fill_gaps(test)
    length = int(max(l_train.max(), l_test.max()))
    pair = (
        Dataset(_finish(x_train, l_train, length, normalise), y_train, classes, name, "train"),
        Dataset(_finish(x_test, l_test, length, normalise), y_test, classes, name, "test"),
    )
    logger.info(
        "dataset %s: train %s, test %s, %d classes (from %s)",
        name, pair[0].X.shape, pair[1].X.shape, len(classes), train.where,
    )  # fmt: skip
    return pair


def load_dataset(
    source: str | os.PathLike, split: str = "train", *, normalise: bool = True
) -> Dataset:
    """One split of ``source``; both are read so that they share classes and length."""
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    train, test = load_train_test(source, normalise=normalise)
    return train if split == "train" else test


def require_trainable(data: Dataset, source: str | os.PathLike | None = None) -> None:
    """``DatasetError`` unless a model can learn from ``data`` (a training split).

    It needs at least two classes, each with a series, and series that carry signal:
    after per-series z-normalisation a constant series is all zeros, and so is any
    series of length 1, so a split in which every series is constant holds nothing a
    classifier could use. (A few constant series among others are fine.) ``source``, the
    name or path as given, is what messages name.
    """
    name = data.name if source is None else os.fspath(source)
    where = f"dataset {name} ({data.split} split)"
    present = np.bincount(data.y, minlength=len(data.classes)) > 0
    if present.sum() < 2:
        found = [c for c, here in zip(data.classes, present, strict=True) if here]
        raise DatasetError(f"{where} has {len(found)} class {found}; expected at least 2 classes")
    if data.X.shape[-1] < 2:
        raise DatasetError(
            f"{where} has series of length {data.X.shape[-1]}; expected at least 2 time steps"
        )
    if (data.X.max(axis=-1) == data.X.min(axis=-1)).all():
        raise DatasetError(
            f"{where}: every series is constant (zero variance), so all are zero after "
            "z-normalisation; there is nothing to learn"
        )


def znormalise(X: np.ndarray) -> np.ndarray:
    """Per-series z-normalisation over the last (time) axis, as float32; constant → 0."""
    x = np.asarray(X, dtype=np.float64)
    return _znormalise(x, np.ones(x.shape, dtype=bool)).astype(np.float32)


# --- preprocessing ---------------------------------------------------------------------


def _znormalise(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """z-normalise each series over its ``valid`` steps; invalid steps become 0."""
    count = valid.sum(axis=-1, keepdims=True)
    x = np.where(valid, x, 0.0)
    mean = x.sum(axis=-1, keepdims=True) / count
    centred = np.where(valid, x - mean, 0.0)
    std = np.sqrt((centred**2).sum(axis=-1, keepdims=True) / count)
    # Sums of identical floats are not exact: a constant series can show std ~1e-17.
    constant = std <= 1e-10 * np.abs(mean)
    return np.where(constant, 0.0, centred / np.where(constant, 1.0, std))


def _fill_gaps(raw: RawSplit) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate missing values inside each series; return values and observed lengths."""
    values = raw.values
    if np.isinf(values).any():
        raise DatasetError(f"{raw.where} holds infinite values; expected finite numbers or NaN")
    finite = ~np.isnan(values)
    empty = ~finite.any(axis=-1)
    if empty.any():
        case, channel = (int(i) for i in np.argwhere(empty)[0])
        raise DatasetError(
            f"{raw.where}: series {case} (channel {channel}) has no values (all NaN); "
            f"{int(empty.sum())} such series"
        )
    width = values.shape[-1]
    lengths = width - np.argmax(finite[..., ::-1], axis=-1)  # 1 + last finite index
    steps = np.arange(width)
    gaps = ~finite & (steps < lengths[..., None])
    out = values.copy()
    for index in zip(*np.nonzero(gaps.any(axis=-1)), strict=True):
        row, known, n = out[index], finite[index], lengths[index]
        row[:n] = np.interp(steps[:n], steps[known], row[known])  # edges: nearest value
    if gaps.any():
        logger.info("%s: interpolated %d missing values", raw.where, int(gaps.sum()))
    return out, lengths


def _finish(values: np.ndarray, lengths: np.ndarray, length: int, normalise: bool) -> np.ndarray:
    """Normalise over the observed part, pad with the (normalised) mean to ``length``."""
    width = max(values.shape[-1], length)
    values = np.pad(values, [(0, 0), (0, 0), (0, width - values.shape[-1])])[..., :length]
    valid = np.arange(length) < lengths[..., None]
    if normalise:
        x = _znormalise(values, valid)
    else:
        x = np.where(valid, values, 0.0)
        mean = x.sum(axis=-1, keepdims=True) / lengths[..., None]
        x = np.where(valid, x, mean)
    return np.ascontiguousarray(x, dtype=np.float32)


def _encode_labels(
    train: Sequence[str], test: Sequence[str], where: str
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Classes = sorted unique training labels (numeric order if all are numbers)."""
    key = label_key((*train, *test))
    names: dict[float | str, str] = {}
    for text in train:
        names.setdefault(key(text), text)
    order = {k: i for i, k in enumerate(sorted(names))}
    unseen = sorted({t for t in test if key(t) not in order})
    if unseen:
        raise DatasetError(
            f"{where} has labels {unseen[:5]} that the training split lacks; "
            f"training classes: {list(names.values())[:20]}"
        )
    classes = tuple(names[k] for k in sorted(names))
    encode = lambda labels: np.array([order[key(t)] for t in labels], dtype=np.int64)  # noqa: E731
    return classes, encode(train), encode(test)


def label_key(labels: Iterable[str]) -> Callable[[str], float | str]:
    """How to compare labels: by value when every one is a number ("1" = "1.0"), else text."""
    return float if all(_is_number(t) for t in labels) else str


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
