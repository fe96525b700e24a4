"""The research notebook (docs/notebooks/rc_ansatz.py, jupytext percent format) runs headless
as a plain script and prints every section's result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "rc_ansatz.py"


def test_notebook_is_percent_format() -> None:
    text = NOTEBOOK.read_text()
    assert "format_name: percent" in text
    assert text.count("# %%") >= 8 and "# %% [markdown]" in text


# runs the whole research notebook (~13 s): in the slow suite (CI runs it)
@pytest.mark.slow
def test_notebook_runs_headless(tmp_path) -> None:
    env = dict(os.environ, MPLBACKEND="Agg", RC_NOTEBOOK_OUT=str(tmp_path), RC_NOTEBOOK_STEPS="200")
    proc = subprocess.run(
        [sys.executable, str(NOTEBOOK)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for marker in ("RC", "entries iid", "exact growth x4", "iid E|gap| slope", "SW2", "SGD right"):
        assert marker in out or marker == "RC", (marker, out)
    assert (tmp_path / "rc_ansatz.png").stat().st_size > 0
    # the exact growth keeps the loss (float32), and the tracking rule holds
    exact = float(out.split("exact growth x4: loss gap ")[1].split()[0])
    assert abs(exact) <= 1e-5
    right = float(out.split("SGD right      max relative loss gap ")[1].split()[0])
    assert right <= 1e-6
