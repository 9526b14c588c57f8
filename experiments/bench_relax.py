"""Relaxation time per candidate with CHGNet on this machine's CPU, by cell size.

    python experiments/bench_relax.py --data ../shared/data --num 4

Candidates are the first `num` test crystals of each size range (SIZES) with
every Cartesian coordinate moved by a Gaussian of 0.2 A and every entry of the
cell matrix scaled by up to 5%, relaxed at the config's fmax and max_steps
(`csp_jax.candidates.relax.relax`) once per torch thread count of --threads,
the counts alternating candidate by candidate so that other load on the
machine falls on each alike.
Also times `import chgnet` and building the calculator.

OpenBLAS's threads slow the cell filter's 3x3 matrix functions (scipy) down
by more than the potential costs once torch is loaded; compare a run with
`OPENBLAS_NUM_THREADS=1` set before Python starts (the table's header shows it).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

SIZES = ((2, 2), (4, 6), (8, 12), (16, 20))  # atoms per cell, inclusive


def perturbed(structure, rng, sigma: float = 0.2, strain: float = 0.05):
    """`structure` with Gaussian noise of `sigma` A on every coordinate and its cell matrix
    multiplied by 1 + U(-strain, strain) entry-wise, atoms kept at their moved Cartesian
    positions' fractional coordinates in the new cell."""
    from pymatgen.core import Structure

    lattice = structure.lattice.matrix * (1 + rng.uniform(-strain, strain, (3, 3)))
    moved = structure.cart_coords + sigma * rng.standard_normal((len(structure), 3))
    fractional = np.linalg.solve(structure.lattice.matrix.T, moved.T).T
    return Structure(lattice, structure.species, fractional)


def candidates(dataset, low: int, high: int, num: int, rng) -> list:
    """Perturbed copies of the first `num` crystals of `dataset` with low..high atoms."""
    sizes = dataset.num_atoms
    chosen = np.flatnonzero((sizes >= low) & (sizes <= high))[:num]
    return [perturbed(dataset.structure(int(i)), rng) for i in chosen]


def summary(results) -> dict:
    """Mean seconds per candidate and per FIRE step, mean steps, converged and failed counts."""
    steps = sum(r.steps for r in results)
    seconds = sum(r.seconds for r in results)
    return {"s/candidate": seconds / len(results), "s/step": seconds / max(steps, 1),
            "steps": steps / len(results), "converged": sum(r.converged for r in results),
            "failed": sum(bool(r.message) for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="data directory (default: $CSP_JAX_DATA)")
    parser.add_argument("--dataset", default="mp_20_biternary")
    parser.add_argument("--num", type=int, default=4, help="candidates per size range")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    load = os.getloadavg()[0]
    start = time.perf_counter()
    import chgnet.model.dynamics  # noqa: F401 -- timed: torch and CHGNet's modules
    import torch
    import_s = time.perf_counter() - start

    from csp_jax.candidates.relax import calculator, relax
    from csp_jax.config import RelaxConfig
    from csp_jax.data.datasets import load_split

    start = time.perf_counter()
    calc = calculator("chgnet")
    build_s = time.perf_counter() - start
    test = load_split(args.dataset, "test", args.data)
    rng = np.random.default_rng(args.seed)
    groups = {size: candidates(test, *size, args.num, rng) for size in SIZES}
    start = time.perf_counter()
    relax(groups[SIZES[0]][0], calc, fmax=RelaxConfig.fmax, max_steps=1)
    first_s = time.perf_counter() - start
    print(f"import chgnet: {import_s:.2f} s; build the calculator: {build_s:.2f} s; "
          f"first evaluation: {first_s:.2f} s; fmax {RelaxConfig.fmax} eV/A, "
          f"max_steps {RelaxConfig.max_steps}; {args.num} candidates per size; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}\n")
    print("| atoms | threads | candidates | s/candidate | s/step | steps | converged | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for (low, high), group in groups.items():
        results = {threads: [] for threads in args.threads}  # alternating per candidate
        for candidate in group:
            for threads, done in results.items():
                torch.set_num_threads(threads)
                done.append(relax(candidate, calc, fmax=RelaxConfig.fmax,
                                  max_steps=RelaxConfig.max_steps))
        for threads, done in results.items():
            row = summary(done)
            print(f"| {low}-{high} | {threads} | {len(done)} | {row['s/candidate']:.2f} | "
                  f"{row['s/step']:.3f} | {row['steps']:.0f} | {row['converged']}/{len(done)} | "
                  f"{row['failed']} |", flush=True)
    print(f"\nload average (1 min) before / after: {load:.1f} / {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
