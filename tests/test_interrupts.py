"""Interrupt safety: commands killed at random points, Ctrl-C and friends, Ray workers killed.

The contract under test:

* A command killed outright (SIGKILL) leaves each output absent, as it was before, or
  complete and byte-identical to an uninterrupted run's output; never torn. Its inputs
  are unchanged. It may leave one temp file ``.<output name>.<16 hex>.tmp`` beside an
  output; the next write of that output removes it (``io.write_atomic``), and nothing
  else is left behind.
* SIGINT (Ctrl-C), SIGTERM and SIGHUP unwind the command (temp file removed, benchmark
  workers killed, Ray shut down) and end in exactly one stderr line, ``error:
  interrupted`` / ``terminated`` / ``hung up``, with exit 130 / 143 / 129 and no
  traceback. A signal that was ignored when the command started (``nohup``) stays so.
* Sweep: a Ray worker killed mid-task is retried and its row lands once; an interrupted
  driver keeps every finished row; each row is one physical line, so a row torn at any
  byte is never read and the next append cuts it off.

Kill points: seeded random delays over the measured duration of an uninterrupted run,
and inotify events in the output folder (temp file created, first bytes written, chmod
just before the rename, the rename), so the write window, a few milliseconds of a
seconds-long run, is hit on purpose rather than by luck. The slow tests try many and
print a tally: ``pytest -m slow tests/test_interrupts.py -s -k kill_points``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dsp_deploy import io
from dsp_experiments.results import COLUMNS, ResultsStore

ROOT = Path(__file__).resolve().parents[1]
TEMP = re.compile(r"\..+\.[0-9a-f]{16}\.tmp")
TIMEOUT = 300  # seconds for one command on a loaded 2-core machine

# inotify event masks (linux/inotify.h)
IN_MODIFY, IN_ATTRIB, IN_MOVED_TO, IN_CREATE = 0x2, 0x4, 0x80, 0x100
# Stages of io.write_atomic, in order: the first event of each kind in the output folder.
WRITE_STAGES = {"created": IN_CREATE, "writing": IN_MODIFY, "chmod": IN_ATTRIB}
ALL_STAGES = {**WRITE_STAGES, "renamed": IN_MOVED_TO}
SIGNALS = {  # signal: (exit code, stderr line)
    signal.SIGINT: (130, "error: interrupted\n"),
    signal.SIGTERM: (143, "error: terminated\n"),
    signal.SIGHUP: (129, "error: hung up\n"),
}


# ---- helpers ---------------------------------------------------------------------------
def _cli(*args: str | os.PathLike) -> list[str]:
    return [sys.executable, "-m", "dsp_deploy.cli", *map(str, args)]


def _default_signals() -> None:
    # A Ctrl-C from a terminal: children of a background or non-interactive shell (nohup,
    # `cmd &`, some CI runners) start with SIGINT ignored, which the CLI keeps ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def _popen(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(*args, preexec_fn=_default_signals, **kwargs)  # noqa: PLW1509


def _env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temps(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if TEMP.fullmatch(n))


class _FolderEvents:
    """inotify events of one folder (Linux): ``wait(mask)`` blocks until one arrives."""

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        mask = IN_CREATE | IN_MODIFY | IN_ATTRIB | IN_MOVED_TO
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(folder), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {folder}")

    def wait(self, mask: int, name: str, proc: subprocess.Popen, timeout: float) -> bool:
        """True once an event in ``mask`` on a file whose name contains ``name`` arrives;
        False if ``proc`` ends or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if not select.select([self.fd], [], [], 0.05)[0]:
                continue
            data, i = os.read(self.fd, 1 << 16), 0
            while i < len(data):
                _, kind, _, size = struct.unpack_from("iIII", data, i)
                file = data[i + 16 : i + 16 + size].rstrip(b"\0").decode()
                i += 16 + size
                if kind & mask and name in file:
                    return True
        return False

    def close(self) -> None:
        os.close(self.fd)


@contextmanager
def _events(folder: Path) -> Iterator[_FolderEvents]:
    events = _FolderEvents(folder)
    try:
        yield events
    finally:
        events.close()


