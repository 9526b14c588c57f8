"""How many test crystals share their composition with another structure of the dataset,
and the top-1 ceiling that sets for a model given only the composition.

    python experiments/polymorphs.py --dataset perov_5
    python experiments/polymorphs.py --dataset mpts_52 --limit 200

For each test crystal (the first `--limit` of the evaluation's fixed shuffle,
or all), the distinct structures of its reduced composition in every split of
the dataset at hand (`csp_jax.evaluation.polymorphs.other_structures`, at the
evaluation's matcher tolerances). Prints the count of test crystals with
another structure, the distinct structures per composition and the top-1
ceiling (the mean of 1/m), and writes them as JSON with `--out`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from csp_jax.config import EvalConfig
from csp_jax.data.datasets import load_split, splits_at_hand, subset_indices
from csp_jax.data.sources import known_splits
from csp_jax.evaluation.polymorphs import other_structures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(known_splits()))
    parser.add_argument("--split", default=EvalConfig.split, help=f"the tested split (default: {EvalConfig.split})")
    parser.add_argument("--limit", type=int, default=EvalConfig.limit, help="first N of the fixed shuffle (0: all)")
    parser.add_argument("--data-dir", help="dataset folder (default: $CSP_JAX_DATA)")
    parser.add_argument("--timeout", type=float, default=EvalConfig.match_timeout,
                        help=f"seconds per matched pair (default {EvalConfig.match_timeout})")
    parser.add_argument("--out", help="write the figures to this JSON file")
    args = parser.parse_args()

    start = time.perf_counter()
    references, missing = splits_at_hand(args.dataset, args.data_dir)
    test = load_split(args.dataset, args.split, args.data_dir)
    test = test.subset(subset_indices(len(test), args.limit))
    others = other_structures(test, references, args.timeout)
    count = np.array([1 + len(o) for o in others])
    record = {"dataset": args.dataset, "split": args.split, "num_crystals": len(test),
              "references": [s for s in known_splits()[args.dataset] if s not in missing],
              "crystals_with_other_structures": int(np.sum(count > 1)),
              "structures_per_composition": float(count.mean()),
              "top1_ceiling": 100.0 * float(np.mean(1.0 / count))}
    print(f"{args.dataset}/{args.split}, {len(test)} crystals, against "
          f"{', '.join(record['references'])}" + (f" ({', '.join(missing)} not at hand)" if missing else "")
          + f": {record['crystals_with_other_structures']} have another structure of their composition, "
          f"{record['structures_per_composition']:.2f} structures per composition, top-1 ceiling "
          f"{record['top1_ceiling']:.2f}% ({time.perf_counter() - start:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
