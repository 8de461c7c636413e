#!/usr/bin/env python3
"""Classify time series from a CSV file or stdin with a dsp-deploy ONNX model.

    python examples/classify_csv.py --model models/lite_gunpoint.onnx \\
        --id-column examples/data/gunpoint_sample.csv
    some-sensor-logger | python examples/classify_csv.py --model model.onnx -

Input: one series per row, its values separated by commas, as recorded (the model's
metadata says how to normalise them). A first row holding anything that is not a number
is a header and skipped (``--header yes`` for a header of numbers such as ``0,1,2``);
blank lines are skipped. With ``--id-column`` the first field of each row is its id;
otherwise the id is the row's line number.

Output on stdout, CSV: ``id,label,probability`` — the most probable class and its
probability — one line per series, written as each batch of ``--batch-size`` rows is done
(so a stream can be classified as it arrives). A batch is checked and classified before
any of it is written: input that fails in its first batch writes nothing, not even the
header.

Needs only numpy, onnxruntime and ``dsp_deploy.runtime`` (the core install: runs on a
Raspberry Pi). Exit status: 0 done; 2 bad input (a missing file or model, a value that
is not a number, rows of different lengths, series the model cannot take); 141, with
nothing on stderr, when the reader of stdout has gone (``... | head``).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TextIO

import numpy as np

from dsp_deploy.errors import DspDeployError
from dsp_deploy.runtime import Classifier, SeriesError

BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer its reader left


class InputFileError(ValueError):
    """A row of the input that cannot be read as a series."""


@dataclass(frozen=True)
class Row:
    id: str
    values: tuple[float, ...]


def read_rows(lines: Iterable[str], *, id_column: bool, header: str, where: str) -> Iterator[Row]:
    """Series rows of a CSV stream, per the module docstring; InputFileError on bad rows."""
    width = None
    seen_first = False
    for line_no, fields in enumerate(csv.reader(lines), start=1):
        if all(not f.strip() for f in fields):
            continue
        key, cells = (fields[0].strip(), fields[1:]) if id_column else (None, fields)
        first, seen_first = not seen_first, True
        if first and (header == "yes" or (header == "auto" and not all(map(_is_number, cells)))):
            continue
        values = tuple(_value(cell, where, line_no) for cell in cells)
        if not values or (width is not None and len(values) != width):
            raise InputFileError(
                f"{where}, line {line_no}: {len(values)} values; "
                + ("expected at least one" if not values else f"the rows above have {width}")
            )
        width = len(values)
        yield Row(key if key is not None else str(line_no), values)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _value(cell: str, where: str, line_no: int) -> float:
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # NaN, inf and empty fields are not series values
        raise InputFileError(f"{where}, line {line_no}: {cell.strip()!r} is not a finite number")
    return value


HEADER = ("id", "label", "probability")


def classify(clf: Classifier, rows: Iterator[Row], out: TextIO, batch_size: int) -> int:
    """Write ``id,label,probability`` per row; return how many series were classified.

    Each batch is read, checked and classified before any of it is written, the header
    with the first: input that fails in its first batch leaves stdout empty."""
    writer = csv.writer(out, lineterminator="\n")
    done = 0
    while batch := list(islice(rows, batch_size)):
        lines = _labelled(clf, batch)
        writer.writerows([HEADER, *lines] if done == 0 else lines)
        out.flush()
        done += len(batch)
    if done == 0:
        writer.writerow(HEADER)
    return done


def _labelled(clf: Classifier, batch: list[Row]) -> list[tuple[str, str | int, str]]:
    """``(id, label, probability)`` of each row: the most probable class."""
    proba = clf.predict_proba(np.array([r.values for r in batch], dtype=np.float64))
    best = proba.argmax(axis=1)
    names = clf.classes
    top = proba[np.arange(len(best)), best]
    return [
        (row.id, names[k] if names else int(k), f"{p:.4f}")
        for row, k, p in zip(batch, best, top, strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Classify time series (one per CSV row) with an ONNX model.",
    )
    parser.add_argument("input", help="CSV file, or - for stdin")
    parser.add_argument("--model", "-m", required=True, help="ONNX model (.onnx)")
    parser.add_argument("--id-column", action="store_true", help="first field is the id")
    parser.add_argument(
        "--header",
        choices=("auto", "yes", "no"),
        default="auto",
        help="first row is a header: auto = when it holds a field that is not a number",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="series per model run")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be ≥ 1; got {args.batch_size}")
    where = "stdin" if args.input == "-" else args.input
    try:
        clf = Classifier(args.model, threads=args.threads)
        with _open(args.input) as lines:
            classify(
                clf,
                read_rows(lines, id_column=args.id_column, header=args.header, where=where),
                sys.stdout,
                args.batch_size,
            )
    except BrokenPipeError:  # the reader has gone (``| head``): stop, quietly
        _drop_stdout()
        return BROKEN_PIPE
    except (SeriesError, OSError) as e:  # series the model cannot take; unreadable input
        print(f"error: {where}: {e}", file=sys.stderr)
        return 2
    except (InputFileError, DspDeployError) as e:  # their messages name the file concerned
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _open(path: str) -> TextIO:
    if path == "-":
        return sys.stdin
    return open(path, newline="", encoding="utf-8")  # noqa: SIM115 (closed by the caller)


if __name__ == "__main__":
    sys.exit(main())
