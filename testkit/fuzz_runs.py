"""Running the commands on a fuzz case, and the contract each run must keep.

``run_case`` writes the case's model with a calibration set and a dataset that fit the
unmutated model, then runs ``inspect``, ``compress``, ``eval`` and, for a share of cases,
``bench --runs 1`` on it, each through a *runner*: by default in a forked child of this
(pre-imported) process (a segfault or abort kills the child, not the fuzzer; a hang hits
the timeout), with stdout/stderr on files. A run passes when:

* the child exited by itself with 0, 1 or 2 (no signal, no timeout);
* on a non-zero exit, stderr is exactly one line ``error: ...`` naming an input file,
  and holds no traceback;
* on a failure no output (model, external data, temp file) is left beside the inputs;
* the input files are byte for byte unchanged.

Separately, each mutant is handed *unvalidated* to ``onnxruntime.InferenceSession`` and
run once on zeros in a forked child: that measures what validation protects against
(crashes and hangs of onnxruntime itself), and whether any mutant that *passed*
``io.load_model`` still crashed onnxruntime (the question whether untrusted models need
a subprocess).
"""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from fuzz_cases import Source, make_case

ALLOWED_CODES = (0, 1, 2)


# --- running -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    command: str
    code: int | None  # exit code; None when killed by a signal or the timeout
    signal: int | None
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float


Runner = Callable[[list[str], Path], Run]


def run_forked(argv: list[str], folder: Path, timeout: float) -> Run:
    """``dsp-deploy ARGV`` in a forked child of this (pre-imported) process."""
    out, err = folder / ".stdout", folder / ".stderr"
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: never returns
        _child_cli(argv, out, err)
    code, sig, timed_out = wait_child(pid, timeout)
    return Run(
        argv[0],
        code,
        sig,
        timed_out,
        out.read_text(errors="replace") if out.exists() else "",
        err.read_text(errors="replace") if err.exists() else "",
        time.perf_counter() - start,
    )


def _child_cli(argv: list[str], out: Path, err: Path) -> None:
    code = 99
    try:
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        from dsp_deploy.cli import main

        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # an escaped exception: what a user would see is a traceback
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait_child(pid: int, timeout: float) -> tuple[int | None, int | None, bool]:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return None, os.WTERMSIG(status), False
            return os.WEXITSTATUS(status), None, False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, None, True
        time.sleep(0.005)


def raw_onnxruntime(model: bytes, folder: Path, timeout: float) -> str:
    """Unvalidated: ok | error | crash:<signal> | hang — onnxruntime alone on the bytes."""
    result = folder / ".raw"
    pid = os.fork()
    if pid == 0:
        status = "error"
        try:
            status = _raw_session(model)
        except BaseException:
            status = "error"
        finally:
            result.write_text(status)
            os._exit(0)
    code, sig, timed_out = wait_child(pid, timeout)
    if timed_out:
        return "hang"
    if sig is not None:
        return f"crash:{signal.Signals(sig).name}"
    return result.read_text() if result.exists() else f"exit:{code}"


def _raw_session(model: bytes) -> str:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feeds = {}
    for value in session.get_inputs():
        dims = [d if isinstance(d, int) and 0 <= d <= 4096 else 1 for d in value.shape]
        kind = {"tensor(float)": np.float32, "tensor(double)": np.float64}.get(value.type)
        if kind is None or int(np.prod(dims)) > 2**24:
            return "session"  # opened; no sane input to feed
        feeds[value.name] = np.zeros(dims, kind)
    session.run(None, feeds)
    return "ok"


def _digest(paths: list[Path]) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def commands(folder: Path, rng: np.random.Generator, bench_share: float) -> list[list[str]]:
    m = str(folder / "model.onnx")
    out = str(folder / "out.onnx")
    cmds = [
        ["inspect", m, "--json"],
        ["compress", m, "--calib", str(folder / "calib.npz"), "-o", out, "--threads", "1"],
        ["eval", m, "--dataset", str(folder / "data.npz"), "--split", "train", "--threads", "1"],
    ]
    if rng.random() < bench_share:
        cmds.append(["bench", m, "--runs", "1", "--warmup", "0", "--rounds", "1", "--json"])
    return cmds


def problems(run: Run, inputs: list[Path]) -> list[str]:
    """What is wrong with one command's run (empty: it behaved)."""
    found = []
    if run.timed_out:
        found.append("hang (timeout)")
    elif run.signal is not None:
        found.append(f"crash: killed by {signal.Signals(run.signal).name}")
    elif run.code not in ALLOWED_CODES:
        found.append(f"exit code {run.code}")
    if "Traceback" in run.stderr:
        found.append("traceback on stderr")
    if run.code not in (0, None):
        lines = run.stderr.splitlines()
        if len(lines) != 1 or not lines[0].startswith("error: "):
            found.append(f"stderr is not one 'error:' line: {run.stderr[-300:]!r}")
        elif not any(str(p) in lines[0] for p in inputs):
            found.append(f"error names no input file: {lines[0][:300]!r}")
    return found


def leftovers(folder: Path, before: set[str]) -> list[str]:
    """Files a failed command left in the case folder."""
    return sorted(p.name for p in folder.iterdir() if p.name not in before)


def run_case(
    srcs: tuple[Source, ...],
    seed: int,
    index: int,
    *,
    timeout: float = 60.0,
    bench_share: float = 0.15,
    raw: bool = True,
    runner: Runner | None = None,
) -> dict:
    """Make case ``index``, run every command on it; a JSON-ready record.

    ``runner(argv, folder)`` runs one command (default: ``run_forked`` with ``timeout``).
    """
    if runner is None:
        runner = functools.partial(run_forked, timeout=timeout)
    case, src = make_case(srcs, seed, index)
    rng = np.random.default_rng([seed, index, 1])
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        folder = Path(tmp)
        (folder / "model.onnx").write_bytes(case.model)
        np.savez(folder / "calib.npz", **src.calib)
        np.savez(folder / "data.npz", **src.dataset)
        inputs = [folder / n for n in ("model.onnx", "calib.npz", "data.npz")]
        digest = _digest(inputs)
        before = {p.name for p in folder.iterdir()} | {".stdout", ".stderr", ".raw"}
        record = {**asdict(case), "model": len(case.model), "runs": [], "problems": []}
        record["valid"] = _validates(folder / "model.onnx")
        if record["valid"].startswith("crash:"):
            record["problems"].append(f"io.load_model raised {record['valid'][6:]}")
        for argv in commands(folder, rng, bench_share):
            run = runner(argv, folder)
            found = problems(run, inputs)
            if run.code != 0:
                found += [f"left behind: {n}" for n in leftovers(folder, before)]
            for leftover in leftovers(folder, before):  # reset for the next command
                (folder / leftover).unlink()
            if _digest(inputs) != digest:
                found.append("an input file changed")
            record["runs"].append(
                {"command": run.command, "code": run.code, "seconds": round(run.seconds, 3)}
            )
            record["problems"] += [f"{run.command}: {p}" for p in found]
        record["raw_onnxruntime"] = raw_onnxruntime(case.model, folder, timeout) if raw else None
    return record


def _validates(path: Path) -> str:
    """'valid' if io.load_model accepts the file, else the error's class."""
    from dsp_deploy import io
    from dsp_deploy.errors import DspDeployError

    try:
        io.load_model(path)
    except DspDeployError as e:
        return type(e).__name__
    except Exception as e:  # a bug in validation itself: reported as a problem
        return f"crash:{type(e).__name__}: {e}"
    return "valid"
