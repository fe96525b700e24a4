"""``grow analyze`` on HF decoders (growth.apps.analyze.decoder) on tiny synthetic GPT-2 and
Llama checkpoints written with numpy (tests.test_hf_decoder's writers).

What honestly holds on a random (untrained) network: the identities; the positive control on
the network itself (the logits are measured against the *source's*, and an MLP's output is a
sum over its units, so iid whole-unit growth to 8 ff stays near it while entrywise resampling
of w_down does not); destroyed copies (a fresh one per draw) scoring far below the network
(their function is no longer the source's) and passing at most FPR_MAX of the independent
destroyed arms (each passes by chance at level ~ALPHA; measured over 8 checkpoint seeds x 8
arms: GPT-2 3/64, Llama 2/64, experiments/positive_control_fpr.py). The must-fail case: a
network whose MLP carries no function (w_down zeroed) fails the control and exits 1."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from growth.apps.analyze import analyze
from growth.apps.analyze.decoder import (
    analyze_decoder,
    mlp_units,
    permute_ff,
    probe_ids,
    relative_error,
)
from growth.apps.analyze.native import _forward
from growth.apps.analyze.verdicts import FPR_MAX, exit_code, identity
from growth.apps.cli import main
from growth.errors import GrowthError
from growth.formats.hf.decoder import load_decoder
from growth.formats.hf.layout import decoder_config
from tests.test_hf_decoder import write_gpt2, write_llama

safetensors_numpy = pytest.importorskip("safetensors.numpy")

GPT2 = dict(d=16, H=4, L=2, V=64, P=32)
LLAMA = dict(d=16, H=4, KV=2, L=2, V=64, ff=32)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def analysed(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "gpt2":
        path = write_gpt2(root / "ckpt", **GPT2)
    else:
        path = write_llama(root / "ckpt", **LLAMA)
    return path, analyze_decoder(path, root / "out", draws=6, seed=0)


def test_report(analysed):
    path, r = analysed
    assert r["family"] in ("hf-gpt2", "hf-llama")
    assert set(r["rc_tie"]) == {f"{s}@layer{l}" for s in ("ff", "heads") for l in range(2)}
    assert r["rc_tie"]["heads@layer0"]["n"] == 4
    assert r["rc_tie"]["ff@layer1"]["n"] == r["sizes"]["ff"]
    assert all(0 < t["p"] <= 1 for t in r["rc_tie"].values())
    on_disk = json.loads((path.parent / "out" / "analysis.json").read_text())
    assert on_disk["verdicts"] == r["verdicts"]
    assert (path.parent / "out" / "analysis.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_healthy_verdicts(analysed):
    _, r = analysed
    v = r["verdicts"]
    assert all(i["verdict"] == "holds" for i in v["identities"].values())
    pc = v["positive_control"]
    assert pc["trained"]["passed"] and pc["trained"]["lower_bound"] > 0.3
    assert pc["destroyed"]["mean_difference"] < 0.25 * pc["trained"]["mean_difference"]
    assert pc["destroyed_repeats"] == 4 and pc["false_positive_rate"] <= FPR_MAX, pc
    assert r["exit_code"] == exit_code(v) == 0


def test_mlp_without_function_fails(tmp_path):
    """Tampered weights: every c_proj (w_down) zeroed, so units carry nothing -> exit 1."""
    path = write_gpt2(tmp_path / "ckpt", **GPT2)
    f = path / "model.safetensors"
    tensors = safetensors_numpy.load_file(str(f))
    for k in tensors:
        if k.endswith("mlp.c_proj.weight"):
            tensors[k] = np.zeros_like(tensors[k])
    safetensors_numpy.save_file(tensors, str(f), metadata={"format": "pt"})
    r = analyze_decoder(path, draws=4)
    assert not r["verdicts"]["positive_control"]["trained"]["passed"]
    assert r["exit_code"] == 1


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = write_llama(tmp_path_factory.mktemp("llama") / "ckpt", **LLAMA)
    params, config, _ = load_decoder(path)
    c = decoder_config(config)
    ids = probe_ids(c.vocab, c.max_len)
    return params, lambda p: np.asarray(_forward("decoder", c)(p, ids))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), layer=st.integers(0, 1))
def test_unit_permutation_is_an_identity(llama, seed, layer):
    """Whole-unit permutation keeps the logits and permutes the units' (in, out) norm pairs."""
    params, logits = llama
    p = permute_ff(params, layer, jax.random.key(seed))
    assert relative_error(logits(p), logits(params)) < 1e-5
    assert _norm_pairs(p, layer) == _norm_pairs(params, layer)


def _norm_pairs(params: dict, layer: int) -> list[tuple[float, float]]:
    """The sorted (||incoming||, ||outgoing||) pairs of one layer's MLP units."""
    w_in, w_out = mlp_units(params["blocks"], layer)
    a, c = np.linalg.norm(w_in, axis=0).round(5), np.linalg.norm(w_out, axis=1).round(5)
    return sorted(zip(a.tolist(), c.tolist(), strict=True))


def test_identity_check_can_fail(llama):
    """Permuting w_down's rows alone (a broken unit permutation) violates the identity."""
    params, logits = llama
    blocks = dict(params["blocks"])
    blocks["w_down"] = np.array(blocks["w_down"])
    blocks["w_down"][0] = blocks["w_down"][0][::-1]
    broken = relative_error(logits({**params, "blocks": blocks}), logits(params))
    assert identity("broken permutation", broken, 0.0)["verdict"] == "violated"


def test_bad_input(tmp_path):
    path = write_llama(tmp_path / "ckpt", **LLAMA)
    with pytest.raises(GrowthError, match="draws"):
        analyze_decoder(path, draws=1)


def test_cli_dispatches_decoder(tmp_path, capsys):
    path = write_llama(tmp_path / "ckpt", seed=3, **LLAMA)
    code = main(["analyze", str(path), "--out", str(tmp_path / "out"), "--draws", "4"])
    text = capsys.readouterr().out
    assert "HF decoder" in text and "heads@layer1" in text
    r = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert r["family"] == "hf-llama" and code == r["exit_code"]
    assert analyze(path, draws=4)[0]["verdicts"] == r["verdicts"]
