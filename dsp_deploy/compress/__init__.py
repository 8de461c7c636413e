"""The graph pass: calibration statistics → channel groups → plan → prune → verify.

Needs no PyTorch; works on conv ONNX models from any exporter. See each module's
docstring for its contract and math; ``pipeline.compress`` composes them.
"""

from dsp_deploy.compress.groups import ChannelAnalysis, ChannelGroup, find_groups
from dsp_deploy.compress.inspection import Inspection, inspect_model
from dsp_deploy.compress.pipeline import CompressResult, compress
from dsp_deploy.compress.plan import PruningPlan, make_plan
from dsp_deploy.compress.prune import prune
from dsp_deploy.compress.verify import ParityReport, compare, verify

__all__ = [
    "ChannelAnalysis",
    "ChannelGroup",
    "CompressResult",
    "Inspection",
    "ParityReport",
    "PruningPlan",
    "compare",
    "compress",
    "find_groups",
    "inspect_model",
    "make_plan",
    "prune",
    "verify",
]
