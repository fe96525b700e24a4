"""mfgrow: mean-field zero-shot weight transfer (model growth) in JAX.

The engine (``grow``, ``plan_growth``, ``apply_plan``) and the recipes are here; methods that
need training data have their own entry points: ``grow_msg`` (masked structural growth, trained
with ``msg_transform``) and ``growth.ligo.grow_ligo`` (learned operators; it imports the model
families). Checkpoints: ``growth.commands``, ``growth.hf``; larger than memory: ``grow_stream``.
"""

from growth.depth import DEPTH_RULES, DepthMap, depth_map
from growth.engine import GrowthPlan, GrowthReport, apply_plan, grow, plan_growth
from growth.errors import CheckpointError, GrowthError, SpecError
from growth.masked import MaskInfo, grow_msg, masked_params, msg_transform
from growth.methods import METHODS, Method, get_method
from growth.spec import Axis, LeafSpec, NeuronSpec
from growth.stream import grow_stream

__all__ = [
    "DEPTH_RULES", "METHODS", "Axis", "CheckpointError", "DepthMap", "GrowthError", "GrowthPlan",
    "GrowthReport", "LeafSpec", "MaskInfo", "Method", "NeuronSpec", "SpecError", "apply_plan",
    "depth_map", "get_method", "grow", "grow_msg", "grow_stream", "masked_params",
    "msg_transform", "plan_growth",
]
