"""Markdown for ``benchmarks/other_libraries.py``'s results; needs neither tsai nor torch.

    python benchmarks/other_libraries_report.py benchmarks/results/other_libraries.json

rewrites ``other_libraries.md`` beside the JSON. Text below the ``NOTES`` marker line of
an existing .md is kept (hand-written notes survive a rerun).
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

NOTES = "<!-- notes below this line are kept when the results are regenerated -->"
INSTALL = (
    "python3 -m venv /work/tsai-venv && /work/tsai-venv/bin/pip install torch==2.13.0",
    "/work/tsai-venv/bin/pip install --no-deps tsai fastai fastcore fastdownload "
    "fastprogress==1.0.3 fasttransform plum-dispatch beartype tqdm",
    "/work/tsai-venv/bin/pip install matplotlib pandas pillow pyyaml requests scikit-learn "
    "scipy psutil cloudpickle",
    "/work/tsai-venv/bin/pip install -e .",
)


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}"


def _n(x: int | None) -> str:
    return "-" if x is None else str(x)


def _fresh(d: dict | None) -> str:
    if not d:
        return "-"
    return " / ".join(
        _g(v["max_abs_diff"]) + ("" if v["within_tolerance"] else " ✗") for v in d.values()
    )


def other_removed(row: dict) -> int | None:
    """Removed channels that were not planted (dead at random init on the calibration)."""
    if row.get("removed") is None or row.get("planted_kept") is None:
        return None
    return row["removed"] - (row["planted_in_onnx"] - row["planted_kept"])


def reason(pin: dict) -> tuple[str, str]:
    """``("Shape: Shape is not in the channel-flow table", "/gap/flatten/Shape")`` from
    inspect's ``"/gap/flatten/Shape (Shape): Shape is not in the channel-flow table"``."""
    where, _, why = pin["reason"].partition(": ")
    node, _, op = where.rpartition(" (")
    return (f"{op.rstrip(')')}: {why}", node) if op else (pin["reason"], "")


def _pins(row: dict) -> str:
    counts = collections.Counter()
    for p in row.get("pins", ()):
        counts[reason(p)[0]] += p["pinned"]
    return "; ".join(f"{reason} ({n})" for reason, n in counts.items()) or "-"


def _check(d: dict | None) -> str:
    return "-" if not d else f"{_g(d['decision'])} / {_g(d['holdout'])}"


def _unplanted(row: dict) -> str:
    code = row.get("exit_unplanted")
    return f"not written (exit {code})" if code else _fresh(row.get("fresh_max_abs_diff_unplanted"))


