"""Published ensemble accuracies per dataset, to set beside a sweep's ensembles.

Resample 0 is the official train/test split, the one a sweep trains on. Sources, in order:

* InceptionTime: aeon's results fixture (``aeon/testing/example_results_files/...``);
* LITETime: ``tsml-eval``'s bake-off results (``pip install --no-deps tsml-eval==0.6.0``;
  only its results file is read, the package is never imported);
* a CSV given by the caller (``sweep-report --published FILE``) with the columns ``arch,
  dataset, published`` — a report's own ``published.csv`` qualifies, so a report written
  where tsml-eval was installed carries its values to one written where it is not
  (``benchmarks/results/ucr_cpu-small/published.csv``: LITETime's for 36 of the 40
  ``cpu-small`` LITE sets, InceptionTime's for 17 of 21). A package's value wins over the
  file's for the same (arch, dataset).
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from dsp_deploy.errors import InputError

# (package, path inside it, our arch): published ensemble accuracies per dataset
PUBLISHED: tuple[tuple[str, str, str], ...] = (
    (
        "aeon",
        "testing/example_results_files/classification/accuracy/InceptionTime_accuracy.csv",
        "inception",
    ),
    (
        "tsml_eval",
        "publications/2023/tsc_bakeoff/results/deeplearning/LITETime_accuracy.csv",
        "lite",
    ),
)
# Only the results files are read (the package is never imported), so no dependencies.
INSTALL_HINTS = {"tsml_eval": "pip install --no-deps tsml-eval==0.6.0"}
PUBLISHED_NAMES = {"inception": "InceptionTime", "lite": "LITETime"}

Published = dict[str, dict[str, float]]  # arch -> dataset -> accuracy


def published_accuracies(extra: Path | None = None) -> tuple[Published, tuple[str, ...]]:
    """Per arch, the published ensemble accuracy (resample 0) of each dataset, and a line
    per source that is missing; ``extra``'s values fill in where no package has one."""
    found: Published = read_published_csv(extra) if extra is not None else {}
    missing = []
    for package, inner, arch in PUBLISHED:
        values, why = _package_values(package, inner)
        if values is None:
            if arch not in found:
                missing.append(f"{arch}: {why}")
            continue
        found[arch] = {**found.get(arch, {}), **values}
    return found, tuple(missing)


def _package_values(package: str, inner: str) -> tuple[dict[str, float] | None, str]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = INSTALL_HINTS.get(package, f"pip install {package}")
        return None, f"{package} is not installed ({hint}; file {inner})"
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.is_file():
        return None, f"{path} is missing"
    with path.open() as f:
        lines = list(csv.reader(f))
    # Header "Resamples:,0,1,...": then one line per dataset, resample 0 first.
    return {ln[0]: float(ln[1]) for ln in lines[1:] if len(ln) > 1 and ln[1]}, ""


def read_published_csv(path: Path) -> Published:
    """``arch, dataset, published`` rows (others ignored; an empty cell: no value)."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise InputError(f"--published {path}: cannot read it ({e.strerror})") from e
    wanted = {"arch", "dataset", "published"}
    if not rows or not wanted <= set(rows[0]):
        raise InputError(
            f"--published {path}: expected a CSV with the columns {sorted(wanted)}, "
            f"got {sorted(rows[0]) if rows else 'no rows'}"
        )
    out: Published = {}
    for r in rows:
        if r["published"]:
            out.setdefault(r["arch"], {})[r["dataset"]] = _accuracy(r["published"], path)
    return out


def _accuracy(text: str, path: Path) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--published {path}: expected accuracies, got {text!r}") from None
