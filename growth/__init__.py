"""mfgrow: mean-field zero-shot weight transfer (model growth) in JAX.

Layers, each importing only from those below it (docs/architecture.md):

- ``growth`` itself -- the engine: ``spec``, ``width``, ``depth``, ``methods``, ``engine``,
  ``errors`` (on top of ``theory``, the mathematics);
- ``growth.models`` -- the reference model families;
- ``growth.recipes`` (msg, ligo, optimizer state), ``growth.formats`` (orbax checkpoints,
  streaming, Hugging Face) and ``growth.tasks`` (datasets, LM corpus, training loop);
- ``growth.apps`` -- the ``grow`` command line, its commands, demos, analysis and tracking.

This module is the public face: it re-exports the engine and the entry points users need most.
"""

from growth.depth import DEPTH_RULES, DepthMap, depth_map, slice_map
from growth.engine import GrowthPlan, GrowthReport, apply_plan, grow, plan_growth
from growth.errors import CheckpointError, GrowthError, SpecError
from growth.formats.checkpoint import load_checkpoint, save_checkpoint
from growth.formats.stream import grow_stream
from growth.methods import DEFAULT_METHOD, METHODS, Method, get_method
from growth.recipes.msg import MaskInfo, grow_msg, masked_params, msg_transform
from growth.spec import Axis, LeafSpec, NeuronSpec

__all__ = [
    "DEFAULT_METHOD", "DEPTH_RULES", "METHODS", "Axis", "CheckpointError", "DepthMap",
    "GrowthError", "GrowthPlan", "GrowthReport", "LeafSpec", "MaskInfo", "Method", "NeuronSpec",
    "SpecError", "apply_plan", "depth_map", "get_method", "grow", "grow_msg", "grow_stream",
    "load_checkpoint", "masked_params", "msg_transform", "plan_growth", "save_checkpoint",
    "slice_map",
]
