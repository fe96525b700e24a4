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
================  ==========  =========  ==========  ===========  ===============================

``smoothed`` perturbs the copies' fan-out slices (their features) with antithetic kernel noise
(centred within each group of copies), so unlike ``exact`` the copies start as different
features while the function moves only at second order in the bandwidth h (the fan-in slices
are copied and scaled exactly). ``rc`` is that with identity-initialised new blocks.

(*) for spaces under a LayerNorm/RMSNorm: exact for multiples of the source width, and for any
larger width when the spec names the norm kind (``norm="layer-gain"`` ...): balanced samplers then
use LEMON's padded map (``theory.measure.padded_map``) and the report gives the eps factor. With a
bare ``norm=True`` flag unequal copy counts change the norm statistics; the report says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from growth.depth import DEPTH_RULES
from growth.errors import GrowthError
from growth.width import SYMMETRY
from theory.measure import SAMPLERS, SCALINGS


@dataclass(frozen=True)
class Method:
    """A growth recipe.

    sigma: size of the symmetry-breaking noise relative to each leaf's standard deviation. The
    ``exact`` recipe uses 4: zero-sum noise keeps the function whatever its size, and on the demo
    task larger noise (0.3 -> 1 -> 4) let the grown model train faster (docs/results.md).
    bandwidth: kernel width of the ``smoothed`` sampler, relative to each leaf's spread.
    """

    sampler: str = "balanced"
    scaling: str = "exact"
    symmetry: str = "zero-sum"
    sigma: float = 0.3
    bandwidth: float = 0.0
    depth: str = "identity"
    name: str = "custom"

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("sampler", self.sampler, SAMPLERS),
            ("scaling", self.scaling, SCALINGS),
            ("symmetry", self.symmetry, SYMMETRY),
            ("depth", self.depth, DEPTH_RULES),
        ):
            if value not in allowed:
                raise GrowthError(f"method {field}={value!r}: expected one of {allowed}")
        if not (self.sigma >= 0 and self.bandwidth >= 0):
            raise GrowthError(
                f"method sigma={self.sigma}, bandwidth={self.bandwidth}: must be >= 0"
            )
        if self.sampler == "smoothed" and self.bandwidth == 0:
            raise GrowthError("method sampler='smoothed' needs bandwidth > 0")
        if self.sampler != "smoothed" and self.bandwidth > 0:
            raise GrowthError(
                f"method bandwidth > 0 only applies to sampler='smoothed', not {self.sampler!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


METHODS: dict[str, Method] = {
    "exact": Method(sigma=4.0, name="exact"),
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
}


def get_method(method: str | Method, **overrides: object) -> Method:
    """Look up a named recipe (or pass a Method through), optionally overriding fields."""
    if isinstance(method, str):
        if method not in METHODS:
            raise GrowthError(f"method {method!r}: expected one of {sorted(METHODS)}")
        method = METHODS[method]
    if not isinstance(method, Method):
        raise GrowthError(f"method: expected a name or a Method, got {type(method).__name__}")
    return replace(method, **overrides) if overrides else method
