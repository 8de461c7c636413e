"""Size of the product code: lines per file, function sizes, total lines.

    .venv/bin/python benchmarks/code_size.py [--root dsp_deploy] [--rev 41b753f] [--out FILE]

Definitions (every ``*.py`` under ``--root``, recursively):

* **lines**: physical lines of a file (``wc -l``); a file over ``LIMIT`` (400) is listed;
* **product lines**: non-blank lines, docstrings and comments included (they are part
  of what a maintainer reads);
* **code lines**: non-blank lines that are neither comment-only nor inside a docstring
  (a module, class or function docstring);
* **function size**: from the ``def`` line to the function's last line (docstring
  included, decorators not), for every function and method, nested ones too.

With ``--rev`` the same numbers are printed for that commit's ``--root`` (unpacked with
``git archive``) beside this checkout's. The report is markdown (to stdout, and to
``--out`` when given: ``benchmarks/results/code_size.md``).
"""

from __future__ import annotations

import argparse
import ast
import io
import statistics
import subprocess
import tempfile
import tokenize
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 400


@dataclass(frozen=True)
class FileSize:
    path: str
    lines: int
    product: int
    code: int
    functions: tuple[int, ...]


def _docstring_lines(tree: ast.Module) -> set[int]:
    owners = [tree, *(n for n in ast.walk(tree) if isinstance(n, _DEFS + (ast.ClassDef,)))]
    lines: set[int] = set()
    for node in owners:
        body = node.body
        first = body[0] if body else None
        value = first.value if isinstance(first, ast.Expr) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def _comment_lines(text: str) -> set[int]:
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    comments, other = set(), set()
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            comments.add(tok.start[0])
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            other.update(range(tok.start[0], tok.end[0] + 1))
    return comments - other


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)


def measure(path: Path, base: Path) -> FileSize:
    text = path.read_text()
    tree = ast.parse(text)
    rows = text.splitlines()
    blank = {i for i, row in enumerate(rows, 1) if not row.strip()}
    skip = blank | _docstring_lines(tree) | _comment_lines(text)
    sizes = tuple(n.end_lineno - n.lineno + 1 for n in ast.walk(tree) if isinstance(n, _DEFS))
    return FileSize(
        path=str(path.relative_to(base)),
        lines=len(rows),
        product=len(rows) - len(blank),
        code=sum(1 for i in range(1, len(rows) + 1) if i not in skip),
        functions=sizes,
    )


def _quantile(values: list[int], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def summary(root: Path) -> dict:
    files = [measure(p, root.parent) for p in sorted(root.rglob("*.py"))]
    sizes = sorted(s for f in files for s in f.functions)
    return {
        "files": len(files),
        "lines": sum(f.lines for f in files),
        "product": sum(f.product for f in files),
        "code": sum(f.code for f in files),
        "functions": len(sizes),
        "median": statistics.median(sizes),
        "p90": _quantile(sizes, 0.9),
        "over": [(f.path, f.lines) for f in files if f.lines > LIMIT],
        "largest": sorted(((f.path, f.lines) for f in files), key=lambda r: -r[1])[:5],
    }


def _table(named: dict[str, dict]) -> str:
    keys = (
        ("files", "files"),
        ("lines", "physical lines"),
        ("product", "product lines (non-blank)"),
        ("code", "code lines (no docstrings, comments)"),
        ("functions", "functions"),
        ("median", "function size, median"),
        ("p90", "function size, p90"),
    )
    head = "| | " + " | ".join(named) + " |\n|---|" + "---|" * len(named) + "\n"
    body = "".join(
        f"| {label} | " + " | ".join(str(s[key]) for s in named.values()) + " |\n"
        for key, label in keys
    )
    over = "".join(
        f"- {name}: files over {LIMIT} lines: "
        + (", ".join(f"{p} ({n})" for p, n in s["over"]) or "none")
        + "; largest: " + ", ".join(f"{p} ({n})" for p, n in s["largest"]) + "\n"
        for name, s in named.items()
    )  # fmt: skip
    return head + body + "\n" + over


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="dsp_deploy")
    parser.add_argument("--rev")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    named = {"this checkout": summary(ROOT / args.root)}
    if args.rev:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "archive", args.rev, args.root], cwd=ROOT,
                                     capture_output=True, check=True).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            named[args.rev] = summary(Path(tmp) / args.root)
    report = f"# Code size of `{args.root}/`\n\n`benchmarks/code_size.py`; definitions: "
    report += "its docstring.\n\n"
    report += _table(named)
    print(report)
    if args.out:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
