"""Structure-matching throughput: pairs per second of the evaluation's matcher pool.

    python experiments/bench_matching.py --data ../shared/data --dataset perov_5 --num 200

Each of the first `num` test structures is matched against two samples: the
structure with Gaussian noise on every Cartesian coordinate (mostly matches)
and random fractional coordinates in the same lattice (mostly does not). The
time includes starting the worker processes (a few seconds).
"""
from __future__ import annotations

import argparse
import collections
import os
import time
from pathlib import Path

import numpy as np

from csp_jax.config import DataConfig
from csp_jax.data.datasets import load_split
from csp_jax.candidates.matching import OUTCOME_NAMES, match_pairs
from csp_jax.geometry.crystal import from_structure


def benchmark(structures, workers: int | None = None, sigma: float = 0.1, seed: int = 0,
              timeout_s: float = 60.0) -> dict:
    """{"pairs", "seconds", "pairs_per_s", "workers", outcome name: count} for `structures`."""
    rng = np.random.default_rng(seed)
    pairs = []
    for structure in structures:
        crystal = from_structure(structure, dtype=np.float64)
        noisy = crystal.positions + sigma * rng.standard_normal(crystal.positions.shape)
        random = rng.random(crystal.positions.shape) @ crystal.lattice
        pairs += [(structure, crystal.replace(positions=noisy)),
                  (structure, crystal.replace(positions=random))]
    start = time.perf_counter()
    results = match_pairs(pairs, timeout_s=timeout_s, workers=workers)
    seconds = time.perf_counter() - start
    counts = collections.Counter(OUTCOME_NAMES[r.outcome] for r in results)
    return {"pairs": len(pairs), "seconds": round(seconds, 2),
            "pairs_per_s": round(len(pairs) / seconds, 1),
            "workers": workers or os.cpu_count(), **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="data directory (default: $CSP_JAX_DATA)")
    parser.add_argument("--dataset", default=DataConfig.dataset)
    parser.add_argument("--num", type=int, default=200, help="test structures (2 pairs each)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    test = load_split(args.dataset, "test", args.data)
    print(benchmark([test.structure(i) for i in range(min(args.num, len(test)))], args.workers))


if __name__ == "__main__":
    main()