def outcome(row: dict) -> str:
    if "error" in row:
        return "error"
    if row["exit"] != 0:
        return f"refused (exit {row['exit']})"
    kept, zeros = row.get("planted_kept"), row.get("planted_in_onnx", row["planted"])
    fresh = (row.get("fresh_max_abs_diff") or {}).values()
    parts = ["exact" if kept == 0 else f"{kept} planted kept"]
    if zeros != row["planted"]:  # zero-init layers (fastai's zero BN) make zero rows too
        parts = [f"{kept} of {zeros} zero rows/scales kept ({zeros - row['planted']} unplanted)"]
    if not all(f["within_tolerance"] for f in fresh):
        parts.append("off on fresh inputs")
    return ", ".join(parts)


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| arch | c_in | length | outcome | params before → after | planted / kept | "
        "other removed (without plants) | check max abs Δ (decision / held-out) | "
        "fresh max abs Δ (96 / 160) | fresh Δ without plants | pinned units by reason | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        params = "-" if not r.get("params") else f"{r['params'][0]:,} → {r['params'][1]:,}"
        planted = f"{r.get('planted', '-')} / {r.get('planted_kept', '-')}"
        other = f"{_n(other_removed(r))} ({_n(r.get('removed_unplanted'))})"
        note = r.get("error") or (r.get("stderr") if r.get("exit") else "") or ""
        if r.get("inspect_exit"):
            note += f" (inspect: exit {r['inspect_exit']})"
        note = "; ".join(x for x in (r.get("note"), note.replace("|", "/")) if x)
        cells = (
            r["arch"], r["c_in"], r["length_axis"], outcome(r), params, planted, other,
            _check(r.get("calib_max_abs_diff")), _fresh(r.get("fresh_max_abs_diff")),
            _unplanted(r), _pins(r), note,
        )  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def summary(rows: list[dict]) -> list[str]:
    def names(pick) -> str:
        return (
            ", ".join(
                f"{r['arch']} (c_in {r['c_in']}, {r['length_axis']})" for r in rows if pick(r)
            )
            or "none"
        )

    reasons, example = collections.defaultdict(set), {}
    for r in rows:
        for p in r.get("pins", ()):
            why, node = reason(p)
            reasons[why].add(r["arch"])
            example.setdefault(why, node)
    failed = [r for r in rows if outcome(r).startswith(("ref", "err"))]
    refusals = {r.get("stderr") or r.get("error") for r in failed}
    lines = [
        f"- **Every planted channel removed:** {names(lambda r: outcome(r).startswith('ex'))}.",
        f"- **Planted channels kept (pinned):** {names(lambda r: 'kept' in outcome(r))}.",
        f"- **Refused or failed:** {names(lambda r: outcome(r).startswith(('ref', 'err')))}.",
        "- **Written model outside atol + rtol·|y| on fresh inputs:** "
        f"{names(lambda r: 'fresh' in outcome(r))}.",
        "",
        "Pin reasons (`inspect`'s `blocked_by`, op type first; one node for example):",
        "",
    ]
    lines += [
        f"- `{why}`: {', '.join(sorted(a))} (e.g. `{example[why]}`)"
        for why, a in sorted(reasons.items())
    ]
    lines += ["", "Refusals and failures:", ""] + [f"- `{m}`" for m in sorted(refusals) if m]
    return lines


def markdown(meta: dict, rows: list[dict], notes: str = "") -> str:
    v = meta["versions"]
    head = [
        "## Other libraries' architectures: tsai's conv TSC models with planted dead channels",
        "",
        f"`{meta['command']}` ({meta['date']}, {meta['seconds']} s), dsp-deploy at "
        f"{v['dsp_deploy_commit']}: tsai {v['tsai']} (fastai {v['fastai']}), torch {v['torch']}, "
        f"onnx {v['onnx']}, onnx-ir {v['onnx-ir']}, onnxruntime {v['onnxruntime']}, "
        f"numpy {v['numpy']}, Python {v['python']}; exporter {v['exporter']}; torchvision "
        f"{v['torchvision']}. The venv (tsai is no dependency of the project):",
        "",
        "```",
        *INSTALL,
        "```",
        "",
        "Each model: random init (seed 0, BatchNorm parameters and statistics drawn as a "
        "trained net's differ), ~25 % of the channels of some blocks planted dead (exactly 0 "
        "after their activation on every input; see the script's docstring), exported, "
        "then `dsp-deploy compress --json` with the default options and "
        "`dsp-deploy inspect --calib --json`. *Without plants*: the same model compressed "
        "before planting (channels dead at random init on the 64 calibration series). "
        "*check*: compress's own max abs Δ on the calibration set (its decision part, gated "
        "on atol + rtol·|y|, and the held-out 20 %, gated on argmax agreement); *fresh*: the "
        "written model vs the original on 32 new N(0, 1) series (✗: some output outside compress's "
        "default 1e-5 + 1e-4·|y|). *outcome* `exact`: every planted channel removed (none "
        "of the planted zero rows or scales is left in the written model); `off on fresh "
        "inputs`: a ✗.",
        "",
    ]
    return "\n".join(
        [*head, *table(rows), "", "### Summary", "", *summary(rows), "", NOTES, notes.strip(), ""]
    )


def kept_notes(path: Path) -> str:
    if not path.exists():
        return ""
    text = path.read_text()
    return text.split(NOTES, 1)[1] if NOTES in text else ""


def write(json_path: Path) -> Path:
    data = json.loads(json_path.read_text())
    md = json_path.with_suffix(".md")
    md.write_text(markdown(data["meta"], data["rows"], kept_notes(md)))
    return md


if __name__ == "__main__":
    print(write(Path(sys.argv[1])))
