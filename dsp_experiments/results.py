"""A sweep's folder: results CSV (one row per finished task), artefacts and manifest.

Layout of ``DIR``::

    sweep.json            the protocol the sweep runs under (a rerun must match it)
    results.csv           one row per finished task, keyed by (dataset, arch, variant, seed)
    probs/KEY.npz         the task's test-set probabilities and labels (for ensembles)
    models/KEY.KIND.EXT   what a downstream task reads (``tasks.saved_kinds``), whatever
                          ``keep_models`` says: ``KEY.sparse.onnx``, dsp-onnx's model before
                          compression (dsp-onnx-rule and dsp-onnx-auto read it);
                          ``KEY.state.pt``, dsp-onnx's trained member as a torch
                          ``state_dict`` (``torch.save``), which dsp-retrain starts from;
                          ``KEY.final.onnx``, dense's model (dense-onnx-auto reads it) and,
                          with ``keep_models``, every task's final model
    failures.jsonl        one JSON line (key, error, time) per failed task, appended by the
                          runner (``runner._log_failure``); a failed task gets no row, so a
                          rerun runs it again

Commit protocol. Only the driver writes, never a worker: workers return their result to
the driver, so a cluster needs no shared filesystem and a retried worker cannot write
twice. For each finished task the driver writes the artefacts first (each atomically:
temporary file in the same folder, then ``os.replace``), then appends the row. The row is
the commit marker: a task counts as done once its row is in ``results.csv``.

Appending a row: under an exclusive ``flock`` on ``DIR/.lock`` (two drivers on one
folder cannot interleave), re-read the keys and skip a key already present (idempotent:
a task retried after its row landed adds nothing), then one ``write`` of the whole line
on an ``O_APPEND`` descriptor, ``fsync``. A driver killed mid-write can leave at most a
partial last line without its newline; readers ignore it and the next append cuts it off,
so that task simply runs again. One file rather than one file per task: the CSV is the
table people read, and single-line appends under a lock are atomic enough without a
merge step.

Schema evolution. A sweep folder outlives code changes, so ``COLUMNS`` only grows: a new
column goes anywhere, none is removed or reordered. A ``results.csv`` whose header is an
older version of ``COLUMNS`` (its columns a subset, in ``COLUMNS``' order, keys included)
is rewritten once, under the lock and atomically, with the current header and the new
cells empty, before the first row is appended (``bind`` and ``commit`` check); any other
header is refused, since appended rows would not line up with it. ``rows`` reads either
kind and gives every ``COLUMNS`` key (empty where the file has no such column), so a row
reads the same before and after the rewrite.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from dsp_deploy.errors import InputError
from dsp_deploy.io import write_atomic
from dsp_experiments.protocols import Protocol

log = logging.getLogger(__name__)

KEY_COLUMNS: tuple[str, ...] = ("dataset", "arch", "variant", "seed")
COLUMNS: tuple[str, ...] = (
    *KEY_COLUMNS,
    "protocol",
    "epochs",
    "retrain_epochs",
    "steps",
    "sparsity",
    "accuracy",
    "accuracy_none",  # dsp-onnx-rule under each compensation (COMPENSATIONS)
    "accuracy_mean",
    "accuracy_lstsq",
    "accuracy_reconstruct",
    "accuracy_unpruned",  # the sparse model before compression (dsp-onnx, -exact, -rule)
    "train_accuracy",
    "params",
    "macs",
    "params_dense",
    "macs_dense",
    "compression",
    "macs_reduction",
    "params_torch",
    "latency_ms",
    "latency_ratio",
    "dead_channels",
    "kept_channels",
    "width",
    "verified",
    "failures",
    "train_seconds",
    "compress_seconds",
    "task_seconds",
    "n_train",
    "n_test",
    "length",
    "n_classes",
    "host",
    "device",  # where the task trained: cpu, or cuda:<GPU name> (empty in older rows)
    "threads",  # the task's CPU threads (empty in older rows: 1)
    "gpus",  # the task's share of a GPU, 0 on CPU (empty in older rows)
)

Key = tuple[str, str, str, str]
# file extension of each model kind a task returns (tasks.TaskOutput.models)
MODEL_KINDS: Mapping[str, str] = MappingProxyType(
    {"sparse": "onnx", "state": "pt", "final": "onnx"}
)


def row_key(row: Mapping[str, Any]) -> Key:
    """The idempotent key of a row: (dataset, arch, variant, seed) as text."""
    return tuple(str(row[c]) for c in KEY_COLUMNS)  # type: ignore[return-value]


def key_name(key: Key) -> str:
    """A file-name-safe stem for ``key``."""
    return "__".join(re.sub(r"[^A-Za-z0-9_.-]", "_", part) for part in key)


class ResultsStore:
    """The folder of one sweep; see the module docstring for the commit protocol."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"sweep folder {self.root} exists and is not a folder")
        self.csv = self.root / "results.csv"

    # ---- manifest -------------------------------------------------------------------
    def bind(self, protocol: Protocol) -> None:
        """Record ``protocol`` on the first run; refuse a rerun under another budget.

        Seeds are not part of the budget: a rerun may add seeds (more ensemble members),
        and the manifest then lists every seed run so far. Also brings an older
        ``results.csv`` header up to date, or refuses a foreign one.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = self.root / "sweep.json"
        wanted = protocol.to_dict()
        if manifest.exists():
            stored = json.loads(manifest.read_text())["protocol"]
            diff = sorted(
                k
                for k in wanted
                if k != "seeds" and json.dumps(wanted[k]) != json.dumps(stored.get(k))
            )
            if diff:
                raise InputError(
                    f"{manifest} holds a {stored.get('name')!r} sweep that differs in "
                    f"{', '.join(diff)}; use another --out folder or the same settings"
                )
            seeds = list(dict.fromkeys([*stored.get("seeds", []), *wanted["seeds"]]))
            if seeds != stored.get("seeds"):
                wanted["seeds"] = seeds
                _atomic_write(manifest, json.dumps({"protocol": wanted}, indent=2).encode())
        else:
            _atomic_write(manifest, json.dumps({"protocol": wanted}, indent=2).encode())
        with self._locked():  # a refused header fails here, before any task runs
            self._upgrade_header()

    def protocol(self) -> Protocol | None:
        manifest = self.root / "sweep.json"
        if not manifest.exists():
            return None
        return Protocol.from_dict(json.loads(manifest.read_text())["protocol"])

    # ---- rows -----------------------------------------------------------------------
    def rows(self) -> tuple[dict[str, str], ...]:
        """Committed rows, first one per key, as text (a torn last line is ignored).

        Every row has every ``COLUMNS`` key: empty where the file predates the column.
        """
        if not self.csv.exists():
            return ()
        text = self.csv.read_text()
        text = text[: text.rfind("\n") + 1]
        seen: dict[Key, dict[str, str]] = {}
        for row in csv.DictReader(io.StringIO(text)):
            # None as a key: more cells than the header; as a value: fewer (a row cut short)
            ragged = None in row or None in row.values()
            if ragged or any(row.get(c) in (None, "") for c in KEY_COLUMNS):
                log.warning("%s: skipping a malformed row %s", self.csv, row)
                continue
            seen.setdefault(row_key(row), {**dict.fromkeys(COLUMNS, ""), **row})
        return tuple(seen.values())

    def done(self) -> frozenset[Key]:
        return frozenset(row_key(r) for r in self.rows())

    def commit(
        self,
        row: Mapping[str, Any],
        *,
        probabilities: np.ndarray,
        labels: np.ndarray,
        models: Mapping[str, bytes] = {},  # noqa: B006 - read only
    ) -> bool:
        """Write the artefacts, then append ``row``; False when its key was already there."""
        key = row_key(row)
        self._check_columns(row)
        if key in self.done():  # keep the committed row's artefacts: they belong to it
            return False
        files = {self.model_path(key, kind): data for kind, data in models.items()}
        self.root.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, probabilities=probabilities.astype(np.float32), labels=labels)
        _atomic_write(self.probs_path(key), buffer.getvalue())
        for path, data in files.items():
            _atomic_write(path, data)
        with self._locked():
            self._upgrade_header()
            if key in self.done():
                log.info("row %s already committed; not appended again", key)
                return False
            self._append_line(row)
        return True

    def probs_path(self, key: Key) -> Path:
        return self.root / "probs" / f"{key_name(key)}.npz"

    def model_path(self, key: Key, kind: str) -> Path:
        if kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {kind!r}; expected one of {tuple(MODEL_KINDS)}")
        return self.root / "models" / f"{key_name(key)}.{kind}.{MODEL_KINDS[kind]}"

    def load_probs(self, key: Key) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, labels) of a committed task."""
        path = self.probs_path(key)
        try:
            with np.load(path, allow_pickle=False) as f:
                return f["probabilities"], f["labels"]
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"{path}: expected probabilities and labels of {key}: {e}") from e

    def _check_columns(self, row: Mapping[str, Any]) -> None:
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            raise ValueError(f"result row has columns {unknown} not in the results schema")

    def _upgrade_header(self) -> None:
        """Rewrite a file under an older header with the current one; call under the lock."""
        if not self.csv.exists():
            return
        with self.csv.open(newline="") as f:  # every commit checks: read the header only
            first = f.readline()
        if not first.endswith("\n"):
            return  # no whole header yet: the next append cuts it and writes one
        header = tuple(next(csv.reader([first])))
        if header == COLUMNS:
            return
        text = self.csv.read_text()
        if not _is_older_schema(header):
            raise InputError(
                f"{self.csv} has the columns {list(header)}; expected {list(COLUMNS)} or an "
                "older version of them (a subset in that order, with the key columns "
                f"{list(KEY_COLUMNS)}); use another --out folder"
            )
        missing = [c for c in COLUMNS if c not in header]
        _atomic_write(self.csv, _with_columns(text, header).encode())
        log.info("%s: rewrote its header with the new columns %s (empty)", self.csv, missing)

    def _append_line(self, row: Mapping[str, Any]) -> None:
        fd = os.open(self.csv, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _cut_torn_tail(fd)
            line = io.StringIO()
            writer = csv.DictWriter(line, fieldnames=COLUMNS, lineterminator="\n")
            if os.fstat(fd).st_size == 0:
                writer.writeheader()
            writer.writerow({c: _cell(row.get(c)) for c in COLUMNS})
            os.write(fd, line.getvalue().encode())  # one write: the row lands whole or torn
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _cell(value: Any) -> str:
    """The text of one cell, on one line: a row is one physical line (see ``_cut_torn_tail``)."""
    return " ".join(_text(value).splitlines())


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return ";".join(str(v) for v in value)
    return str(value)


def _is_older_schema(header: Sequence[str]) -> bool:
    """Whether ``header`` is ``COLUMNS`` less some columns, in ``COLUMNS``' order."""
    if not set(KEY_COLUMNS) <= set(header) <= set(COLUMNS):
        return False
    positions = [COLUMNS.index(c) for c in header]
    return positions == sorted(set(positions))  # in order, each once


def _with_columns(text: str, header: Sequence[str]) -> str:
    """``text`` (a CSV under ``header``) under ``COLUMNS``, with the new cells empty."""
    end = text.rfind("\n") + 1
    whole, tail = text[:end], text[end:]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for cells in list(csv.reader(io.StringIO(whole)))[1:]:
        if len(cells) == len(header):
            cells = [dict(zip(header, cells, strict=True)).get(c, "") for c in COLUMNS]
        writer.writerow(cells)  # a ragged row is kept as written, not guessed at
    return out.getvalue() + tail  # a torn last line too: the next append cuts it


def _cut_torn_tail(fd: int) -> None:
    """Truncate a last line that a killed writer left without its newline."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    tail = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16)))
    if tail.endswith(b"\n"):
        return
    cut = tail.rfind(b"\n")
    keep = (size - len(tail) + cut + 1) if cut >= 0 else 0
    log.warning("results file: cutting a torn last line (%d bytes)", size - keep)
    os.ftruncate(fd, keep)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: f.write(data))
