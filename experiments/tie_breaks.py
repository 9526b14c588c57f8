"""Would another rule pick the potential's first structure better? Top-1 of each, from one evaluation's relaxations.

    python experiments/tie_breaks.py --eval runs/eval_mp20_relax100

Reads the relaxations an `evaluate --relax` saved (`<split>_relaxed/`) and
their match to the truth (`<split>_metrics.json`), and picks each crystal's
first structure by these rules, beside the potential's lowest energy per atom
(what `predict --relax` ranks first):

- basin: among the structures within DELTA meV/atom of the lowest, the one
  that the most relaxed structures match (samples that relaxed into the same
  minimum), then the lowest energy;
- symmetry: among those, the one of the highest space-group number (spglib,
  symprec 0.1 A), then the lowest energy;
- converged first: the lowest energy among the relaxations that converged;
- physical first: the lowest energy among the relaxed structures that are
  physical crystals (`geometry.validity`: no atoms closer than 0.5 A).

Prints a Markdown table of each rule's top-1 (%) and the crystals it gains and
loses against the lowest energy.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from csp_jax.candidates.matching import MATCH
from csp_jax.candidates.ranking import wilson_interval
from csp_jax.candidates.record import from_samples, relaxed_crystal, relaxed_energies, with_relaxations
from csp_jax.config import EvalConfig
from csp_jax.evaluation.relaxed import saved_relaxations
from csp_jax.evaluation.samples import load_samples
from csp_jax.geometry.crystal import Crystal
from csp_jax.geometry.validity import valid_structure

DELTAS = (2, 5, 10, 20, 50)  # meV/atom


def space_group(structure) -> int:
    """spglib's space-group number at symprec 0.1 A (1 when it finds none)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_number()
    except Exception:  # noqa: BLE001 -- spglib gives up on some distorted cells
        return 1


def picks(energy, basin, group, converged, physical) -> dict[str, int]:
    """{rule: the sample it ranks first} of one crystal's relaxed samples (each argument [K];
    energy NaN where not relaxed or failed)."""
    finite = np.isfinite(energy)
    order = np.flatnonzero(finite)[np.argsort(energy[finite], kind="stable")]
    lowest = energy[order[0]]
    chosen = {"lowest energy": int(order[0]),
              "converged first": int(next((k for k in order if converged[k]), order[0])),
              "physical first": int(next((k for k in order if physical[k]), order[0]))}
    for delta in DELTAS:
        near = [int(k) for k in order if energy[k] <= lowest + delta / 1000]
        chosen[f"basin, {delta} meV/atom"] = min(near, key=lambda k: (-basin[k], energy[k]))
        chosen[f"symmetry, {delta} meV/atom"] = min(near, key=lambda k: (-group[k], energy[k]))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", required=True, type=Path, help="the output folder of evaluate --relax")
    parser.add_argument("--split", default=EvalConfig.split, help=f"the evaluated split (default {EvalConfig.split})")
    parser.add_argument("--timeout", type=float, default=EvalConfig.match_timeout, help="seconds per matched pair")
    args = parser.parse_args()

    samples, energies, material_ids = load_samples(args.eval / f"{args.split}_samples.npz")
    outcome = np.array(json.loads((args.eval / f"{args.split}_metrics.json").read_text())["relaxed"]["outcome"])
    hits: dict[str, list[bool]] = {}
    for t, name in enumerate(material_ids):
        saved = saved_relaxations(args.eval / f"{args.split}_relaxed" / f"{t:06d}.json")
        if not saved:
            continue
        crystal = Crystal(samples.species[t], samples.positions[t], samples.lattice[t])
        record = with_relaxations(from_samples(str(name), crystal, energies[t], np.ones(len(saved), int)),
                                  saved, args.timeout)
        energy = relaxed_energies(record)
        if not np.isfinite(energy).any():
            continue
        good = [r is not None and math.isfinite(r.energy_per_atom) for r in saved]
        basin = np.ones(len(saved), int)
        for i, j in record.relaxed_matches:
            basin[[i, j]] += 1
        group = [space_group(r.structure) if ok else 0 for r, ok in zip(saved, good)]
        converged = [ok and r.converged for r, ok in zip(saved, good)]
        physical = [ok and valid_structure(relaxed_crystal(r)) is not None for r, ok in zip(saved, good)]
        for rule, k in picks(energy, basin, group, converged, physical).items():
            hits.setdefault(rule, []).append(bool(outcome[t, k] == MATCH))
    base = np.array(hits["lowest energy"])
    print("| first by | crystals | top-1 (%) [95%] | gained | lost |\n|---|---|---|---|---|")
    for rule, found in hits.items():
        found = np.array(found)
        low, high = wilson_interval(int(found.sum()), len(material_ids))
        print(f"| {rule} | {len(material_ids)} | {100 * found.sum() / len(material_ids):.1f} [{low:.1f}, {high:.1f}] "
              f"| {int((found & ~base).sum())} | {int((~found & base).sum())} |")


if __name__ == "__main__":
    main()
