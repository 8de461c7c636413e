"""The CLI shell: help, version, and the deploy side staying free of torch/aeon/ray."""

from __future__ import annotations

import json
import subprocess
import sys

from dsp_deploy import __version__


def test_version(run_cli) -> None:
    result = run_cli("--version")
    assert result.code == 0
    assert __version__ in result.stdout


def test_unknown_command_is_a_usage_error(run_cli) -> None:
    result = run_cli("no-such-command")
    assert result.code == 2
    assert "Traceback" not in result.stderr


def test_deploy_side_imports_no_training_stack() -> None:
    # Importing the CLI (which registers every command) must not pull in torch, aeon or ray:
    # the deploy side has to install and start on a Raspberry Pi without them.
    code = (
        "import sys, json\n"
        "import dsp_deploy.cli\n"
        "print(json.dumps(sorted(m for m in ('torch', 'aeon', 'ray', 'pandas', 'sklearn')"
        " if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
