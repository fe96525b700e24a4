"""mfgrow: mean-field zero-shot weight transfer (model growth) in JAX."""

from growth.depth import DEPTH_RULES, DepthMap, depth_map
from growth.engine import GrowthPlan, GrowthReport, apply_plan, grow, plan_growth
from growth.errors import CheckpointError, GrowthError, SpecError
from growth.methods import METHODS, Method, get_method
from growth.spec import Axis, LeafSpec, NeuronSpec

__all__ = [
    "DEPTH_RULES", "METHODS", "Axis", "CheckpointError", "DepthMap", "GrowthError", "GrowthPlan",
    "GrowthReport", "LeafSpec", "Method", "NeuronSpec", "SpecError", "apply_plan", "depth_map",
    "get_method", "grow", "plan_growth",
]
