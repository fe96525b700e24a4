"""The text reports and output files of ``grow analyze``, shared by every family's path
(:mod:`.native`, :mod:`.hf`, :mod:`.decoder`): the RC-tie table, the LLN table and fits, the
verdicts block, and the atomic write of ``analysis.json`` + ``analysis.png``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from growth.apps.analyze.verdicts import ALPHA


def _write_lln_plot(path: Path, lln: dict, gap_label: str, sd_key: str, sd_label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    N = np.asarray(lln["widths"], float)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label, fit in (
        ("mean_abs_gap", f"iid: {gap_label}", lln["gap_fit"]),
        (sd_key, f"iid: {sd_label}", lln["sd_fit"]),
    ):
        ax.loglog(N, lln[key], "o-", label=f"{label} (slope {fit['slope']:.2f})")
    bal = np.maximum(np.abs(np.asarray(lln["balanced_gap"], float)), 1e-9)
    ax.loglog(N, bal, "s--", label=f"balanced copy: {gap_label} (floored 1e-9)")
    ax.set_xlabel("grown width N (first space)")
    ax.set_ylabel("gap / spread")
    ax.set_title("LLN of iid growth")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(
    out_dir: str | os.PathLike,
    result: dict,
    *,
    gap_label: str = "E|loss gap|",
    sd_key: str = "logit_sd",
    sd_label: str = "sd of logits",
    plot: Callable[[Path, dict], None] | None = None,
) -> Path:
    """Write analysis.json + analysis.png (``plot(png_path, result)`` when given, else the LLN
    plot of ``result["lln"]``: its ``mean_abs_gap``, ``sd_key`` and ``balanced_gap`` against
    ``widths``) into a temp dir, then move them into ``out_dir``."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
        if plot is not None:
            plot(tmp / "analysis.png", result)
        else:
            _write_lln_plot(tmp / "analysis.png", result["lln"], gap_label, sd_key, sd_label)
        if not out.exists():
            os.rename(tmp, out)
        else:
            for name in ("analysis.json", "analysis.png"):
                os.replace(tmp / name, out / name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def tie_lines(ties: dict) -> list[str]:
    """The RC-tie table of a report (space -> ``RCTie.to_dict()``)."""
    w = max([12, *(len(s) for s in ties)])
    lines = [
        "RC tie: Spearman(||incoming_i||, ||outgoing_i||) over units, paired vs shuffled",
        f"  {'space':<{w}} {'n':>5} {'paired':>8} {'shuf mean':>10} {'shuf sd':>8} {'z':>7}",
    ]
    for s, t in ties.items():
        lines.append(
            f"  {s:<{w}} {t['n']:>5} {t['paired']:>8.3f} {t['shuffled_mean']:>10.3f} "
            f"{t['shuffled_sd']:>8.3f} {t['z']:>7.2f}"
        )
    return lines


def lln_lines(r: dict, what: str, columns: tuple[tuple[str, str, str], ...],
              fits: tuple[tuple[str, str, str], ...]) -> list[str]:  # fmt: skip
    """The LLN block of a report: a table of ``k``, ``N`` and ``columns`` (header, key in
    ``r["lln"]``, number format) per growth factor, then the slope lines ``fits`` (label, key
    in ``r["lln"]``, expectation) and where the outputs went."""
    lln = r["lln"]
    lines = [
        "",
        f"LLN of iid growth of {what} ({lln['draws']} draws per width)",
        f"  {'k':>3} {'N':>6}" + "".join(f" {h:>10}" for h, _, _ in columns),
    ]
    for i, k in enumerate(lln["factors"]):
        cells = "".join(f" {lln[key][i]:>10{fmt}}" for _, key, fmt in columns)
        lines.append(f"  {k:>3} {lln['widths'][i]:>6}{cells}")
    for name, key, expect in fits:
        f = lln[key]
        lines.append(
            f"  slope of {name} vs N: {f['slope']:.3f}  95% CI [{f['ci'][0]:.3f}, "
            f"{f['ci'][1]:.3f}]  (expected {expect})"
        )
    return lines


def outputs_line(r: dict) -> list[str]:
    """Where ``analysis.json`` and the plot went (nothing when not written)."""
    return [f"\nwrote {r['out']}/analysis.json, analysis.png"] if "out" in r else []


def verdict_lines(v: dict) -> list[str]:
    """The verdicts block of a report (see :mod:`.verdicts`)."""
    pc = v["positive_control"]
    lines = ["", f"verdicts (alpha = {ALPHA})"]
    for s, t in v["rc_tie"].items():
        lines.append(f"  RC tie {s:<12} p = {t['p']:.3f}: {t['verdict']}  (H0: {t['null']})")
    if "rc_tie_false_positive_rate" in v:
        lines.append(f"  RC tie false-positive rate on iid Gaussian layers: "
                     f"{v['rc_tie_false_positive_rate']:.3f}")  # fmt: skip
    tr, de = pc["trained"], pc["destroyed"]
    fpr, fpr_max = pc["false_positive_rate"], pc["max_false_positive_rate"]
    lines += [
        f"  positive control ({pc['null']}; pass: {pc['threshold']})",
        f"    this network: mean {tr['mean_difference']:.4f}, lower {tr['lower_bound']:.4f}: "
        f"{'pass' if tr['passed'] else 'FAIL'}",
        f"    destroyed copies (fresh per draw): mean {de['mean_difference']:.4f}, lower "
        f"{de['lower_bound']:.4f}: {'pass' if de['passed'] else 'fail, as it must'}",
        f"    false-positive rate over {pc['destroyed_repeats']} destroyed arms: {fpr:.2f} "
        f"({'<=' if fpr <= fpr_max else '>'} {fpr_max}: "
        f"{'informative' if fpr <= fpr_max else 'control uninformative'})",
    ]
    for i in v["identities"].values():
        lines.append(f"  identity: {i['what']}: gap {i['relative_gap']:.2g} {i['verdict']} "
                     "(by construction, not evidence)")  # fmt: skip
    if "lln_sd_slope" in v:
        s = v["lln_sd_slope"]
        lines.append(f"  LLN spread slope: {s['verdict']} ({s['note']})")
    return lines
