"""Width-aware learning rates derived from a neuron-space spec (muP for Adam).

Tensor Programs V (Yang et al., arXiv 2203.03466, Table 3) for Adam in the standard storage
``h = W phi``: input weights and biases keep the base learning rate, while every matrix that sums
over a grown neuron space (hidden and readout weights) takes ``eta * n_base / n`` -- its updates
add up over n units. In spec terms: a leaf's multiplier is the product over its ``in`` axes of
``base_size / size``; leaves with no ``in`` axis get 1.

This is also what makes a balanced-grown network train like its source: a copy's fan-in
entries carry the scale ``1/c`` while their Adam updates keep their size, so their learning rate
must shrink by ``1/c`` too.
"""

from __future__ import annotations

from collections.abc import Mapping

from growth.spec import ResolvedSpec


def adam_lr_multipliers(resolved: ResolvedSpec, base_sizes: Mapping[str, int]) -> tuple[float, ...]:
    """Per-leaf muP-Adam learning-rate multipliers, in the resolved spec's leaf order.

    resolved: spec matched to the params being trained (sizes = current widths).
    base_sizes: space -> base width (e.g. the small source model's); spaces absent from it are
    taken at their current size (multiplier 1).
    """
    mults = []
    for spec in resolved.leaves:
        m = 1.0
        for a in spec.axes:
            if a is not None and a.role == "in":
                m *= base_sizes.get(a.space, resolved.sizes[a.space]) / resolved.sizes[a.space]
        mults.append(m)
    return tuple(mults)
