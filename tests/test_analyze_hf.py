"""``grow analyze`` on the pretrained all-MiniLM-L6-v2 (growth.apps.analyze.hf): structure of the
report and the invariants that must hold on any trained encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from growth.apps.analyze.hf import SENTENCES, analyze_hf, format_hf_report
from growth.apps.analyze.verdicts import FPR_MAX
from growth.apps.cli import main
from growth.errors import GrowthError
from growth.formats import hf


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("ahf") / "analysis"
    return analyze_hf(hf.minilm_dir(), out, draws=2, factors=(1, 2, 3), num_shuffles=40,
                      sentences=SENTENCES[:4])  # fmt: skip


def test_report_invariants(report):
    c, lln = report["controls"], report["lln"]
    assert report["sizes"] == {"d": 384, "heads": 12, "ff": 1536, "layers": 6}
    assert set(report["rc_tie"]) == {f"{s}@layer{l}" for s in ("ff", "heads") for l in range(6)}
    assert report["rc_tie"]["ff@layer0"]["n"] == 1536
    assert report["rc_tie"]["heads@layer0"]["n"] == 12
    # a permutation of whole units is the same network; copies with 1/c fan-in are exact
    assert abs(c["unit_permutation"]) < 1e-6
    assert np.all(np.abs(lln["balanced_gap"]) < 1e-5)
    # destroying the unit structure moves the embeddings far more than rounding
    for name in ("entry_iid", "column_permutation", "unit_bootstrap", "ffn_removed"):
        assert c[name] > 1e-3, name
    # iid growth is noisy: positive error and spread at every width, the widths are k * 1536
    assert lln["widths"] == [1536, 3072, 4608]
    assert all(e > 1e-4 for e in lln["mean_abs_gap"]) and all(s > 0 for s in lln["embedding_sd"])
    out = Path(report["out"])
    assert json.loads((out / "analysis.json").read_text())["controls"] == c
    assert (out / "analysis.png").stat().st_size > 0
    text = format_hf_report(report)
    assert "ff@layer5" in text and "slope of mean error" in text and "positive control" in text


def test_verdicts(report):
    """The positive control passes on MiniLM and fails on destroyed copies (ff2_w resampled
    entrywise, a fresh copy per draw) in at most FPR_MAX of its arms; identities hold; the exit
    code says so."""
    v = report["verdicts"]
    pc = v["positive_control"]
    assert pc["trained"]["passed"] and not pc["destroyed"]["passed"], pc
    assert pc["false_positive_rate"] <= FPR_MAX, pc
    assert all(i["verdict"] == "holds" for i in v["identities"].values())
    assert set(v["rc_tie"]) == set(report["rc_tie"])
    assert all(t["verdict"] in ("tie", "no tie") for t in v["rc_tie"].values())
    assert report["exit_code"] == 0


def test_bad_input():
    with pytest.raises(GrowthError, match="draws=1"):
        analyze_hf(hf.minilm_dir(), draws=1)
    with pytest.raises(GrowthError, match="factors"):
        analyze_hf(hf.minilm_dir(), factors=(2, 2, 4))
    with pytest.raises(GrowthError, match="control_layer=9"):
        analyze_hf(hf.minilm_dir(), control_layer=9)


def test_cli_detects_hf_directory(tmp_path, capsys):
    """``grow analyze DIR`` on a HF directory takes the HF path; bad input is one clear line."""
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert main(["analyze", str(tmp_path)]) != 0
    assert "model.safetensors" in capsys.readouterr().err
