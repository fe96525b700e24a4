"""Neuron-space specs: parsing, resolution against params, and precise errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from conftest import abstract_params
from hypothesis import given, settings
from hypothesis import strategies as st

from growth.errors import GrowthError, SpecError
from growth.models import get_family
from growth.spec import Axis, LeafSpec, NeuronSpec, parse_axis, path_str


def _params() -> dict:
    """A 2-hidden-layer MLP-shaped dict: 3 -> h1=4 -> h2=5 -> 2."""
    return {
        "layers": {
            0: {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros((4,))},
            1: {"kernel": jnp.zeros((4, 5)), "bias": jnp.zeros((5,))},
            2: {"kernel": jnp.zeros((5, 2)), "bias": jnp.zeros((2,))},
        }
    }


def _entries() -> dict:
    return {
        "layers/0/kernel": ("-", "out:h1"),
        "layers/0/bias": ("out:h1",),
        "layers/1/kernel": ("in:h1", "out:h2"),
        "layers/1/bias": ("out:h2",),
        "layers/2/kernel": ("in:h2", "-"),
        "layers/2/bias": ("-",),
    }


def test_valid_spec_resolves_sizes_and_roles() -> None:
    r = NeuronSpec(_entries()).resolve(_params())
    assert dict(r.sizes) == {"h1": 4, "h2": 5}
    assert r.width_spaces() == ["h1", "h2"] and r.depth_stacks() == []
    assert r.paths[0] == "layers/0/bias"  # tree order (dict keys sorted)
    assert r.leaves[r.paths.index("layers/1/kernel")].axes == (Axis("in", "h1"), Axis("out", "h2"))
    assert r.normalized_spaces() == set()


def test_glob_patterns_match_several_leaves() -> None:
    entries = _entries() | {"extra/*": ("out:h1",)}
    params = _params()
    params["extra"] = {"a": jnp.zeros((4,)), "b": jnp.zeros((4,))}
    r = NeuronSpec(entries).resolve(params)
    assert {"extra/a", "extra/b"} <= set(r.paths)
    assert r.leaves[r.paths.index("extra/b")].axes == (Axis("out", "h1"),)


def test_unknown_leaf_names_its_path() -> None:
    params = _params()
    params["layers"][1]["scale"] = jnp.ones((5,))
    with pytest.raises(SpecError, match=r"leaf 'layers/1/scale' is not described by the spec"):
        NeuronSpec(_entries()).resolve(params)


def test_pattern_matching_nothing_is_named() -> None:
    entries = _entries() | {"layers/9/kernel": ("-", "out:h1")}
    with pytest.raises(SpecError, match=r"match no leaf.*'layers/9/kernel'"):
        NeuronSpec(entries).resolve(_params())


def test_ambiguous_patterns_name_leaf_and_patterns() -> None:
    entries = _entries() | {"layers/*/bias": ("-",)}
    with pytest.raises(SpecError, match=r"leaf 'layers/0/bias' is matched by several") as e:
        NeuronSpec(entries).resolve(_params())
    assert "'layers/*/bias'" in str(e.value) and "'layers/0/bias'" in str(e.value)


def test_rank_mismatch_names_leaf_axes_and_shape() -> None:
    entries = _entries() | {"layers/1/bias": ("out:h2", "-")}
    with pytest.raises(SpecError, match=r"leaf 'layers/1/bias': spec gives 2 axes") as e:
        NeuronSpec(entries).resolve(_params())
    assert "(5,)" in str(e.value)


def test_space_size_disagreement_names_both_places() -> None:
    params = _params()
    params["layers"][1]["bias"] = jnp.zeros((6,))
    with pytest.raises(SpecError) as e:
        NeuronSpec(_entries()).resolve(params)
    msg = str(e.value)
    assert "space 'h2'" in msg and "size 5" in msg and "size 6" in msg
    assert "'layers/1/bias'" in msg and "'layers/1/kernel'" in msg and "axis" in msg


@pytest.mark.parametrize("text", ["foo:h1", "out", "out:", ":h1", "", "in-h1", "depth", "OUT:h1"])
def test_bad_axis_strings(text: str) -> None:
    with pytest.raises(SpecError, match="axis") as e:
        parse_axis(text)
    assert repr(text) in str(e.value)
    with pytest.raises(SpecError):
        NeuronSpec({"w": ("-", text)})


def test_good_axis_strings_parse() -> None:
    assert parse_axis("out:h1") == Axis("out", "h1")
    assert parse_axis("in:d_model") == Axis("in", "d_model")
    assert parse_axis("depth:blocks") == Axis("depth", "blocks")
    assert parse_axis("-") is None and parse_axis(None) is None
    assert str(LeafSpec.of(("depth:blocks", "in:h", "-"), residual_out=True)) == (
        "(depth:blocks, in:h, -) residual-out"
    )


def test_space_used_as_width_and_depth_is_rejected() -> None:
    with pytest.raises(SpecError, match=r"'blocks'.*both as a width space and as a depth stack"):
        NeuronSpec({"a": ("depth:blocks", "out:h"), "b": ("out:blocks",)})


def test_non_array_leaf_and_empty_params() -> None:
    with pytest.raises(SpecError, match=r"leaf 'w' is not an array"):
        NeuronSpec({"w": ("-",)}).resolve({"w": 3.0})
    with pytest.raises(SpecError, match="no leaves"):
        NeuronSpec({"w": ("-",)}).resolve({})


def test_spec_error_is_a_growth_error_and_value_error() -> None:
    assert issubclass(SpecError, GrowthError) and issubclass(GrowthError, ValueError)


def test_table_lists_every_space_size_role_and_leaf() -> None:
    fam = get_family("resmlp")
    cfg = fam.config(input_dim=3, width=6, hidden=10, depth=4, num_classes=2)
    table = fam.spec(cfg).resolve(abstract_params("resmlp", cfg)).table()
    rows = [set(line.replace(",", " ").split()) for line in table.splitlines()]

    def listed(space: str, size: int, role: str, leaf: str) -> bool:
        return any({space, str(size), role, leaf} <= row for row in rows)

    assert listed("d", 6, "out", "embed/kernel") and listed("d", 6, "in", "head/kernel")
    assert listed("d", 6, "out", "w2") and listed("h", 10, "in", "w2")
    assert listed("h", 10, "out", "b1") and listed("blocks", 4, "depth", "ln_scale")
    # negative controls: wrong size, wrong role, a space that does not occur
    assert not listed("d", 10, "out", "embed/kernel") and not listed("h", 10, "out", "w2")
    assert "h1" not in table


def test_path_str_renders_dict_list_and_attr_keys() -> None:
    tree = {"a": [jnp.zeros(1), {"b": jnp.zeros(2)}]}
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert paths == ["a/0", "a/1/b"]


@settings(max_examples=15, deadline=None)
@given(
    hidden=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    width=st.integers(1, 40),
    h=st.integers(1, 40),
    depth=st.integers(1, 6),
)
def test_model_specs_resolve_to_config_sizes(hidden, width, h, depth) -> None:
    mlp = get_family("mlp")
    cfg = mlp.config(input_dim=3, hidden=tuple(hidden), num_classes=2)
    r = mlp.spec(cfg).resolve(abstract_params("mlp", cfg))
    assert dict(r.sizes) == mlp.sizes(cfg)
    res = get_family("resmlp")
    rcfg = res.config(input_dim=3, width=width, hidden=h, depth=depth, num_classes=2)
    rr = res.spec(rcfg).resolve(abstract_params("resmlp", rcfg))
    assert dict(rr.sizes) == res.sizes(rcfg)
    assert rr.depth_stacks() == ["blocks"] and rr.width_spaces() == ["d", "h"]
    assert rr.normalized_spaces() == {"d"}
