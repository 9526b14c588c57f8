"""Where an evaluation with `--relax` gains and loses matches: read from its test_metrics.json.

    python experiments/relaxation_losses.py --eval runs/eval_mp20_relax100

Prints: crystals matched by a raw sample, by a relaxed one, by both; of the
relaxed samples that matched the truth before relaxing, how many still match;
of the crystals matched before relaxing but not after, for how many a matching
sample was relaxed at all; the size of each crystal's largest connected
component of matching samples; and, where a relaxed sample matches the truth
but another ranks first, how far (meV/atom) the potential puts the best
matching one above the first.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from csp_jax.candidates.matching import INVALID, MATCH
from csp_jax.config import EvalConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", required=True, type=Path, help="the output folder of evaluate --relax")
    parser.add_argument("--split", default=EvalConfig.split, help=f"the evaluated split (default {EvalConfig.split})")
    args = parser.parse_args()
    results = json.loads((args.eval / f"{args.split}_metrics.json").read_text())
    raw, labels = np.array(results["outcome"]), np.array(results["labels"])
    relaxed = np.array(results["relaxed"]["outcome"])
    tried = relaxed != INVALID
    raw_hit, relaxed_hit = (raw == MATCH).any(axis=1), (relaxed == MATCH).any(axis=1)
    lost = np.flatnonzero(raw_hit & ~relaxed_hit)
    kept = tried & (raw == MATCH)
    largest = np.array([np.bincount(row[row >= 0]).max() if (row >= 0).any() else 0 for row in labels])
    print(f"crystals matched: raw {raw_hit.sum()}, relaxed {relaxed_hit.sum()}, both {(raw_hit & relaxed_hit).sum()}, "
          f"raw only {len(lost)}, relaxed only {(~raw_hit & relaxed_hit).sum()} (of {len(raw)})")
    print(f"relaxed samples that matched before relaxing: {kept.sum()}, still matching after: "
          f"{(kept & (relaxed == MATCH)).sum()}")
    print(f"crystals matched only before relaxing with a matching sample relaxed: "
          f"{sum(bool((tried[t] & (raw[t] == MATCH)).any()) for t in lost)} of {len(lost)}")
    print(f"largest connected component of matching samples per crystal: median {np.median(largest):.0f}, "
          f"{(largest >= 14).sum()} crystals with 14 or more of {raw.shape[1]}")
    energy = np.array(results["relaxed"]["potential_energies"], dtype=np.float64)  # None -> nan
    top = np.array(results["relaxed"]["top_by_potential"])
    missed = [t for t in np.flatnonzero(relaxed_hit) if relaxed[t, top[t]] != MATCH]
    gaps = sorted(1000 * (np.nanmin(energy[t][relaxed[t] == MATCH]) - energy[t, top[t]]) for t in missed)
    print(f"crystals with a matching relaxed sample ranked below the first: {len(missed)}; the best matching "
          f"one above the first by (meV/atom): {', '.join(f'{g:.1f}' for g in gaps)}")


if __name__ == "__main__":
    main()
