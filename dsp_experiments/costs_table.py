"""The dry run's table (``dsp-deploy sweep --dry-run``): ``costs.cost_summary`` for a
person, one row per (arch, variant), then the totals and the model they come from."""

from __future__ import annotations

from typing import Any

__all__ = ["hours", "render_costs"]


def render_costs(info: dict[str, Any]) -> None:
    from rich.table import Table

    from dsp_deploy.render import console

    c = console()
    per_arch = ", ".join(f"{a} {n}" for a, n in info["datasets_per_arch"].items())
    c.print(
        f"plan ({info['protocol']}, {info['epochs']}): {info['datasets']} datasets "
        f"({per_arch} admitted) × {len(info['seeds'])} seeds × {len(info['variants'])} "
        f"variants = {info['tasks']} tasks, {info['pending']} pending"
    )
    table = Table("arch", "variant", "tasks", "pending", "core-h (CPU)", "GPU-h", "CPU basis",
                  "GPU basis")  # fmt: skip
    for line in info["lines"]:
        table.add_row(
            line["arch"], line["variant"], str(line["tasks"]), str(line["pending"]),
            hours(line["core_hours"]), hours(line["gpu_hours"]), line["cpu_basis"],
            line["gpu_basis"],
        )  # fmt: skip
    c.print(table)
    c.print(
        f"total: {hours(info['core_hours'])} core-hours with every task on one CPU core, "
        f"or {hours(info['gpu_hours'])} GPU-hours training on GPU shares; "
        f"{info['model']}, fitted on {info['measured_rows']} rows of {info['measured']}"
    )
    for s in info["skipped"]:
        c.print(f"skipped {s['dataset']} ({s['arch']}): {s['why']}")


def hours(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"
