"""Growth methods: named compositions of sampler, fan-in scaling, symmetry breaking, depth rule.

A method is data, not code: the engine (``growth.engine.grow``) runs every method through the same
jitted width and depth maps. Recipes:

================  ==========  =========  ==========  ===========  ===============================
name              sampler     scaling    symmetry    depth        guarantee
================  ==========  =========  ==========  ===========  ===============================
``exact``         balanced    exact      zero-sum    identity     function kept exactly (*)
``copy``          balanced    exact      none        identity     exact; copies stay identical
``iid``           iid         unbiased   none        duplicate    unbiased per layer, O(1/N) var
``smoothed``      smoothed    exact      none        duplicate    O(h^2) change, symmetry broken
``net2net-noise`` balanced    exact      noise       identity     O(sigma) change
``rc``            smoothed    exact      none        identity     O(h^2) change, new features
``fitted``        fitted      unbiased   none        identity     all N units drawn; unbiased
``fitted-pres.``  fitted      exact      none        identity     exact; new units zero fan-out
``plastic``       extend (+)  exact      zero-sum    identity     function kept (pre-norm) (+)
================  ==========  =========  ==========  ===========  ===============================

(+) ``plastic`` (``growth.plasticity``): spaces under a norm get balanced copies with zero-sum
noise; every other grown space keeps its source units and appends new ones with fresh fan-in and
zero fan-out; new blocks are fresh with a zero output projection; the writers of each normalised
stream are scaled by ``stream_scale`` (0.1) and the norms' eps by its square, so the weights
start nearer a fresh init's scale; ``plastic:unit_balance=1`` also rebalances the units of spaces
the spec declares positively homogeneous (ReLU MLPs, SwiGLU's ``w_up``: fan-in times ``c``,
fan-out over ``c``; off by default, measured neutral on the LM demo). Exact whenever every
reader of a normalised space reads it through the norm (pre-norm residual streams: ``resmlp``,
``decoder``).

Published methods as compositions of the same pieces (sources, exact rules and what differs from
the papers: ``docs/methods.md``; :data:`RECIPE_INFO` has each recipe's source and guarantee):

================  ==========  =========  ==========  ===========  ===============================
name              sampler     scaling    symmetry    depth        guarantee
================  ==========  =========  ==========  ===========  ===============================
``net2net``       net2net     exact      noise 0.01  identity     O(sigma); exact at sigma = 0
``bert2bert-fpi`` net2net     exact      none        stack        width exact w/o norms; approx.
``bert2bert-aki`` net2net     exact      none (*)    stack        approximate; (*) new units'
                                                                  fan-out from the next block
``hypercloning``  balanced    exact      zero-sum    identity     exact (+-noise, SNR 10 dB)
``lemon``         balanced    exact      zero-sum    identity     exact for any width (padded)
``stack``         balanced    exact      none        stack        width exact; depth approximate
``tleg``          balanced    exact      none        linear-fit   width exact; depth approximate
``msg``           balanced    exact      zero-sum    identity     exact at mask 0 (**)
``ligo``          balanced    exact      none        identity     exact at init; learned (***)
================  ==========  =========  ==========  ===========  ===============================

(**) ``msg`` (``ramp_steps > 0``) is grown by ``growth.recipes.msg.grow_msg``, not by ``grow``:
new units of non-normalised spaces and new blocks are drawn fresh and hidden behind a mask that
ramps 0 -> 1 over ``ramp_steps`` training steps; normalised spaces use the engine's copy map (the
sampler/scaling/symmetry columns apply to them).

(***) ``ligo`` (``operator_steps > 0``) is grown by ``growth.recipes.ligo.grow_ligo``: the plan
of the columns is written as dense per-space operators (and the depth mixing matrix), which are then
trained for ``operator_steps`` steps on the task loss of the large model; the function changes.

``smoothed`` perturbs the copies' fan-out slices (their features) with antithetic kernel noise
(centred within each group of copies), so unlike ``exact`` the copies start as different
features while the function moves only at second order in the bandwidth h (the fan-in slices
are copied and scaled exactly). ``rc`` is that with identity-initialised new blocks.

``fitted`` fits a measure to each space's unit types (low-rank Gaussian mixture plus diagonal
residual, ``theory.rc_measure``) and draws every one of the N units from it, reader weights
times ``n/N`` (mean-field sampling; N < n prunes by sampling). ``fitted-preserving`` keeps the
n source units and adds ``N - n`` drawn units whose fan-out (the weights reading them) is 0.

(*) for spaces under a LayerNorm/RMSNorm: exact for multiples of the source width, and for any
larger width when the spec names the norm kind (``norm="layer-gain"`` ...): balanced samplers then
use LEMON's padded map (``theory.measure.padded_map``) and the report gives the eps factor. With a
bare ``norm=True`` flag unequal copy counts change the norm statistics; the report says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from growth.depth import DEPTH_RULES
from growth.errors import GrowthError
from growth.plasticity import NEW_UNITS
from growth.width import SYMMETRY
from theory.measure import SAMPLERS as INDEX_SAMPLERS
from theory.measure import SCALINGS

FANOUT_SOURCES = ("self", "next-block")
#: samplers: index maps (``theory.measure``) and ``fitted`` (draws from ``theory.rc_measure``)
SAMPLERS = INDEX_SAMPLERS + ("fitted",)


@dataclass(frozen=True)
class Method:
    """A growth recipe.

    sigma: size of the symmetry-breaking noise relative to each leaf's standard deviation.
    Zero-sum noise keeps the function in exact arithmetic whatever its size, but in floating
    point it turns rounding-level differences between copies into output error, amplified
    layer after layer: all-MiniLM-L6-v2 grown x2 keeps its hidden states to 1.5e-7 (relative)
    at sigma 1, 1.8e-5 at 2 and O(1) at 4. The ``exact`` recipe uses 1; shallow models can
    afford more (the 4-block demo uses 4, which trained faster; docs/results.md).
    bandwidth: kernel width of the ``smoothed`` sampler, relative to each leaf's spread.
    fanout_source: ``"self"`` (new units copy their source unit's fan-out slice) or
    ``"next-block"`` (bert2BERT's AKI: in leaves stacked on a depth axis, the *new* units of
    block l take their fan-out slice from block l + 1, the last block from itself; changes the
    function).
    ramp_steps: 0 for the engine's recipes; ``>= 1`` selects masked structural growth (MSG,
    ``growth.recipes.msg``): new units and blocks are drawn fresh and masked, and the mask ramps
    linearly from 0 to 1 over this many optimizer steps (``growth.recipes.msg.msg_transform``).
    operator_steps: 0 for the engine's recipes; ``>= 1`` selects LiGO (``growth.recipes.ligo``): the
    plan's maps become dense linear operators trained for this many steps on the task loss.
    Methods with ``ramp_steps`` or ``operator_steps`` need their own entry point (they need
    training data or a training loop); ``growth.grow`` refuses them.
    fit_rank, fit_components: for ``sampler="fitted"``, the rank of the low-rank part and the
    number of mixture components of the measure fitted to each space's unit types
    (``theory.rc_measure``); ``scaling="unbiased"`` draws all N units (mean-field ``n/N`` on
    the readers), ``scaling="exact"`` keeps the source units and gives the drawn ones zero
    fan-out (``growth.width.draw_space``).
    new_units, new_blocks, stream_scale, unit_balance: the plasticity pieces
    (``growth.plasticity``); ``unit_balance`` rescales each unit of a homogeneous space
    (``LeafSpec.homogeneous``) by the exact ``c`` / ``1/c`` symmetry, balancing its fan-in and
    fan-out against the fresh init's scale (``"plastic:unit_balance=1"`` turns it on).
    """

    sampler: str = "balanced"
    scaling: str = "exact"
    symmetry: str = "zero-sum"
    sigma: float = 0.3
    bandwidth: float = 0.0
    depth: str = "identity"
    name: str = "custom"
    fanout_source: str = "self"
    ramp_steps: int = 0
    operator_steps: int = 0
    fit_rank: int = 8
    fit_components: int = 2
    # plasticity (growth.plasticity): fresh new units / new blocks, rescaled normalised streams
    new_units: str = "copy"
    new_blocks: str = "copy"
    stream_scale: float = 1.0
    unit_balance: bool = False

    def __post_init__(self) -> None:
        self._check_plasticity()
        for field, value, allowed in (
            ("sampler", self.sampler, SAMPLERS),
            ("scaling", self.scaling, SCALINGS),
            ("symmetry", self.symmetry, SYMMETRY),
            ("depth", self.depth, DEPTH_RULES),
        ):
            if value not in allowed:
                raise GrowthError(f"method {field}={value!r}: expected one of {allowed}")
        for field in ("sigma", "bandwidth"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise GrowthError(f"method {field}={v!r}: expected a finite number >= 0")
        if self.fanout_source not in FANOUT_SOURCES:
            raise GrowthError(
                f"method fanout_source={self.fanout_source!r}: expected one of {FANOUT_SOURCES}"
            )
        for field in ("ramp_steps", "operator_steps"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise GrowthError(f"method {field}={v!r}: expected an integer >= 0 (0: off)")
        if self.ramp_steps and self.operator_steps:
            raise GrowthError("method: ramp_steps (msg) and operator_steps (ligo) are exclusive")
        self._check_fitted()
        if self.sampler == "smoothed" and self.bandwidth == 0:
            raise GrowthError("method sampler='smoothed' needs bandwidth > 0")
        if self.sampler != "smoothed" and self.bandwidth > 0:
            raise GrowthError(
                f"method bandwidth > 0 only applies to sampler='smoothed', not {self.sampler!r}"
            )

    def _check_fitted(self) -> None:
        for field in ("fit_rank", "fit_components"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise GrowthError(f"method {field}={v!r}: expected an integer >= 1")
        if self.sampler != "fitted":
            return
        if self.symmetry != "none" or self.ramp_steps or self.operator_steps:
            raise GrowthError(
                "method sampler='fitted' draws new units (the measure breaks the symmetry): it "
                "needs symmetry='none', ramp_steps=0 and operator_steps=0"
            )
        if self.fanout_source != "self":
            raise GrowthError("method sampler='fitted' needs fanout_source='self'")

    def _check_plasticity(self) -> None:
        for field in ("new_units", "new_blocks"):
            if getattr(self, field) not in NEW_UNITS:
                raise GrowthError(
                    f"method {field}={getattr(self, field)!r}: expected one of {NEW_UNITS}"
                )
        if self.new_blocks == "fresh" and self.depth != "identity":
            raise GrowthError(
                f"method new_blocks='fresh' needs depth='identity' (new blocks that start as the "
                f"identity), not {self.depth!r}"
            )
        if self.sampler == "fitted" and "fresh" in (self.new_units, self.new_blocks):
            raise GrowthError("method sampler='fitted' draws its own new units: keep new_units "
                              "and new_blocks at 'copy'")  # fmt: skip
        if not (0 < self.stream_scale < float("inf")):
            raise GrowthError(f"method stream_scale={self.stream_scale}: must be > 0 and finite")
        if not isinstance(self.unit_balance, bool):
            raise GrowthError(f"method unit_balance={self.unit_balance!r}: expected True/False")

    def to_dict(self) -> dict:
        return asdict(self)


#: the method every entry point on native models uses when none is named (``grow grow``,
#: ``grow demo``, ``growth.grow``): read it from here, never repeat the name. It keeps the function
#: and trains best on the demos (docs/results.md, "Growth that pays off").
DEFAULT_METHOD = "plastic"
#: the default of external checkpoints (``growth.formats.hf.grow_hf``, ``grow_stream``): their
#: configs cannot take ``plastic``'s stream scale (eps and readout multiplier) and post-LN models
#: (BERT) are not scale invariant that way
DEFAULT_EXTERNAL_METHOD = "exact"

METHODS: dict[str, Method] = {
    "exact": Method(sigma=1.0, name="exact"),
    "copy": Method(symmetry="none", sigma=0.0, name="copy"),
    "iid": Method(
        sampler="iid", scaling="unbiased", symmetry="none", sigma=0.0, depth="duplicate", name="iid"
    ),
    "smoothed": Method(
        sampler="smoothed",
        symmetry="none",
        sigma=0.0,
        bandwidth=0.05,
        depth="duplicate",
        name="smoothed",
    ),
    "net2net-noise": Method(symmetry="noise", sigma=0.01, name="net2net-noise"),
    "rc": Method(sampler="smoothed", symmetry="none", sigma=0.0, bandwidth=0.1, name="rc"),
    "fitted": Method(
        sampler="fitted", scaling="unbiased", symmetry="none", sigma=0.0, name="fitted"
    ),
    "fitted-preserving": Method(
        sampler="fitted", scaling="exact", symmetry="none", sigma=0.0, name="fitted-preserving"
    ),
    # --- published methods -------------------------------------------------------------------
    "net2net": Method(sampler="net2net", symmetry="noise", sigma=0.01, name="net2net"),
    "bert2bert-fpi": Method(
        sampler="net2net", symmetry="none", sigma=0.0, depth="stack", name="bert2bert-fpi"
    ),
    # SNR 10 dB: noise power P_W / 10 -> relative size 10^(-10/20) = 0.316
    "hypercloning": Method(sigma=10 ** (-10 / 20), name="hypercloning"),
    "lemon": Method(sigma=0.1, name="lemon"),
    "bert2bert-aki": Method(
        sampler="net2net",
        symmetry="none",
        sigma=0.0,
        depth="stack",
        fanout_source="next-block",
        name="bert2bert-aki",
    ),
    "stack": Method(symmetry="none", sigma=0.0, depth="stack", name="stack"),
    "tleg": Method(symmetry="none", sigma=0.0, depth="linear-fit", name="tleg"),
    # zero-sum noise as in `exact` on the normalised spaces' copies; ramp: growth.recipes.msg
    "msg": Method(sigma=1.0, ramp_steps=100, name="msg"),
    # the operators start at the noiseless copy map; growth.recipes.ligo adds fan-out noise to them
    "ligo": Method(symmetry="none", sigma=0.0, operator_steps=100, name="ligo"),
    # --- plasticity (growth.plasticity; docs/methods.md "plastic") ----------------------------
    # unit_balance stays off: measured neutral on the LM demo (docs/results.md)
    "plastic": Method(
        sigma=1.0, new_units="fresh", new_blocks="fresh", stream_scale=0.1, name="plastic"
    ),
}

#: name -> summary (one line, for ``grow --help``), source, ``bound``: the kind of checkable
#: guarantee (``growth.guarantee``: rounding, noise, sampling, none) of a width growth of spaces
#: without norms, and ``guarantee``: that bound in words (``e``: relative output error, ``D``:
#: weight matrices, ``u``: unit roundoff of the weights; a growth with an approximate depth
#: rule has none). ``growth.engine.plan_growth`` declares the bound of each actual growth.
RECIPE_INFO: dict[str, dict] = {
    "exact": {
        "summary": "balanced copies, 1/count fan-in, zero-sum noise on copies, identity new blocks",
        "source": "mfgrow",
        "bound": "rounding",
        "guarantee": "function kept: e <= 16 D u (zero-sum noise; measured, not proved)",
    },
    "copy": {
        "summary": "balanced copies, 1/count fan-in, no symmetry breaking (copies stay identical)",
        "source": "mfgrow",
        "bound": "rounding",
        "guarantee": "function kept: e <= 16 D u, proved (copies identical)",
    },
    "iid": {
        "summary": "i.i.d. uniform index map (a draw of the empirical measure), n/N fan-in",
        "source": "mfgrow",
        "bound": "sampling",
        "guarantee": "unbiased, sd ~ N^-1/2 (bound: fresh draws); depth (duplicate): none",
    },
    "smoothed": {
        "summary": "copies whose fan-out slices get centred uniform noise; duplicated blocks",
        "source": "mfgrow",
        "bound": "noise",
        "guarantee": "e <= D 8 h^2 (h = 0.05); depth (duplicate): none",
    },
    "net2net-noise": {
        "summary": "balanced copies plus additive noise of relative size sigma",
        "source": "mfgrow",
        "bound": "noise",
        "guarantee": "e <= D 4 sigma (sigma = 0.01)",
    },
    "rc": {
        "summary": "smoothed copies (bandwidth 0.1) with identity-initialised new blocks",
        "source": "mfgrow",
        "bound": "noise",
        "guarantee": "e <= D 8 h^2 (h = 0.1); identity blocks",
    },
    "fitted": {
        "summary": "every unit drawn from a fitted RC measure (low-rank mixture), n/N fan-in",
        "source": "mfgrow; sampling view of Chen et al. (arXiv 2408.08681)",
        "bound": "sampling",
        "guarantee": "unbiased for the fitted measure, sd ~ N^-1/2 (bound: fresh draws)",
    },
    "fitted-preserving": {
        "summary": "source units kept, new units drawn from the fitted measure with zero fan-out",
        "source": "mfgrow",
        "bound": "rounding",
        "guarantee": "e <= 16 D u: source units kept, drawn units start with zero fan-out",
    },
    "net2net": {
        "summary": "Net2Net: random index map, 1/count fan-in, noise 0.01",
        "source": "Chen, Goodfellow, Shlens, Net2Net, ICLR 2016 (arXiv 1511.05641)",
        "bound": "noise",
        "guarantee": "e <= D 4 sigma (sigma = 0.01); under a norm unequal counts: none",
    },
    "bert2bert-fpi": {
        "summary": "bert2BERT FPI: random map, 1/count fan-in, stacked blocks",
        "source": "Chen et al., bert2BERT, ACL 2022 (arXiv 2110.07143), FPI + stacking",
        "bound": "rounding",
        "guarantee": "width e <= 16 D u without norms (norms: none); depth: none",
    },
    "hypercloning": {
        "summary": "HyperCloning: balanced copies, zero-sum noise at 10 dB SNR",
        "source": "Samragh et al., HyperCloning, 2024 (arXiv 2409.12903)",
        "bound": "rounding",
        "guarantee": "e <= 16 D u (zero-sum noise at 10 dB SNR; measured)",
    },
    "bert2bert-aki": {
        "summary": "bert2BERT AKI: new units take fan-out from the next block, stacked blocks",
        "source": "Chen et al., bert2BERT, ACL 2022 (arXiv 2110.07143), AKI + stacking",
        "bound": "none",
        "guarantee": "none: new units' features come from the next block",
    },
    "lemon": {
        "summary": "LEMON: padded maps for any width, zero-sum noise 0.1, identity blocks",
        "source": "Wang et al., LEMON, ICLR 2024",
        "bound": "rounding",
        "guarantee": "e <= 16 D u for any width (padded norms; measured)",
    },
    "stack": {
        "summary": "G_stack: copies in width, the whole stack repeated in depth",
        "source": "Du et al., G_stack, NeurIPS 2024 (arXiv 2405.15319)",
        "bound": "rounding",
        "guarantee": "width e <= 16 D u; depth (stacking): none",
    },
    "tleg": {
        "summary": "TLEG: copies in width, least-squares linear depth profile",
        "source": "Xia et al., TLEG, AAAI 2024 (arXiv 2312.05614)",
        "bound": "rounding",
        "guarantee": "width e <= 16 D u; depth (linear fit): none",
    },
    "msg": {
        "summary": "Masked Structural Growth: fresh units/blocks behind a 0->1 mask (grow_msg)",
        "source": "Yao et al., Masked Structural Growth, ICLR 2024 (arXiv 2305.02869)",
        "bound": "rounding",
        "guarantee": "e <= 16 D u at mask 0; the mask ramps 0 -> 1 (then: none)",
    },
    "ligo": {
        "summary": "LiGO: the copy plan as dense operators trained on the task (grow_ligo)",
        "source": "Wang et al., LiGO, ICLR 2023 (arXiv 2303.00980)",
        "bound": "none",
        "guarantee": "none: exact at init, the trained operators change the function",
    },
    "plastic": {
        "summary": "exact + fresh new units/blocks (zero fan-out) + stream writers x0.1, eps x0.01",
        "source": "mfgrow",
        "bound": "rounding",
        "guarantee": "e <= 16 D u (pre-norm streams); fresh new units and blocks, stream x0.1",
    },
}


def get_method(method: str | Method, **overrides: object) -> Method:
    """Look up a named recipe (or pass a Method through), optionally overriding fields.

    A name may carry its overrides: ``"exact:sigma=4"``, ``"rc:bandwidth=0.2:depth=stack"``
    (``name[:field=value]...``; values are parsed as the field's type), so a CLI flag or an
    experiment's method list can name a variant. Keyword overrides apply after those.
    """
    if isinstance(method, str):
        name, *fields = method.split(":")
        if name not in METHODS:
            raise GrowthError(f"method {name!r}: expected one of {sorted(METHODS)}")
        method = replace(METHODS[name], **_parse_overrides(method, fields))
    if not isinstance(method, Method):
        raise GrowthError(f"method: expected a name or a Method, got {type(method).__name__}")
    return replace(method, **overrides) if overrides else method


def _parse_overrides(text: str, fields: list[str]) -> dict[str, object]:
    """``["sigma=4", "depth=stack"]`` -> ``{"sigma": 4.0, "depth": "stack"}``, typed by field."""
    types = {k: type(v) for k, v in asdict(Method()).items() if k != "name"}
    out: dict[str, object] = {}
    for item in fields:
        key, eq, value = item.partition("=")
        if not eq or key not in types:
            raise GrowthError(
                f"method {text!r}: override {item!r} should be field=value with field one of "
                f"{sorted(types)}"
            )
        try:
            out[key] = _parse_bool(value) if types[key] is bool else types[key](value)
        except ValueError:
            raise GrowthError(
                f"method {text!r}: {key}={value!r}: expected {types[key].__name__}"
            ) from None
    return out



def _parse_bool(text: str) -> bool:
    """``1``/``true`` -> True, ``0``/``false`` -> False, else ValueError (``bool("0")`` is True)."""
    if text.strip().lower() not in ("0", "1", "true", "false"):
        raise ValueError(text)
    return text.strip().lower() in ("1", "true")
