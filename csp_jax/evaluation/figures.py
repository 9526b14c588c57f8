"""The evaluation's figures: the spread of the best RMSE and the match rate against k."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # figures without pyplot: no backend is chosen or changed

from csp_jax.candidates.matching import MATCH


def evaluation_pngs(results: dict, out_dir, stem: str) -> tuple[Path, Path]:
    """`<stem>_rmse.png` (best RMSE per matched crystal) and `<stem>_match_rate.png` (match rate
    against k, the first k samples of each crystal) from `metrics.evaluate_samples` results."""
    outcome, rms = np.asarray(results["outcome"]), np.asarray(results["rms"], float)
    matched = outcome == MATCH
    best = np.where(matched, rms, np.inf).min(axis=1)
    best = best[np.isfinite(best)]
    out_dir = Path(out_dir)
    hist_path, rate_path = out_dir / f"{stem}_rmse.png", out_dir / f"{stem}_match_rate.png"
    fig = Figure(figsize=(4.5, 3.2))
    ax = fig.subplots()
    ax.hist(best, bins=30, range=(0, max(0.5, float(best.max()) if best.size else 0.5)))
    ax.set(xlabel="best normalised RMS displacement", ylabel="matched crystals",
           title=f"{best.size} of {outcome.shape[0]} crystals matched")
    fig.tight_layout()
    fig.savefig(hist_path, dpi=130)
    k = np.arange(1, outcome.shape[1] + 1)
    rate = [100.0 * np.mean(np.any(matched[:, :n], axis=1)) for n in k]
    fig = Figure(figsize=(4.5, 3.2))
    ax = fig.subplots()
    ax.plot(k, rate, "o-")
    ax.set(xlabel="samples per crystal k", ylabel="match rate (%)", ylim=(0, 100),
           title="match rate with the first k samples")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(rate_path, dpi=130)
    return hist_path, rate_path
