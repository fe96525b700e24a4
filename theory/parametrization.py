"""Width-aware parametrizations (SP, muP, mean-field) as data derived from a neuron-space spec.

Every leaf of a resolved neuron-space spec is classified by its axis roles over width (neuron)
spaces -- depth axes and fixed axes are ignored. The functions read the spec structurally
(:class:`Leaf`, :class:`Spec`: anything with those attributes, e.g. ``growth.spec.Spec``),
so ``theory`` does not import the engine:

- ``input``   -- a matrix with no ``in`` axis over a neuron space (fan-in fixed: ``W^1``, an
  embedding);
- ``hidden``  -- a matrix with both ``in`` and ``out`` neuron axes (``W^l``, ``2 <= l <= L``);
- ``readout`` -- a matrix with an ``in`` neuron axis but no ``out`` one (``W^out``);
- ``vector``  -- at most one axis (biases, norm gains): it behaves like an input weight.

With base widths ``n_0`` (e.g. the small source model's) and current widths ``n``, a leaf's
*width ratios* are the products over its neuron axes

    r_in  = prod_{in axes}  n / n_0,        r_out = prod_{out axes} n / n_0

(``r = 1`` for an axis whose space is at its base width). Each parametrization gives, per leaf,
three functions of ``(r_in, r_out)`` relative to the base model (:class:`LeafRule`):

- ``init_std``   -- factor on the base model's initial standard deviation,
- ``multiplier`` -- constant factor in the forward pass (``h = multiplier * W phi``),
- ``lr_sgd`` / ``lr_adam`` -- factor on the base learning rate.

The tables (``sp`` and ``mup`` in SP storage, ``h = W phi``; Tensor Programs V, Yang et al.,
arXiv 2203.03466, Table 3, read relative to a base width):

============  =====================  ============  ==============  ===============
leaf          init std  (SP / muP)   multiplier    SGD LR (muP)    Adam LR (muP)
============  =====================  ============  ==============  ===============
input/vector  1 / 1                  1             r_out           1
hidden        r_in^-1/2 / r_in^-1/2  1             1               1 / r_in
readout       r_in^-1/2 / r_in^-1    1             1 / r_in        1 / r_in
============  =====================  ============  ==============  ===============

SP uses LR factor 1 everywhere (one global learning rate). ``mf`` (mean-field, theory notes (a))
is stored in *type units*: ``h = (1/r_in) w phi`` with O(1) types ``w`` on every leaf with an
``in`` axis; its learning rates in type units are SGD ``r_in * r_out`` and Adam ``1``. In SP
storage (``W = w / r_in``) this is SGD ``r_out / r_in`` and Adam ``1 / r_in``: the SGD rule is
muP's with the hidden entry generalised to unequal ``r_in != r_out`` (they agree when all spaces
grow together), and the Adam rule is muP's.

Why these rules make a balanced-grown network train exactly like its source (theory notes
(d) P3, ``growth.recipes.optstate``): balanced copy growth by factor ``c`` per space maps weights by
``V = prod_in 1/c = 1/r_in`` and gradients by ``G = prod_out 1/c = 1/r_out``. Plain SGD then
tracks iff ``lr' = lr * V / G = lr * r_out / r_in`` (:func:`sgd_lr_multipliers`, ``mf``); Adam,
whose update is invariant to the gradient scale, tracks iff ``lr' = lr * V = lr / r_in``
(:func:`adam_lr_multipliers`) **and** ``eps' = eps * G = eps / r_out``
(:func:`adam_eps_multipliers`: eps divided by the copy count on every tensor but the readout),
with weight decay decoupled and applied after the LR multiplier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal, Protocol


class Axis(Protocol):
    role: str  # "in" | "out" | "depth"
    space: str


class Leaf(Protocol):
    axes: tuple[Axis | None, ...]  # None: a fixed axis


class Spec(Protocol):
    paths: tuple[str, ...]
    leaves: tuple[Leaf, ...]
    sizes: Mapping[str, int]


__all__ = [
    "KINDS",
    "PARAMETRIZATIONS",
    "LeafRule",
    "adam_eps_multipliers",
    "adam_lr_multipliers",
    "classify_leaf",
    "leaf_rules",
    "lr_multipliers",
    "sgd_lr_multipliers",
    "width_ratios",
]

Kind = Literal["input", "hidden", "readout", "vector"]
KINDS: tuple[str, ...] = ("input", "hidden", "readout", "vector")
PARAMETRIZATIONS: tuple[str, ...] = ("sp", "mup", "mf")


def classify_leaf(spec: Leaf) -> Kind:
    """``input`` / ``hidden`` / ``readout`` / ``vector`` from the leaf's width-axis roles.

    Depth axes do not count towards the rank: a stacked bias ``(depth:blocks, out:d)`` is a
    vector, a stacked kernel ``(depth:blocks, in:d, out:h)`` is hidden.
    """
    axes = [a for a in spec.axes if a is None or a.role != "depth"]
    if len(axes) <= 1:
        return "vector"
    has_in = any(a is not None and a.role == "in" for a in axes)
    has_out = any(a is not None and a.role == "out" for a in axes)
    if has_in and has_out:
        return "hidden"
    return "readout" if has_in else "input"


def width_ratios(
    spec: Leaf, sizes: Mapping[str, int], base_sizes: Mapping[str, int]
) -> tuple[float, float]:
    """``(r_in, r_out)``: products of ``size / base_size`` over the leaf's ``in`` / ``out`` axes.

    Spaces absent from ``base_sizes`` are taken at their current size (ratio 1).
    """
    r_in = r_out = 1.0
    for a in spec.axes:
        if a is None or a.role == "depth":
            continue
        r = sizes[a.space] / base_sizes.get(a.space, sizes[a.space])
        if a.role == "in":
            r_in *= r
        else:
            r_out *= r
    return r_in, r_out


@dataclass(frozen=True)
class LeafRule:
    """One leaf's width rule, relative to the base model (see the module table).

    kind: :data:`KINDS`. r_in, r_out: width ratios. init_std, multiplier, lr_sgd, lr_adam:
    factors on the base model's init standard deviation, forward multiplier and learning rates.
    eps_adam: factor on Adam's epsilon (``1 / r_out``, storage-independent for SP storage).
    """

    path: str
    kind: Kind
    r_in: float
    r_out: float
    init_std: float
    multiplier: float
    lr_sgd: float
    lr_adam: float
    eps_adam: float

    def to_dict(self) -> dict:
        return asdict(self)


def _rule(param: str, kind: Kind, r_in: float, r_out: float) -> tuple[float, float, float, float]:
    """(init_std, multiplier, lr_sgd, lr_adam) of one leaf."""
    if param == "sp":
        return (1.0 if kind in ("input", "vector") else r_in**-0.5), 1.0, 1.0, 1.0
    if param == "mup":  # Tensor Programs V, Table 3
        if kind in ("input", "vector"):
            return 1.0, 1.0, r_out, 1.0
        if kind == "hidden":
            return r_in**-0.5, 1.0, 1.0, 1.0 / r_in
        return 1.0 / r_in, 1.0, 1.0 / r_in, 1.0 / r_in
    if param == "mf":  # type units: h = (1/r_in) w phi, types O(1)
        return 1.0, 1.0 / r_in, r_in * r_out, 1.0
    raise ValueError(f"parametrization {param!r}: expected one of {PARAMETRIZATIONS}")


def leaf_rules(
    resolved: Spec, base_sizes: Mapping[str, int], parametrization: str = "mup"
) -> tuple[LeafRule, ...]:
    """Per-leaf rules of ``parametrization`` (``"sp"``, ``"mup"``, ``"mf"``) in leaf order."""
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization {parametrization!r}: expected one of {PARAMETRIZATIONS}")
    rules = []
    for path, spec in zip(resolved.paths, resolved.leaves, strict=True):
        kind = classify_leaf(spec)
        r_in, r_out = width_ratios(spec, resolved.sizes, base_sizes)
        init, mult, lr_sgd, lr_adam = _rule(parametrization, kind, r_in, r_out)
        rules.append(LeafRule(path, kind, r_in, r_out, init, mult, lr_sgd, lr_adam, 1.0 / r_out))
    return tuple(rules)


def lr_multipliers(
    resolved: Spec,
    base_sizes: Mapping[str, int],
    parametrization: str = "mup",
    optimizer: str = "adam",
) -> tuple[float, ...]:
    """Per-leaf learning-rate factors of ``parametrization`` for ``optimizer`` (``sgd``/``adam``).

    For ``mf`` the factors are returned in SP storage (``h = W phi``, what the reference models
    hold): SGD ``r_out / r_in``, Adam ``1 / r_in`` -- the type-unit rates of :func:`leaf_rules`
    times ``multiplier^2`` (SGD) or ``multiplier`` (Adam).
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer {optimizer!r}: expected 'sgd' or 'adam'")
    out = []
    for r in leaf_rules(resolved, base_sizes, parametrization):
        if optimizer == "sgd":
            out.append(r.lr_sgd * (r.multiplier**2 if parametrization == "mf" else 1.0))
        else:
            out.append(r.lr_adam * (r.multiplier if parametrization == "mf" else 1.0))
    return tuple(out)