def _children(pid: int) -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            tree.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, found, todo = _children(pid), [], [pid]
    while todo:
        kids = tree.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_until(check: Callable[[], object], proc: subprocess.Popen, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{what}: not seen within {timeout} s (exit {proc.poll()})")


def _mapped(proc: subprocess.Popen, library: str) -> Callable[[], bool]:
    """Whether ``proc`` has loaded ``library``: its command is under way."""

    def check() -> bool:
        try:
            return library in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            return False

    return check


def _gone(pids: Sequence[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(map(_running, pids)):
        time.sleep(0.1)
    return [p for p in pids if _running(p)]


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    return out, err


# ---- compress under SIGKILL ------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """Inputs copied to a private folder, and an uninterrupted run's output."""

    model: Path
    calib: Path
    reference: bytes
    seconds: float
    hashes: tuple[str, str]

    def argv(self, out: Path) -> list[str]:
        return _cli("compress", self.model, "--calib", self.calib, "-o", out, "--json")

    def inputs_intact(self) -> bool:
        return (_sha(self.model), _sha(self.calib)) == self.hashes


def _make_case(folder: Path, name: str) -> Case:
    folder.mkdir(parents=True, exist_ok=True)
    model = Path(shutil.copy(ROOT / "models" / f"{name}.onnx", folder))
    calib = Path(shutil.copy(ROOT / "calibration" / f"{name}.npz", folder))
    hashes = (_sha(model), _sha(calib))
    out = folder / "reference.onnx"
    start = time.monotonic()
    subprocess.run(
        _cli("compress", model, "--calib", calib, "-o", out, "--json"),
        check=True, capture_output=True, timeout=TIMEOUT, env=_env(),
    )  # fmt: skip
    seconds = time.monotonic() - start
    io.load_model(out)  # a complete, valid model: it loads and passes the checker
    return Case(model, calib, out.read_bytes(), seconds, hashes)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Case]:
    made: dict[str, Case] = {}

    def get(name: str) -> Case:
        if name not in made:
            made[name] = _make_case(tmp_path_factory.mktemp("inputs") / name, name)
        return made[name]

    return get


@dataclass(frozen=True)
class Outcome:
    """What one kill left: ``state`` of the output and the temp files beside it."""

    killed: bool  # the signal arrived before the process had exited
    state: str  # absent | old | complete | partial
    temps: tuple[str, ...]
    strays: tuple[str, ...]  # anything else in the output folder
    inputs_intact: bool


def _state(out: Path, reference: bytes, old: bytes | None) -> str:
    if not out.exists():
        return "absent"
    data = out.read_bytes()
    if data == reference:
        return "complete"
    return "old" if data == old else "partial"


def _kill(
    argv: list[str],
    out: Path,
    *,
    delay: float | None = None,
    stage: str | None = None,
    name: str = "",
    sig: int = signal.SIGKILL,
) -> tuple[subprocess.Popen, bool, str]:
    """Run ``argv``; send ``sig`` after ``delay`` s or at the first ``stage`` event on a
    file in ``out``'s folder whose name contains ``name``. Returns (process, whether the
    signal was sent while it ran, its stderr)."""
    with _events(out.parent) as events:
        proc = _popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env()
        )
        try:
            if stage is not None:
                events.wait(ALL_STAGES[stage], name, proc, TIMEOUT)
            else:
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=delay)
            sent = proc.poll() is None
            if sent:
                proc.send_signal(sig)
            _, err = _finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc, sent, err


def _kill_compress(case: Case, folder: Path, *, old: bytes | None = None, **how) -> Outcome:
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "out.onnx"
    if old is not None:
        out.write_bytes(old)
    proc, sent, _ = _kill(case.argv(out), out, **how)
    assert proc.returncode in (0, -signal.SIGKILL), proc.returncode
    temps = _temps(folder)
    strays = sorted(set(os.listdir(folder)) - {out.name, *temps})
    return Outcome(
        killed=sent and proc.returncode != 0,
        state=_state(out, case.reference, old),
        temps=tuple(temps),
        strays=tuple(strays),
        inputs_intact=case.inputs_intact(),
    )


def _check(outcome: Outcome, *, old: bool) -> None:
    allowed = {"complete", "old" if old else "absent"}
    assert outcome.state in allowed, outcome
    assert len(outcome.temps) <= 1 and not outcome.strays, outcome
    assert outcome.inputs_intact, outcome


