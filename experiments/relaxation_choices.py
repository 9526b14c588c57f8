"""What each choice of candidates to relax buys: top-1 and cost, from one evaluation's relaxations.

    python experiments/run.py evaluate --checkpoint pretrained/mp20 --limit 100 --relax \\
        --set relax.candidates=all --out runs/eval_mp20_relax100
    python experiments/relaxation_choices.py --eval runs/eval_mp20_relax100 --dataset mp_20_biternary

A relaxation depends on its sample alone, so the relaxations an evaluation
saved (`<split>_relaxed/`) answer for every choice that needs no others: for
the first n of each crystal's K chains (n of --chains) and each choice of
candidates, the choice's samples are ranked by the potential as `predict
--relax` ranks them (`csp_jax.candidates.record.ranked`), and the top one is
matched to the truth. The choices: `all` (the default) and `representatives`
(`relax.candidates`), and `components`, the lowest learned energy of each
connected component of the match graph (the first choice, kept for the
comparison). The learned energy's top-1 and any raw sample of the same n
chains stand beside them. A crystal counts where every sample a choice needs
was relaxed (the table says how many). Prints a Markdown table; --out writes
it as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from csp_jax.candidates.matching import MATCH, match_pair, match_pairs
from csp_jax.candidates.ranking import cluster_labels, wilson_interval
from csp_jax.candidates.record import Candidates, from_samples, ranked, relaxed_crystal, to_relax, with_matches
from csp_jax.config import EvalConfig
from csp_jax.data.datasets import load_split
from csp_jax.data.sources import known_splits
from csp_jax.evaluation.relaxed import saved_relaxations
from csp_jax.evaluation.samples import load_samples
from csp_jax.geometry.crystal import Crystal

CHOICES = ("representatives", "all", "components")


def chosen(candidates: Candidates, which: str) -> list[int]:
    """The samples a choice relaxes: `record.to_relax`, or of each connected component the one of
    lowest learned energy ("components")."""
    if which != "components":
        return to_relax(candidates, which)
    labels = cluster_labels(candidates.valid, candidates.matches)
    lowest = {}
    for k in np.argsort(candidates.energies, kind="stable"):
        if labels[k] >= 0:
            lowest.setdefault(int(labels[k]), int(k))
    return sorted(lowest.values())


def rate(hits: list[bool]) -> str:
    """"p% [low, high]" of a list of outcomes."""
    low, high = wilson_interval(sum(hits), len(hits))
    return f"{100 * np.mean(hits):.1f} [{low:.1f}, {high:.1f}]" if hits else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", required=True, type=Path, help="the output folder of evaluate --relax")
    parser.add_argument("--dataset", required=True, choices=sorted(known_splits()))
    parser.add_argument("--split", default=EvalConfig.split, help=f"the evaluated split (default {EvalConfig.split})")
    parser.add_argument("--data-dir", help="dataset folder (default: $CSP_JAX_DATA)")
    parser.add_argument("--chains", type=int, nargs="+", default=[5, 10, 20], help="first n chains of each crystal")
    parser.add_argument("--timeout", type=float, default=EvalConfig.match_timeout, help="seconds per matched pair")
    parser.add_argument("--out", type=Path, help="write the table as JSON")
    args = parser.parse_args()

    samples, energies, material_ids = load_samples(args.eval / f"{args.split}_samples.npz")
    results = json.loads((args.eval / f"{args.split}_metrics.json").read_text())
    dataset = load_split(args.dataset, args.split, args.data_dir)
    row = {str(m): i for i, m in enumerate(dataset.material_ids)}
    truths = [dataset.structure(row[str(m)]) for m in material_ids]
    raw, potential = np.array(results["outcome"]), results["relaxed"]["potential"]
    saved = [saved_relaxations(args.eval / f"{args.split}_relaxed" / f"{t:06d}.json") for t in range(len(truths))]
    index = [(t, k) for t, found in enumerate(saved) for k, r in enumerate(found)
             if r is not None and math.isfinite(r.energy_per_atom)]
    matched = {(t, k): r.outcome == MATCH for (t, k), r in zip(index, match_pairs(
        [(truths[t], relaxed_crystal(saved[t][k])) for t, k in index], args.timeout, None, match_pair))}

    rows = []
    for n in args.chains:
        hits = {which: ([], [], []) for which in CHOICES}  # top-1, any, (relaxations, seconds)
        learned, any_raw = [], []
        for t, name in enumerate(material_ids):
            crystal = Crystal(samples.species[t, :n], samples.positions[t, :n], samples.lattice[t, :n])
            candidates = with_matches(from_samples(str(name), crystal, energies[t, :n], np.ones(n, int)),
                                      [(i, j) for i, j in results["matches"][t] if j < n])
            top = int(ranked(candidates, "energy")[0])
            learned.append(bool(candidates.valid[top] and raw[t, top] == MATCH))
            any_raw.append(bool((raw[t, :n] == MATCH).any()))
            for which in CHOICES:
                picked = chosen(candidates, which)
                if not picked or any(not saved[t] or saved[t][k] is None for k in picked):
                    continue
                relaxed = tuple(saved[t][k] if k in picked else None for k in range(n))
                first = int(ranked(candidates._replace(relaxed=relaxed), "energy")[0])
                top1, anyone, cost = hits[which]
                top1.append(matched.get((t, first), False))
                anyone.append(any(matched.get((t, k), False) for k in picked))
                cost.append((len(picked), sum(saved[t][k].seconds for k in picked)))
        rows.append({"chains": n, "choice": "learned energy (raw)", "crystals": len(learned),
                     "top1": rate(learned), "any": rate(any_raw)})
        for which, (top1, anyone, cost) in hits.items():
            rows.append({"chains": n, "choice": which, "crystals": len(top1), "top1": rate(top1),
                         "any": rate(anyone),
                         "relaxations": float(np.mean([c[0] for c in cost])) if cost else None,
                         "seconds": float(np.mean([c[1] for c in cost])) if cost else None})
    print("| chains | ranked by | crystals | top-1 (%) [95%] | any (%) [95%] | relaxations per crystal | "
          "s of relaxation per crystal |\n|---|---|---|---|---|---|---|")
    for r in rows:
        relaxations = "" if r.get("relaxations") is None else f"{r['relaxations']:.1f}"
        seconds = "" if r.get("seconds") is None else f"{r['seconds']:.0f}"
        ranking = r["choice"] if r["choice"].endswith("(raw)") else f"{potential}, {r['choice']}"
        print(f"| {r['chains']} | {ranking} | {r['crystals']} | {r['top1']} | {r['any']} | {relaxations} | {seconds} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
