"""``dsp-deploy sweep``: the DSP experiment over UCR datasets on Ray, resumable, reported.

One task = (dataset, arch, variant, seed) → one row of ``DIR/results.csv``
(:mod:`~dsp_deploy.sweep.tasks`); budgets (:mod:`~dsp_deploy.sweep.protocols`); the folder
and its commit protocol (:mod:`~dsp_deploy.sweep.results`); planning and Ray execution
(:mod:`~dsp_deploy.sweep.runner`); statistics, tables and plots
(:mod:`~dsp_deploy.sweep.stats`, :mod:`~dsp_deploy.sweep.report`). Importing this package
imports neither torch nor ray: the task imports torch on the worker, the runner ray.
"""

from dsp_deploy.sweep.protocols import CPU_SMALL, PAPER, Protocol, get_protocol
from dsp_deploy.sweep.report import SweepReport, build_report, write_report
from dsp_deploy.sweep.results import COLUMNS, ResultsStore
from dsp_deploy.sweep.runner import (
    Plan,
    SweepRequest,
    SweepSummary,
    execute,
    load_datasets,
    plan_sweep,
)
from dsp_deploy.sweep.tasks import VARIANTS, Task, TaskOutput, run_task

__all__ = [
    "COLUMNS",
    "CPU_SMALL",
    "PAPER",
    "VARIANTS",
    "Plan",
    "Protocol",
    "ResultsStore",
    "SweepReport",
    "SweepRequest",
    "SweepSummary",
    "Task",
    "TaskOutput",
    "build_report",
    "execute",
    "get_protocol",
    "load_datasets",
    "plan_sweep",
    "run_task",
    "write_report",
]
