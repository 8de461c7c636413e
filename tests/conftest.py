"""Shared fixtures: an isolated AEON_DATA, and running the CLI in-process."""

from __future__ import annotations

import os
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