def test_compress_killed_at_seeded_random_times(cases, tmp_path) -> None:
    case = cases("lite_gunpoint")
    rng = random.Random(7)
    delays = sorted(rng.uniform(0, case.seconds) for _ in range(3))
    for i, delay in enumerate(delays):
        _check(_kill_compress(case, tmp_path / f"k{i}", delay=delay), old=False)


@pytest.mark.parametrize("stage", ["created", "writing"])
def test_compress_killed_while_writing_leaves_old_or_new_output(cases, tmp_path, stage) -> None:
    # An older output is there: afterwards it is that one or the new one, never a mix.
    case = cases("lite_gunpoint")
    old = case.model.read_bytes()
    outcome = _kill_compress(case, tmp_path / "k", old=old, stage=stage)
    assert outcome.killed, "the kill came after the run had ended"
    _check(outcome, old=True)


def test_rerun_after_a_kill_removes_the_dead_writers_temp_file(cases, tmp_path) -> None:
    case = cases("lite_gunpoint")
    _check(_kill_compress(case, tmp_path / "k", stage="chmod"), old=False)
    out = tmp_path / "k" / "out.onnx"
    done = subprocess.run(case.argv(out), capture_output=True, timeout=TIMEOUT, env=_env())
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == case.reference
    assert os.listdir(tmp_path / "k") == ["out.onnx"]


_SLOW_WRITER = """
import sys, time
from pathlib import Path
from dsp_deploy.io import write_atomic
def write(f):
    f.write(b"partial")
    f.flush()
    time.sleep(600)
write_atomic(Path(sys.argv[1]), write)
"""


def test_only_a_dead_writers_temp_file_is_removed(tmp_path) -> None:
    # A live writer (blocked mid-write) keeps its temp file; once SIGKILLed, the next
    # write of the same target removes it. Temp files of other targets are left alone.
    target, mine = tmp_path / "m.onnx", re.compile(r"\.m\.onnx\.[0-9a-f]{16}\.tmp")
    others = [".m.onnx.0123456789abcdef.data.0123456789abcdef.tmp", ".n.onnx.0123456789abcdef.tmp"]
    for name in others:
        (tmp_path / name).write_bytes(b"x")
    writer = _popen([sys.executable, "-c", _SLOW_WRITER, str(target)], env=_env())
    try:
        live = _wait_until(
            lambda: [t for t in _temps(tmp_path) if mine.fullmatch(t)
                     and (tmp_path / t).stat().st_size],
            writer, TIMEOUT, "the writer's temp file",
        )  # fmt: skip
        io.write_atomic(target, lambda f: f.write(b"first"))
        assert target.read_bytes() == b"first"
        assert set(live) <= set(_temps(tmp_path)), "a live writer's temp file was removed"
    finally:
        writer.kill()
        writer.wait()
    assert set(live) <= set(_temps(tmp_path))  # SIGKILL could not clean it up
    io.write_atomic(target, lambda f: f.write(b"second"))
    assert target.read_bytes() == b"second"
    assert sorted(os.listdir(tmp_path)) == sorted(["m.onnx", *others])


def test_an_exception_mid_write_removes_the_temp_file(tmp_path) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")

    def interrupted(f) -> None:
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.write_atomic(target, interrupted)
    assert os.listdir(tmp_path) == ["m.onnx"] and target.read_bytes() == b"old"


# ---- signals: one line, exit 128 + n, clean-up done -----------------------------------
def test_compress_interrupted_while_writing_unwinds(cases, tmp_path) -> None:
    # Ctrl-C as the temp file appears: it is removed, and the output is absent (or whole,
    # had the rename won the race).
    case = cases("lite_gunpoint")
    out = tmp_path / "out.onnx"
    proc, sent, err = _kill(case.argv(out), out, stage="created", sig=signal.SIGINT)
    assert sent, "the run ended before its output was written"
    assert (proc.returncode, err) == SIGNALS[signal.SIGINT]
    assert not _temps(tmp_path) and case.inputs_intact()
    assert _state(out, case.reference, None) in ("absent", "complete")


