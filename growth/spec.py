"""Neuron-space specs: which tensor axes index interchangeable units, and in what role.

A *neuron space* is a set of interchangeable units (the hidden units of an MLP layer, the
residual stream, the stacked blocks of a residual network). Every axis of every parameter leaf
either indexes a space or is fixed (input features, classes). For a space of size n grown to N
through an index map ``g: [N] -> [n]`` the roles are

- ``out`` (fan-out: the axis produces the unit's value -- rows of the incoming matrix, biases,
  norm gains): ``new[i] = old[g(i)]``;
- ``in`` (fan-in: the axis is summed over by the next computation -- columns of the outgoing
  matrix): ``new[..., i] = s_i * old[..., g(i)]``;
- ``depth`` (the leading axis of a stack of residual blocks): ``new[m] = sum_l M[m, l] old[l]``
  for a depth mixing matrix ``M: [L', L]``.

Axes are written as short strings: ``"out:h1"``, ``"in:h1"``, ``"depth:blocks"`` or ``"-"`` for
a fixed axis. A spec maps leaf-path patterns (``fnmatch`` globs over ``"a/b/0/kernel"``) to leaf
specs; every leaf must be matched by exactly one pattern and every pattern must match a leaf.

Two space-level facts complete a spec:

- *normalised* spaces: a leaf flagged ``norm`` is the gain or bias of a LayerNorm/RMSNorm taken
  over its ``out`` space. With a known kind (``"layer-gain"``, ``"layer-bias"``, ``"rms-gain"``)
  the engine can grow such a space exactly to any width (LEMON's padding, see
  ``theory.measure.padded_map``); a bare ``norm=True`` only marks the space (statistics kept for
  equal copy counts only).
- *paired* spaces (``NeuronSpec(..., paired=["hd"])``): the units are the pairs of entries
  ``(i, i + n/2)`` (rotary embeddings in the rotate-half layout rotate each such pair), so a map
  is drawn on the n/2 pairs and applied to both halves.
- *homogeneous* spaces: leaves flagged ``homogeneous="SPACE"`` together hold the part of each
  unit's fan-in in which its output is positively homogeneous of degree 1 (the whole fan-in of a
  ReLU unit, ``relu(c z) = c relu(z)``; the ``w_up`` column of a SwiGLU unit, whose output
  ``silu(x w_gate) (x w_up)`` is linear in it). Scaling those ``out`` slices by ``c > 0`` and
  every ``in`` slice of the space (its readers) by ``1 / c`` keeps the function exactly
  (``growth.plasticity`` uses it to rebalance units). Declare it only where it is exact: never
  for GELU/tanh units, never on a normalised or paired space.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jax

from growth.errors import GrowthError, SpecError

Role = Literal["in", "out", "depth"]
ROLES: tuple[str, ...] = ("in", "out", "depth")
#: ``LeafSpec.norm`` values naming the normalisation kind and the part of it a leaf holds.
NORM_PARTS: tuple[str, ...] = ("layer-gain", "layer-bias", "rms-gain")


@dataclass(frozen=True)
class Axis:
    """Role of one tensor axis with respect to a neuron space."""

    role: Role
    space: str

    def __str__(self) -> str:
        return f"{self.role}:{self.space}"


def parse_axis(text: str | Axis | None) -> Axis | None:
    """Parse ``"out:h1"`` / ``"in:h1"`` / ``"depth:blocks"`` / ``"-"`` (or None) into an Axis."""
    if text is None or isinstance(text, Axis):
        return text
    if text == "-":
        return None
    role, sep, space = text.partition(":")
    if not sep or role not in ROLES or not space:
        raise SpecError(
            f"axis {text!r}: expected 'out:SPACE', 'in:SPACE', 'depth:STACK' or '-' (fixed)"
        )
    return Axis(role, space)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LeafSpec:
    """Axis roles of one parameter leaf.

    ``residual_out`` marks a leaf that ends a residual branch (the output projection's kernel and
    bias): depth rules scale it per new block (zero for ``identity``, ``1/k`` for
    ``duplicate``). ``norm`` marks the gain or bias of a normalisation (LayerNorm, RMSNorm)
    taken over the leaf's ``out`` space: such a space keeps its statistics only under maps with
    equal counts, which the growth report checks. ``norm`` may name the kind and part
    (:data:`NORM_PARTS`: ``"layer-gain"``, ``"layer-bias"``, ``"rms-gain"``); when every norm
    leaf of a space does, the engine grows that space exactly to non-multiple widths by padding.
    ``homogeneous`` names the space of one of the leaf's ``out`` axes in whose units' output the
    leaf's slices are positively homogeneous of degree 1, jointly with the other leaves that
    name it (module docstring: *homogeneous* spaces).
    """

    axes: tuple[Axis | None, ...]
    residual_out: bool = False
    norm: bool | str = False
    homogeneous: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.norm, bool) and self.norm not in NORM_PARTS:
            raise SpecError(f"leaf norm={self.norm!r}: expected True/False or one of {NORM_PARTS}")
        if self.homogeneous is not None and (
            self.norm or Axis("out", self.homogeneous) not in self.axes  # type: ignore[arg-type]
        ):
            raise SpecError(
                f"leaf homogeneous={self.homogeneous!r}: expected the space of one of the leaf's "
                f"'out' axes {self}, on a leaf that is not a norm leaf"
            )

    @staticmethod
    def of(
        axes: Sequence[str | Axis | None],
        *,
        residual_out: bool = False,
        norm: bool | str = False,
        homogeneous: str | None = None,
    ) -> LeafSpec:
        return LeafSpec(tuple(parse_axis(a) for a in axes), residual_out, norm, homogeneous)

    @property
    def norm_kind(self) -> str | None:
        """``"layer"`` / ``"rms"`` for a norm leaf with a named kind, else None."""
        return self.norm.split("-")[0] if isinstance(self.norm, str) else None

    @property
    def norm_part(self) -> str | None:
        """``"gain"`` / ``"bias"`` for a norm leaf with a named kind, else None."""
        return self.norm.split("-")[1] if isinstance(self.norm, str) else None

    def __str__(self) -> str:
        text = ", ".join("-" if a is None else str(a) for a in self.axes)
        norm = self.norm if isinstance(self.norm, str) else "norm"
        flags = [f for f, on in (("residual-out", self.residual_out), (norm, self.norm)) if on]
        flags += [f"homogeneous:{self.homogeneous}"] if self.homogeneous else []
        return f"({text})" + "".join(f" {f}" for f in flags)


def norm_kinds(leaves: Sequence[LeafSpec]) -> dict[str, frozenset[str | None]]:
    """For each normalised space, the set of norm kinds of its norm leaves.

    A set ``{"layer"}`` or ``{"rms"}`` means the space can be padded exactly; ``None`` in the set
    marks a leaf flagged with a bare ``norm=True`` (kind unknown).
    """
    kinds: dict[str, set[str | None]] = {}
    for s in leaves:
        if s.norm:
            for a in s.axes:
                if a and a.role == "out":
                    kinds.setdefault(a.space, set()).add(s.norm_kind)
    return {space: frozenset(k) for space, k in kinds.items()}


def pad_kind(leaves: Sequence[LeafSpec], space: str) -> str | None:
    """The norm kind (``"layer"``/``"rms"``) of ``space`` if it can be padded, else None."""
    kinds = norm_kinds(leaves).get(space, frozenset())
    return next(iter(kinds)) if len(kinds) == 1 and None not in kinds else None


def path_str(path: Sequence[Any]) -> str:
    """Render a ``jax.tree_util`` key path as ``"a/b/0/kernel"``."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def leaves_with_paths(params: Any) -> list[tuple[str, Any]]:
    """Flatten a params pytree into ``[(path, leaf)]`` in tree order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return [(path_str(p), leaf) for p, leaf in flat]


@dataclass(frozen=True)
class ResolvedSpec:
    """A spec matched against a concrete params pytree: one LeafSpec per leaf, in tree order."""

    paths: tuple[str, ...]
    leaves: tuple[LeafSpec, ...]
    sizes: Mapping[str, int]  # space -> size (width spaces and depth stacks alike)
    paired: frozenset[str] = frozenset()  # spaces whose units are pairs (i, i + n/2)

    def width_spaces(self) -> list[str]:
        return sorted({a.space for s in self.leaves for a in s.axes if a and a.role != "depth"})

    def depth_stacks(self) -> list[str]:
        return sorted({a.space for s in self.leaves for a in s.axes if a and a.role == "depth"})

    def normalized_spaces(self) -> set[str]:
        """Spaces over which some normalisation (a ``norm`` leaf's out axis) is taken."""
        return {a.space for s in self.leaves if s.norm for a in s.axes if a and a.role == "out"}

    def homogeneous_spaces(self) -> list[str]:
        """Spaces whose units some leaf declares positively homogeneous (``homogeneous``)."""
        return sorted({s.homogeneous for s in self.leaves if s.homogeneous})

    def pad_kind(self, space: str) -> str | None:
        """Norm kind of ``space`` when it can be grown exactly by padding (see :func:`pad_kind`)."""
        return pad_kind(self.leaves, space)

    def table(self) -> str:
        """A readable table of spaces, sizes and the leaves that use them."""
        lines = ["space            size  role   leaves"]
        for space in self.width_spaces() + self.depth_stacks():
            for role in ROLES:
                users = [
                    p
                    for p, s in zip(self.paths, self.leaves, strict=True)
                    if any(a == Axis(role, space) for a in s.axes)  # type: ignore[arg-type]
                ]
                if users:
                    lines.append(
                        f"{space:<16} {self.sizes[space]:>5}  {role:<6} {', '.join(users)}"
                    )
        return "\n".join(lines)


class NeuronSpec:
    """Declarative map from leaf-path patterns to axis roles.

    >>> spec = NeuronSpec({"layers/0/kernel": ("-", "out:h1"), "layers/0/bias": ("out:h1",),
    ...                    "layers/1/kernel": ("in:h1", "-"), "layers/1/bias": ("-",)})

    paired: width spaces whose units are the entry pairs ``(i, i + n/2)`` (rotary head_dim).
    """

    def __init__(
        self,
        leaves: Mapping[str, LeafSpec | Sequence[str | Axis | None]],
        *,
        paired: Sequence[str] = (),
    ):
        self.patterns: dict[str, LeafSpec] = {
            pattern: s if isinstance(s, LeafSpec) else LeafSpec.of(s)
            for pattern, s in leaves.items()
        }
        spaces = {}
        for pattern, s in self.patterns.items():
            for a in s.axes:
                if a is None:
                    continue
                kind = "depth" if a.role == "depth" else "width"
                if spaces.setdefault(a.space, kind) != kind:
                    raise SpecError(
                        f"spec entry {pattern!r}: space {a.space!r} is used both as a width space "
                        "and as a depth stack"
                    )
        for space in paired:
            if spaces.get(space) != "width":
                raise SpecError(
                    f"paired space {space!r}: not a width space of the spec {sorted(spaces)}"
                )
        self.paired = frozenset(paired)
        normed = {a.space for s in self.patterns.values() if s.norm for a in s.axes if a}
        for pattern, s in self.patterns.items():
            if s.homogeneous in normed | self.paired:
                raise SpecError(
                    f"spec entry {pattern!r}: homogeneous space {s.homogeneous!r} is normalised "
                    "or paired, so its units cannot be rescaled one by one"
                )

    def __repr__(self) -> str:
        body = ", ".join(f"{p!r}: {s}" for p, s in self.patterns.items())
        paired = f", paired={sorted(self.paired)}" if self.paired else ""
        return f"NeuronSpec({{{body}}}{paired})"

    def resolve(self, params: Any) -> ResolvedSpec:
        """Match the spec against ``params``; raise SpecError on any mismatch.

        Checked: every leaf matched by exactly one pattern, every pattern used, ranks equal,
        and each space having one size across all the axes that index it.
        """
        named = leaves_with_paths(params)
        if not named:
            raise SpecError("params pytree has no leaves")
        used: set[str] = set()
        specs: list[LeafSpec] = []
        sizes: dict[str, int] = {}
        where: dict[str, str] = {}
        for path, leaf in named:
            hits = [p for p in self.patterns if fnmatch.fnmatchcase(path, p)]
            if not hits:
                raise SpecError(f"leaf {path!r} is not described by the spec (no pattern matches)")
            if len(hits) > 1:
                raise SpecError(f"leaf {path!r} is matched by several spec patterns: {hits}")
            used.add(hits[0])
            s = self.patterns[hits[0]]
            shape = getattr(leaf, "shape", None)
            if shape is None:
                raise SpecError(f"leaf {path!r} is not an array (got {type(leaf).__name__})")
            if len(shape) != len(s.axes):
                raise SpecError(
                    f"leaf {path!r}: spec gives {len(s.axes)} axes {s}, array has shape "
                    f"{tuple(shape)}"
                )
            for ax, (a, n) in enumerate(zip(s.axes, shape, strict=True)):
                if a is None:
                    continue
                if a.space in sizes and sizes[a.space] != n:
                    raise SpecError(
                        f"space {a.space!r} has size {sizes[a.space]} at {where[a.space]} but "
                        f"size {n} at leaf {path!r} axis {ax}"
                    )
                sizes.setdefault(a.space, int(n))
                where.setdefault(a.space, f"leaf {path!r} axis {ax}")
            specs.append(s)
        unused = [p for p in self.patterns if p not in used]
        if unused:
            raise SpecError(f"spec patterns match no leaf of the params: {unused}")
        for space in sorted(self.paired):
            if sizes[space] % 2:
                raise SpecError(
                    f"paired space {space!r} has odd size {sizes[space]} at {where[space]}: its "
                    "units are the entry pairs (i, i + n/2), so the size must be even"
                )
        return ResolvedSpec(tuple(p for p, _ in named), tuple(specs), sizes, self.paired)


_FACTOR = re.compile(r"^(?:x(?P<a>[0-9.]+)|(?P<b>[0-9.]+)x)$")


def _factor(text: str, what: str) -> float | None:
    m = _FACTOR.match(text.strip())
    if not m:
        return None
    try:
        f = float(m.group("a") or m.group("b"))
    except ValueError:
        f = -1.0
    if not (f > 0 and math.isfinite(f)):
        raise GrowthError(f"{what} {text!r}: the growth factor must be a positive number")
    return f


def parse_targets(text: str | None, sizes: Mapping[str, int], what: str) -> dict[str, int]:
    """Parse ``"x4"`` / ``"4x"`` (every space times 4), ``"d=128,h=x2"`` or, when there is a
    single space, a plain integer, into ``{space: new size}``."""
    if text is None or str(text).strip() == "":
        return {}
    text = str(text).strip()
    f = _factor(text, what)
    if f is not None:
        return {s: max(1, round(n * f)) for s, n in sizes.items()}
    if "=" not in text:
        if len(sizes) == 1 and text.isdigit():
            return {next(iter(sizes)): int(text)}
        raise GrowthError(
            f"{what} {text!r}: expected 'xK', 'SPACE=N[,SPACE=xK...]' with spaces {sorted(sizes)}"
        )
    out = {}
    for part in text.split(","):
        space, _, value = part.partition("=")
        space, value = space.strip(), value.strip()
        if space not in sizes:
            raise GrowthError(f"{what} {part!r}: unknown space {space!r}; spaces: {sorted(sizes)}")
        f = _factor(value, what)
        if f is not None:
            out[space] = max(1, round(sizes[space] * f))
        elif value.isdigit() and int(value) > 0:
            out[space] = int(value)
        else:
            raise GrowthError(f"{what} {part!r}: expected a positive integer or a factor 'xK'")
    return out
