"""The core install (no extras) works without torch, aeon or ray — on x86 and emulated ARM.

* ``test_core_install_*``: a fresh venv gets this checkout's wheel with its core
  dependencies from PyPI (pip's cache makes reruns fast), then runs the deploy-side
  CLI (compress, inspect, eval, bench), the runtime and the example app on a model. A
  ``.pth`` file in that venv installs an import hook in every process it starts (the
  bench workers too): any attempt to import torch, aeon or ray is logged and fails, so
  even a guarded ``try: import torch`` fails the test.
* ``test_deploy_core_imports_*`` (fast, no network): in a fresh interpreter, importing
  every deploy-core module imports none of torch, aeon, ray, scipy, matplotlib, the
  research harness (``dsp_experiments``) or the emulator provisioning.
* ``test_wheel_predicts_on_emulated_pi4``: the same wheel and the aarch64 cp311 wheels of
  every core dependency (pip fails if one has none) run ``Classifier.predict`` under
  qemu (Cortex-A72, :mod:`dsp_deploy.emulator`), and agree with x86.

The install tests need network access to PyPI on first use; the emulator needs a Debian/Ubuntu host.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from dsp_deploy import data, metadata
from dsp_deploy.runtime import Classifier

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "lite_gunpoint.onnx"
SAMPLE = ROOT / "examples" / "data" / "gunpoint_sample.csv"
FORBIDDEN = ("torch", "aeon", "ray")
L = 150

GUARD = f"""
import importlib.abc, os, sys

class _Forbidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {FORBIDDEN!r}:
            with open(os.environ["DSP_IMPORT_LOG"], "a") as log:
                log.write(name + " " + " ".join(sys.argv) + "\\n")
            raise ImportError(name + " must not be imported by the core install")
        return None

if os.environ.get("DSP_IMPORT_LOG"):
    sys.meta_path.insert(0, _Forbidden())
