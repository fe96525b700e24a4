"""The stdlib byte corpus: offline, deterministic, held out by file; batches and eval windows."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest

from growth.errors import GrowthError
from growth.tasks.lm_data import (
    SEPARATOR,
    eval_windows,
    lm_batches,
    load_corpus,
    stdlib_files,
)

CAP = 600_000


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(CAP)


def test_corpus_is_stdlib_source_split_by_file(corpus) -> None:
    assert corpus.vocab == 256 and corpus.train.dtype == np.uint8
    assert CAP <= corpus.train.size + corpus.test.size < CAP + 400_000
    assert not set(corpus.train_files) & set(corpus.test_files)  # held out by whole files
    n = len(corpus.train_files) + len(corpus.test_files)
    assert len(corpus.test_files) == n // 10
    files = stdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    names = [f.relative_to(root).as_posix() for f in files[:n]]
    assert sorted(corpus.train_files + corpus.test_files) == sorted(names)
    assert not any(
        f.startswith(("site-packages/", "test/", "encodings/")) or "/tests/" in f for f in names
    )
    # documents joined by the separator, which occurs nowhere else
    assert int((corpus.test == SEPARATOR).sum()) == len(corpus.test_files) - 1
    assert b"import" in corpus.train[:200_000].tobytes()
    assert not corpus.train.flags.writeable


def test_corpus_is_deterministic(corpus) -> None:
    load_corpus.cache_clear()
    again = load_corpus(CAP)
    assert again is not corpus and again.fingerprint == corpus.fingerprint
    np.testing.assert_array_equal(again.test, corpus.test)


def test_batches_are_seeded_windows(corpus) -> None:
    a = next(lm_batches(corpus.train, 4, 16, seed=3))
    b = next(lm_batches(corpus.train, 4, 16, seed=3))
    c = next(lm_batches(corpus.train, 4, 16, seed=4))
    assert a.shape == (4, 17) and a.dtype == np.int32 and a.min() >= 0 and a.max() < 256
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    stream = corpus.train.tobytes()
    assert all(bytes(row.astype(np.uint8)) in stream for row in a)  # contiguous windows


def test_eval_windows_fixed_and_cover_the_split(corpus) -> None:
    w = eval_windows(corpus.test, 32, 10)
    assert w.shape == (10, 33)
    np.testing.assert_array_equal(w, eval_windows(corpus.test, 32, 10))
    np.testing.assert_array_equal(w[0], corpus.test[:33])
    np.testing.assert_array_equal(w[-1], corpus.test[-33:])


def test_bad_arguments() -> None:
    with pytest.raises(GrowthError, match="test_every"):
        load_corpus(1000, test_every=1)
    with pytest.raises(GrowthError, match="seq_len"):
        next(lm_batches(np.zeros(10, np.uint8), 2, 16, 0))
    with pytest.raises(GrowthError, match="n >= 1"):
        eval_windows(np.zeros(10, np.uint8), 4, 0)


def test_lm_demo_end_to_end(tmp_path) -> None:
    from growth.apps.commands import verify_checkpoint
    from growth.apps.demo.lm import run_lm_demo

    s = run_lm_demo(
        tmp_path / "lm", quick=True, small_steps=12, steps=12, eval_every=6, eval_windows=8,
        batch=4, seq_len=16, corpus_bytes=CAP, budget_fractions=(0.5,), lr_sweep=(3e-3, 1e-2),
    )  # fmt: skip
    keys = ("method", "small_test_loss", "grown_test_loss_step0", "zero_shot_gap",
            "steps_to_target_grown", "steps_to_target_scratch", "speedup")  # fmt: skip
    assert all(k in s for k in keys)
    assert abs(s["zero_shot_gap"]) <= 1e-5 * max(1.0, s["small_test_loss"])
    assert s["growth"]["function_preserving"] and s["max_rel_logit_error"] < 1e-4
    assert (tmp_path / "lm" / "loss_curves.png").stat().st_size > 0
    assert (tmp_path / "lm" / "grown" / "COMPLETE").exists()
    # `grow verify` on the decoder checkpoint: source found through meta's relative path,
    # held-out windows rebuilt from meta's data spec
    check = verify_checkpoint(tmp_path / "lm" / "grown")
    assert check["passed"] is True and check["bound"]["kind"] == "rounding", check["reason"]
    assert check["source_test_loss"] == pytest.approx(s["small_test_loss"], rel=1e-5)
    assert check["max_rel_logit_error"] < 1e-4