def test_a_hangup_ignored_by_nohup_stays_ignored(cases, tmp_path) -> None:
    case = cases("lite_gunpoint")
    out = tmp_path / "out.onnx"
    with _events(tmp_path) as events:
        proc = _popen(
            ["nohup", *case.argv(out)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, env=_env(),
        )  # fmt: skip
        assert events.wait(IN_CREATE, "out.onnx", proc, TIMEOUT)
        proc.send_signal(signal.SIGHUP)
        _, err = _finish(proc)
    assert (proc.returncode, err) == (0, "")
    assert out.read_bytes() == case.reference


def _bench_workers(proc: subprocess.Popen) -> list[int]:
    return [p for p in _descendants(proc.pid) if '"mode": "run"' in _cmdline(p)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])  # SIGTERM used to orphan it
def test_bench_signalled_mid_run_leaves_no_worker(tmp_path, sig) -> None:
    model = ROOT / "models" / "lite_gunpoint.onnx"
    argv = _cli("bench", model, "--runs", "1000000", "--rounds", "1", "--json")
    proc = _popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        workers = _wait_until(lambda: _bench_workers(proc), proc, TIMEOUT, "a bench worker")
        proc.send_signal(sig)
        out, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, err, out) == (*SIGNALS[sig], "")
    assert not _gone(workers), "bench left its worker running"