"""


# --- what the deploy core imports (fast) ------------------------------------------------

# The research harness, the training side and the emulator provisioning: all outside the
# core. The CLI registers `train` and `sweep` but imports their packages in the command.
OUTSIDE_CORE = ("dsp_deploy.nets", "dsp_deploy.train", "dsp_deploy.emulator")
NOT_IN_CORE = (*FORBIDDEN, "scipy", "matplotlib", "dsp_experiments", *OUTSIDE_CORE)


def core_modules() -> list[str]:
    """Every module of ``dsp_deploy`` but the training side and the emulator."""
    names = []
    for path in sorted((ROOT / "dsp_deploy").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not name.startswith(OUTSIDE_CORE) and name != "dsp_deploy.__main__":
            names.append(name)
    return names


def imported_after(modules: list[str]) -> list[str]:
    """The modules a fresh interpreter has loaded after importing ``modules``."""
    code = (
        "import importlib, json, sys\n"
        "for m in sys.argv[1:]: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return json.loads(run([sys.executable, "-c", code, *modules], env=env).stdout)


def _outside(loaded: list[str]) -> list[str]:
    return [m for m in loaded if any(m == n or m.startswith(n + ".") for n in NOT_IN_CORE)]


def test_deploy_core_imports_no_training_research_or_emulator_package() -> None:
    modules = core_modules()
    assert {"dsp_deploy.cli", "dsp_deploy.io", "dsp_deploy.compress.pipeline"} <= set(modules)
    assert "dsp_deploy.bench.runner" in modules and len(modules) > 40
    loaded = imported_after(modules)
    assert set(modules) <= set(loaded)  # they were all imported
    assert _outside(loaded) == []


def test_deploy_core_imports_the_check_names_what_it_must() -> None:
    loaded = ["dsp_deploy.io", "torch", "torch.nn", "torchvision", "dsp_experiments.stats",
              "scipy.stats", "dsp_deploy.emulator", "dsp_deploy.nets.lite", "rayon"]  # fmt: skip
    assert _outside(loaded) == [
        "torch", "torch.nn", "dsp_experiments.stats", "scipy.stats", "dsp_deploy.emulator",
        "dsp_deploy.nets.lite",
    ]  # fmt: skip


def toy_model(path: Path) -> Path:
    """A small conv classifier with our metadata (untrained; GunPoint's shape)."""
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        lite (float[batch, 1, {L}] x) => (float[batch, 2] probabilities)
        {{
            c = Conv <pads = [4, 4], kernel_shape = [9]> (x, w, b)
            r = Relu (c)
            g = GlobalAveragePool (r)
            f = Flatten (g)
            logits = Gemm <transB = 1> (f, wd, bd)
            probabilities = Softmax <axis = 1> (logits)
        }}
        """
    )
    shapes = {"w": (8, 1, 9), "b": (8,), "wd": (2, 8), "bd": (2,)}
    model.graph.initializer.extend(
        onnx.numpy_helper.from_array(rng.normal(0, 0.5, s).astype(np.float32), k)
        for k, s in shapes.items()
    )
    metadata.write_metadata(
        model,
        {
            metadata.CLASSES: ["1", "2"],
            metadata.INPUT_LENGTH: str(L),
            metadata.INPUT_CHANNELS: "1",
            metadata.NORMALISATION: metadata.ZNORM,
            metadata.OUTPUT: "probabilities",
        },
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def sample_series() -> np.ndarray:
    return np.loadtxt(SAMPLE, delimiter=",", skiprows=1, usecols=range(1, L + 1))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return SHIPPED if SHIPPED.exists() else toy_model(tmp_path_factory.mktemp("m") / "m.onnx")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's wheel, built from a copy so no build/ lands in the tree."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("dsp_deploy", "dsp_experiments"):
        shutil.copytree(ROOT / package, src / package, ignore=_ignored)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(out)])
    (found,) = out.glob("dsp_deploy-*.whl")
    return found


def _ignored(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    return result


def du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# --- core install on this machine ------------------------------------------------------


@pytest.fixture(scope="module")
def core_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("core") / "venv"
    start = time.perf_counter()
    run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "install", "--no-input", str(wheel)])
    seconds = time.perf_counter() - start
    (site,) = venv.glob("lib/python3.*/site-packages")
    (site / "_dsp_import_guard.py").write_text(GUARD)
    (site / "_dsp_import_guard.pth").write_text("import _dsp_import_guard\n")
    logger.info("core install: %.0f s, venv %.0f MB", seconds, du_mb(venv))
    return venv


@pytest.fixture
def in_venv(core_venv: Path, tmp_path: Path):
    """Run a command from the core venv's bin/ with the import guard on; check the log."""
    log = tmp_path / "imports.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"DSP_IMPORT_LOG": str(log), "PATH": f"{core_venv / 'bin'}{os.pathsep}{env['PATH']}"}

    def go(*args: str) -> str:
        result = run(list(args), env=env, cwd=tmp_path)
        assert not log.exists(), f"forbidden imports:\n{log.read_text()}"
        return result.stdout

    return go


@pytest.mark.slow
def test_core_install_has_no_training_packages(core_venv: Path, in_venv) -> None:
    code = "import importlib.util as u; print([m for m in {!r} if u.find_spec(m)])"
    python = str(core_venv / "bin" / "python")  # without the guard, which would refuse
    assert run([python, "-c", code.format(FORBIDDEN)]).stdout.strip() == "[]"
    assert "compress" in in_venv("dsp-deploy", "--help")


@pytest.mark.slow
def test_core_install_runs_the_deploy_cli(in_venv, model: Path, tmp_path: Path) -> None:
    test = data.load_dataset("GunPoint", "test", normalise=False)
    dataset, calib = tmp_path / "gunpoint_test.npz", tmp_path / "calib.npz"
    np.savez(dataset, X=test.X, y=np.array(test.classes)[test.y])
    np.savez(calib, x=data.znormalise(test.X[:32]))
    report = json.loads(
        in_venv("dsp-deploy", "eval", str(model), "--dataset", str(dataset), "--json")
    )
    assert report["n"] == 150 and 0 <= report["accuracy"] <= 1
    assert json.loads(in_venv("dsp-deploy", "inspect", str(model), "--json"))
    out = tmp_path / "small.onnx"
    in_venv("dsp-deploy", "compress", str(model), "--calib", str(calib), "-o", str(out), "--json")
    assert out.stat().st_size > 0
    bench = ("--runs", "5", "--warmup", "1", "--rounds", "1", "--json")
    assert json.loads(in_venv("dsp-deploy", "bench", str(model), *bench))["results"]


@pytest.mark.slow
def test_core_install_runs_the_runtime_and_example_app(in_venv, model: Path) -> None:
    code = (
        "import json, sys, numpy as np; from dsp_deploy.runtime import Classifier; "
        f"x = np.loadtxt(sys.argv[2], delimiter=',', skiprows=1, usecols=range(1, {L + 1})); "
        "print(json.dumps(Classifier(sys.argv[1]).predict(x).tolist()))"
    )
    labels = json.loads(in_venv("python", "-c", code, str(model), str(SAMPLE)))
    assert labels == Classifier(model).predict(sample_series()).tolist()
    app = ROOT / "examples" / "classify_csv.py"
    out = in_venv("python", str(app), "--model", str(model), "--id-column", str(SAMPLE))
    assert [line.split(",")[1] for line in out.splitlines()[1:]] == labels


# --- the wheel on an emulated Raspberry Pi 4 -------------------------------------------


@pytest.mark.slow
def test_wheel_predicts_on_emulated_pi4(wheel: Path, model: Path, tmp_path: Path) -> None:
    from dsp_deploy import emulator as pi4

    try:
        emulator = pi4.ensure_emulator()
    except pi4.EmulatorError as e:
        pytest.skip(f"no emulated Pi here: {e}")
    pyver = emulator.python.name.removeprefix("python")  # "3.11"
    target = tmp_path / "site"
    start = time.perf_counter()
    run(
        [
            sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install",
            "--no-input", "--no-compile", "--target", str(target), "--only-binary=:all:",
            "--implementation", "cp", "--python-version", pyver,
            "--abi", f"cp{pyver.replace('.', '')}",
            *(arg for tag in _aarch64_tags(emulator) for arg in ("--platform", tag)),
            str(wheel),
        ]
    )  # fmt: skip
    logger.info("aarch64 core install: %.0f s, %.0f MB", time.perf_counter() - start,
                   du_mb(target))  # fmt: skip
    code = (
        "import json, platform, sys, numpy as np; from dsp_deploy.runtime import Classifier; "
        "x = np.array(json.loads(sys.argv[2])); clf = Classifier(sys.argv[1], threads=1); "
        "print(json.dumps([platform.machine(), clf.predict(x).tolist(), "
        "clf.predict_proba(x).tolist()]))"
    )
    series = sample_series()
    env = emulator.env() | {"PYTHONPATH": str(target)}
    result = run(emulator.command(["-c", code, str(model), json.dumps(series.tolist())]), env=env)
    machine, labels, proba = json.loads(result.stdout)
    host = Classifier(model, threads=1)
    assert machine == "aarch64"
    assert labels == host.predict(series).tolist()
    np.testing.assert_allclose(proba, host.predict_proba(series), atol=1e-5)


def _aarch64_tags(emulator) -> list[str]:
    """manylinux tags the emulated glibc accepts, newest first (as emulator.py picks them)."""
    glibc_file = emulator.python.parents[2] / ".glibc"  # emulator.py: <sysroot>/.glibc
    glibc = int(glibc_file.read_text()) if glibc_file.exists() else 17
    return [f"manylinux_2_{g}_aarch64" for g in range(glibc, 16, -1)] + ["manylinux2014_aarch64"]
