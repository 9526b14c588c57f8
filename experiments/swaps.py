"""How often a model prefers a species swap of the true structure.

    python experiments/swaps.py --eval runs/eval_perov5 --dataset perov_5
    python experiments/swaps.py --model pretrained/perov5 --dataset perov_5 --limit 200

`--eval`: of an evaluation's crystals (`<split>_samples.npz`, `<split>_metrics.json`),
the share whose top-ranked sample by energy matches the true structure, is
the true structure with two sites' species exchanged (a "swap": each
transposition of two sites of different species that StructureMatcher tells
apart from the truth), or is something else; and the energy top-1 rate if
swaps were ranked last (the gain an energy that ranks swaps right would give).
Only the 6 lowest-energy samples of a crystal are checked for swaps.

`--model`: at the true geometry of the first `--limit` test crystals of the
fixed shuffle, the share of crystals whose true structure has a lower energy
than every swap, the share of swaps below their truth, and the counts (below,
all) of swaps of two cations and of the other swaps.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher

from csp_jax import models
from csp_jax.data.datasets import load_split, subset_indices
from csp_jax.data.species import most_electronegative
from csp_jax.evaluation.samples import load_samples, sample_at
from csp_jax.candidates.matching import MATCHER_KWARGS
from csp_jax.candidates.ranking import ranked_order
from csp_jax.config import DataConfig, EvalConfig
from csp_jax.geometry.crystal import from_structure, stack, to_structure
from csp_jax.geometry.neighbors import NeighborCapacity

CHECKED = 6  # lowest-energy samples of a crystal checked for being a swap


def distinct_swaps(truth, matcher) -> list[tuple]:
    """(structure, both cations) for each of `truth`'s two sites of different species whose
    exchange the matcher tells apart from it; "cations": neither is the most
    electronegative element of the formula (the anion)."""
    anion = most_electronegative([e.Z for e in truth.composition.elements])
    swaps = []
    for i, j in itertools.combinations(range(len(truth)), 2):
        if truth[i].specie != truth[j].specie:
            swap = truth.copy()
            a, b = swap[i].specie, swap[j].specie
            swap.replace(i, b, swap[i].frac_coords)
            swap.replace(j, a, swap[j].frac_coords)
            if not matcher.fit(truth, swap):
                swaps.append((swap, anion not in (a.Z, b.Z)))
    return swaps


def top_ranked(eval_dir: Path, dataset: str, split: str, data_dir) -> dict:
    """Shares of crystals whose lowest-energy valid sample matches, is a swap, or neither."""
    report = json.loads((eval_dir / f"{split}_metrics.json").read_text())
    outcome, names = np.array(report["outcome"]), report["outcome_names"]
    samples, energies, ids = load_samples(eval_dir / f"{split}_samples.npz")
    data = load_split(dataset, split, data_dir)
    row = {m: i for i, m in enumerate(data.material_ids)}
    matcher, match, invalid = StructureMatcher(**MATCHER_KWARGS), names.index("match"), names.index("invalid")
    counts = dict(match=0, swap=0, other=0, match_if_swaps_last=0)
    for t, material in enumerate(ids):
        order = ranked_order(energies[t], np.where(outcome[t] == invalid, -1, 0), "energy")
        swaps = [swap for swap, _ in distinct_swaps(data.structure(row[material]), matcher)]
        is_swap = np.zeros(len(order), bool)
        for k in order[:CHECKED]:
            if outcome[t, k] not in (match, invalid) and np.isfinite(energies[t, k]):
                sample = to_structure(sample_at(samples, t, k))
                is_swap[k] = any(matcher.fit(sample, swap) for swap in swaps)
        top = order[0]
        kind = "match" if outcome[t, top] == match else ("swap" if is_swap[top] else "other")
        counts[kind] += 1
        counts["match_if_swaps_last"] += outcome[t, order[~is_swap[order]][0]] == match
    return {k: 100.0 * v / len(ids) for k, v in counts.items()} | {"crystals": len(ids)}


def at_true_geometry(model_dir: str, dataset: str, split: str, limit: int, data_dir) -> dict:
    """Shares of crystals whose truth is below every swap, and of swaps below their truth."""
    config, model, variables = models.load(model_dir)
    data = load_split(dataset, split, data_dir)
    data = data.subset(subset_indices(len(data), limit))
    capacity = NeighborCapacity.for_atoms(data.max_atoms)
    energy = jax.jit(jax.vmap(lambda c: model.energy(variables, c, capacity)[0]))
    matcher = StructureMatcher(**MATCHER_KWARGS)
    truth_below_all, gaps, cations = 0, [], []
    for t in range(len(data)):
        truth = data.structure(t)
        swaps = distinct_swaps(truth, matcher)
        if not swaps:
            continue
        e = np.asarray(energy(jax.tree.map(jnp.asarray, stack(
            [from_structure(s, data.max_atoms) for s in [truth, *(swap for swap, _ in swaps)]]))))
        gaps.extend(e[1:] - e[0])
        cations.extend(both for _, both in swaps)
        truth_below_all += bool(np.all(e[1:] > e[0]))
    below, cations = np.array(gaps) < 0, np.array(cations)
    return {"truth_below_every_swap": 100.0 * truth_below_all / len(data),
            "swaps_below_truth": 100.0 * float(np.mean(below)),
            "cation_swaps_below_truth": [int(np.sum(below & cations)), int(np.sum(cations))],
            "other_swaps_below_truth": [int(np.sum(below & ~cations)), int(np.sum(~cations))],
            "crystals": len(data)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval", type=Path, help="an evaluation's output folder")
    p.add_argument("--model", help="a run directory, model folder or shipped model's name")
    p.add_argument("--dataset", default=DataConfig.dataset)
    p.add_argument("--split", default=EvalConfig.split)
    p.add_argument("--limit", type=int, default=EvalConfig.limit,
                   help="--model: the first N crystals of the fixed shuffle (0: all)")
    p.add_argument("--data-dir", help="dataset folder (default: $CSP_JAX_DATA)")
    args = p.parse_args()
    if args.eval:
        print(json.dumps(top_ranked(args.eval, args.dataset, args.split, args.data_dir)))
    if args.model:
        print(json.dumps(at_true_geometry(args.model, args.dataset, args.split, args.limit, args.data_dir)))


if __name__ == "__main__":
    main()