def test_eval_interrupted_mid_run(tmp_path) -> None:
    # Enough series that the run is still going when the signal comes.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 150)).astype(np.float32)
    y = rng.integers(1, 3, len(x))
    data = tmp_path / "big.npz"
    np.savez(data, X=x[:20], y=np.arange(20) % 2 + 1, X_test=x, y_test=y)
    model = ROOT / "models" / "inception_gunpoint.onnx"
    proc = _popen(
        _cli("eval", model, "--dataset", data, "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    _wait_until(_mapped(proc, "onnxruntime"), proc, TIMEOUT, "onnxruntime loaded")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)
    assert (proc.returncode, err, out) == (130, "error: interrupted\n", "")


@pytest.mark.torch
def test_train_interrupted_mid_training_writes_nothing(tmp_path) -> None:
    pytest.importorskip("torch")
    out, calib = tmp_path / "m.onnx", tmp_path / "m.npz"
    argv = _cli(
        "train", "--arch", "lite", "--dataset", "UnitTest", "--epochs", "100000",
        "-o", out, "--calib-out", calib, "-q",
    )  # fmt: skip
    proc = _popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    _wait_until(_mapped(proc, "libtorch_cpu"), proc, TIMEOUT, "torch loaded")
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    stdout, err = _finish(proc)
    # A SIGINT that lands while torch's import runs code through PyRun_* leaves CPython's
    # "unhandled KeyboardInterrupt" flag set, and at exit it re-raises SIGINT on itself
    # even though main() handled the interrupt: the status is then "killed by SIGINT",
    # which a shell reports as 130 too. Either way: one line, nothing written.
    assert proc.returncode in (130, -signal.SIGINT)
    assert (err, stdout) == ("error: interrupted\n", "")
    assert os.listdir(tmp_path) == []


def test_main_restores_the_signal_handlers(run_cli) -> None:
    before = {s: signal.getsignal(s) for s in SIGNALS}
    assert run_cli("--version").code == 0
    assert {s: signal.getsignal(s) for s in SIGNALS} == before


# ---- sweep results: one row, one line ----------------------------------------------------
def _row(seed: int, failures: str) -> dict:
    return {
        "dataset": "A", "arch": "lite", "variant": "dsp-onnx", "seed": seed,
        "protocol": "cpu-small", "epochs": 1, "accuracy": 0.5, "params": 10,
        "verified": False, "failures": failures,
    }  # fmt: skip


def _commit(store: ResultsStore, row: dict) -> bool:
    probs = np.eye(2, dtype=np.float32)[[0, 1]]
    return store.commit(row, probabilities=probs, labels=np.array([0, 1]))


def test_a_row_torn_at_any_byte_is_not_read_and_is_cut_by_the_next_append(tmp_path) -> None:
    # Cells with newlines too: a row is still one physical line.
    store = ResultsStore(tmp_path / "s")
    assert _commit(store, _row(1, "gate one\ngate two"))
    whole = store.csv.read_bytes()
    _commit(store, _row(2, "held-out\r\nagreement"))
    second = store.csv.read_bytes()[len(whole) :]
    assert whole.count(b"\n") == 2 and second.count(b"\n") == 1
    for cut in range(len(second)):
        store.csv.write_bytes(whole + second[:cut])  # the driver died mid-append
        rows = store.rows()
        assert [r["seed"] for r in rows] == ["1"], cut
        assert rows[0]["failures"] == "gate one gate two"
    assert _commit(store, _row(2, "again"))
    assert [(r["seed"], r["failures"]) for r in store.rows()] == [("1", "gate one gate two"),
                                                                  ("2", "again")]  # fmt: skip
    assert store.csv.read_bytes().count(b"\n") == 3


def test_a_row_cut_short_after_a_quoted_newline_is_not_read(tmp_path) -> None:
    # Written by a version that kept newlines in cells, torn right after one of them.
    store = ResultsStore(tmp_path)
    assert _commit(store, _row(1, ""))
    cells = ["A", "lite", "dsp-onnx", "2", "cpu-small", "1", "", "", "", '"first\n']
    with store.csv.open("a") as f:
        f.write(",".join(cells))
    assert len(COLUMNS) > len(cells)
    assert [r["seed"] for r in store.rows()] == ["1"]


# ---- sweep on Ray: a worker killed, then the driver interrupted -------------------------
def _sweep_workers(driver: subprocess.Popen) -> dict[str, int]:
    """Task name → pid of the Ray worker running it, among the driver's descendants."""
    found = {}
    for pid in _descendants(driver.pid):
        title = _cmdline(pid).strip()
        if title.startswith("ray::sweep:"):
            found[title.removeprefix("ray::sweep:")] = pid
    return found


def _keys(store: ResultsStore) -> list[str]:
    return ["/".join(r[c] for c in ("dataset", "arch", "variant", "seed")) for r in store.rows()]


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sweep_survives_a_killed_worker_and_an_interrupted_driver(tmp_path, sig) -> None:
    pytest.importorskip("ray")
    pytest.importorskip("torch")
    out = tmp_path / "sweep"
    argv = _cli(
        "sweep", "--datasets", "UnitTest", "--archs", "lite", "--variants", "dense",
        "--seeds", "1,2,3", "--epochs", "1", "--num-cpus", "1", "--out", out,
        "-q", "--no-report",
    )  # fmt: skip
    store = ResultsStore(out)
    driver = _popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        # 1. SIGKILL the worker of the first task to start: Ray runs it again in a new one.
        first, pid = next(iter(_wait_until(
            lambda: _sweep_workers(driver), driver, TIMEOUT, "a running sweep task"
        ).items()))  # fmt: skip
        os.kill(pid, signal.SIGKILL)
        _wait_until(
            lambda: _sweep_workers(driver).get(first, pid) != pid, driver, TIMEOUT,
            f"{first} retried in a new worker",
        )  # fmt: skip
        # 2. Interrupt the driver while that retry runs.
        ray_processes = _descendants(driver.pid)
        driver.send_signal(sig)
        _, err = _finish(driver)
    finally:
        if driver.poll() is None:
            driver.kill()
    code, line = SIGNALS[sig]
    assert driver.returncode == code, err
    assert "Traceback" not in err and err.endswith(line)
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [line.strip()]
    assert not _gone(ray_processes), "the driver left Ray processes running"
    kept, before = _keys(store), store.rows()
    assert len(kept) == len(set(kept)) < 3
    assert not (out / "failures.jsonl").exists()  # the killed worker was retried, not failed

    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    assert rerun.returncode == 0, rerun.stderr
    raw = store.csv.read_text().splitlines()[1:]
    assert len(raw) == 3 and sorted(_keys(store)) == [f"UnitTest/lite/dense/{s}" for s in "123"]
    assert all(r in store.rows() for r in before)  # finished rows kept as they were


# ---- many kill points (slow): the tally for the report ---------------------------------
def _plan(rng: random.Random, seconds: float, n: int) -> list[dict]:
    """``n`` kill points: half at random delays over the run, half on write events."""
    timed = [{"delay": rng.uniform(0, seconds)} for _ in range(n - n // 2)]
    stages = list(ALL_STAGES)
    evented = [{"stage": stages[i % len(stages)]} for i in range(n // 2)]
    return timed + evented


@pytest.mark.slow
def test_compress_kill_points(cases, tmp_path) -> None:
    rng = random.Random(2024)
    tally: Counter[str] = Counter()
    for name, n in (("lite_gunpoint", 40), ("inception_gunpoint", 26)):
        case = cases(name)
        for i, how in enumerate(_plan(rng, case.seconds, n)):
            old = case.model.read_bytes() if i % 2 else None
            outcome = _kill_compress(case, tmp_path / f"{name}-{i}", old=old, **how)
            _check(outcome, old=old is not None)
            kind = "event" if "stage" in how else "timed"
            left = "temp left" if outcome.temps else "no temp"
            tally[f"{name} {kind}: {outcome.state}, {left}"] += 1
            tally["kill points"] += outcome.killed
            tally["partial outputs"] += outcome.state == "partial"
    print("\ncompress kill points:", dict(sorted(tally.items())))
    assert tally["partial outputs"] == 0 and tally["kill points"] >= 50


@pytest.mark.slow
@pytest.mark.torch
def test_train_kill_points(tmp_path) -> None:
    pytest.importorskip("torch")
    base = ("train", "--arch", "lite", "--dataset", "UnitTest", "--epochs", "2", "-q")
    ref = tmp_path / "ref"
    ref.mkdir()
    start = time.monotonic()
    subprocess.run(
        _cli(*base, "-o", ref / "m.onnx", "--calib-out", ref / "m.npz"),
        check=True, capture_output=True, timeout=TIMEOUT, env=_env(),
    )  # fmt: skip
    seconds = time.monotonic() - start
    reference = {n: (ref / n).read_bytes() for n in ("m.onnx", "m.npz")}
    rng = random.Random(5)
    points = [{"delay": rng.uniform(0, seconds)} for _ in range(6)] + [
        {"stage": stage, "name": name} for name in ("m.onnx", "m.npz") for stage in WRITE_STAGES
    ]
    tally: Counter[str] = Counter()
    for i, how in enumerate(points):
        folder = tmp_path / f"k{i}"
        folder.mkdir()
        argv = _cli(*base, "-o", folder / "m.onnx", "--calib-out", folder / "m.npz")
        proc, sent, _ = _kill(argv, folder / "m.onnx", **how)
        assert proc.returncode in (0, -signal.SIGKILL)
        temps = _temps(folder)
        states = [_state(folder / n, data, None) for n, data in reference.items()]
        assert set(states) <= {"absent", "complete"} and len(temps) <= 1, (how, states, temps)
        assert set(os.listdir(folder)) - set(temps) <= set(reference)
        tally["kill points"] += sent and proc.returncode != 0
        tally[f"model {states[0]}, calibration {states[1]}, {len(temps)} temp"] += 1
    print("\ntrain kill points:", dict(sorted(tally.items())))
    assert tally["kill points"] >= 8  # the timed ones may come after a faster run ended


# What pip writes for the console script, after an import hook that stops the CLI's import
# half-way (at a command module) until a signal comes.
_PAUSED_ENTRY = """\
import sys, time

class Pause:
    def find_spec(self, name, path=None, target=None):
        if name == "dsp_deploy.commands.sweep":
            sys.stderr.write("paused\\n")
            sys.stderr.flush()
            time.sleep(TIMEOUT)
        return None

sys.meta_path.insert(0, Pause())
from dsp_deploy.__main__ import main
sys.exit(main())
"""


def test_ctrl_c_while_the_cli_is_still_importing_is_one_line(tmp_path) -> None:
    # The console script imports dsp_deploy.__main__ (light), which imports the CLI: typer
    # and every command module, ~0.3 s, before cli.main installs its handlers. A Ctrl-C in
    # that window is one line too. The hook holds the import there, so the signal lands in
    # the window however loaded the machine is.
    script = tmp_path / "dsp-deploy"
    script.write_text(_PAUSED_ENTRY.replace("TIMEOUT", str(TIMEOUT)))
    with _popen(  # SIGINT as from a terminal: a background shell's children ignore it
        [sys.executable, str(script), "--help"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        before = []  # anything the interpreter printed first (a warning) is not ours
        while (line := proc.stderr.readline()) not in ("paused\n", ""):
            before.append(line)
        assert line == "paused\n", "".join(before)
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        proc.wait(timeout=TIMEOUT)
    assert (proc.returncode, err) == (130, "error: interrupted\n"), err


def test_the_console_script_is_the_light_entry_point() -> None:
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="dsp-deploy")
    assert script.value == "dsp_deploy.__main__:main"
