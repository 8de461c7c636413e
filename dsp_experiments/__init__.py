"""The research harness: the paper's DSP experiment over UCR datasets, resumable, reported.

A package of its own, beside the deploy core (``dsp_deploy``) in the same distribution:
it uses the core (compress, cost, bench's paired rounds) and the training side, and the
core never imports it, so what installs on a Pi carries no statistics, Ray or plots.
``dsp-deploy sweep`` and ``sweep-report`` import it inside the command.

One task = (dataset, arch, variant, seed) → one row of ``DIR/results.csv``
(:mod:`~dsp_experiments.tasks`, the variant table; its library calls:
:mod:`~dsp_experiments.training`; what a row measures: :mod:`~dsp_experiments.measure`);
budgets (:mod:`~dsp_experiments.protocols`); the folder and its commit protocol
(:mod:`~dsp_experiments.results`); planning and the Ray executor
(:mod:`~dsp_experiments.runner`, datasets by shape: :mod:`~dsp_experiments.datasets`), the
local executor (:mod:`~dsp_experiments.local`); what a plan costs
(:mod:`~dsp_experiments.costs`); merging folders (:mod:`~dsp_experiments.merge`);
statistics, ensembles, tables and plots (:mod:`~dsp_experiments.stats`,
:mod:`~dsp_experiments.report`, :mod:`~dsp_experiments.report_md`,
:mod:`~dsp_experiments.tables`, :mod:`~dsp_experiments.published`,
:mod:`~dsp_experiments.plots`). Importing this package
imports neither torch nor ray: the task imports torch on the worker, the runner ray.
"""

from dsp_experiments.local import execute_locally
from dsp_experiments.merge import merge_folders
from dsp_experiments.protocols import CPU_SMALL, PAPER, Protocol, get_protocol
from dsp_experiments.report import SweepReport, build_report, write_report
from dsp_experiments.results import COLUMNS, ResultsStore
from dsp_experiments.runner import (
    Plan,
    SweepRequest,
    SweepSummary,
    execute,
    load_datasets,
    plan_sweep,
)
from dsp_experiments.tasks import VARIANTS, Task, TaskOutput, run_task

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
    "execute_locally",
    "get_protocol",
    "load_datasets",
    "merge_folders",
    "plan_sweep",
    "run_task",
    "write_report",
]