def sgd_lr_multipliers(resolved: Spec, base_sizes: Mapping[str, int]) -> tuple[float, ...]:
    """Mean-field SGD factors in SP storage, ``r_out / r_in`` per leaf: the rule under which a
    balanced-grown network's SGD trajectory equals its source's (muP-SGD when ``r_in = r_out``)."""
    return lr_multipliers(resolved, base_sizes, "mf", "sgd")


def adam_lr_multipliers(resolved: Spec, base_sizes: Mapping[str, int]) -> tuple[float, ...]:
    """Per-leaf muP-Adam learning-rate multipliers, in the resolved spec's leaf order.

    resolved: spec matched to the params being trained (sizes = current widths).
    base_sizes: space -> base width (e.g. the small source model's); spaces absent from it are
    taken at their current size (multiplier 1).
    The factor is ``1 / r_in = prod_{in axes} base_size / size`` (1 for leaves with no ``in``
    axis): muP's Adam rule (Table 3 of arXiv 2203.03466) and the tracking rule ``lr' = lr V``.
    """
    mults = []
    for spec in resolved.leaves:
        m = 1.0
        for a in spec.axes:
            if a is not None and a.role == "in":
                m *= base_sizes.get(a.space, resolved.sizes[a.space]) / resolved.sizes[a.space]
        mults.append(m)
    return tuple(mults)


def adam_eps_multipliers(
    resolved: Spec, base_sizes: Mapping[str, int]
) -> tuple[float, ...]:
    """Per-leaf Adam epsilon factors ``1 / r_out = prod_{out axes} base_size / size``.

    A balanced-grown leaf's gradients are its source's times ``G = 1 / r_out`` (the fan-out copy
    scales); Adam's update ``m / (sqrt(v) + eps)`` is then unchanged iff eps scales the same way:
    eps is divided by the copy count on every tensor with an ``out`` neuron axis (all but the
    readout). For unequal copy counts use ``growth.recipes.optstate.adam_scales`` (per entry).
    """
    return tuple(r.eps_adam for r in leaf_rules(resolved, base_sizes, "sp"))
