"""Table 1 of several evaluations of disjoint crystals, pooled: the match rates of all their crystals.

    python experiments/run.py evaluate --checkpoint pretrained/mp20 --limit 100 --relax --out runs/a
    python experiments/run.py evaluate --checkpoint pretrained/mp20 --limit 200 --skip 100 --relax --out runs/b
    python experiments/pooled.py --eval runs/a runs/b

The two evaluations above test the 200 crystals of `--limit 200` (the second
one the crystals the first leaves out), so their pooled rates are those of
the 200. Each rate is a count of crystals; the pooled one is the sum of the
counts over the sum of the crystals, with its Wilson 95% interval, and the
pooled RMSE the mean over all matched crystals. Rows: any of the K raw
samples, the top-ranked raw sample by the learned energy, and with `--relax`
any relaxed sample, the top-ranked by the potential and by the learned
energy, and with `--refine` the top-ranked after the second potential.
Prints a Markdown table with each evaluation's rate beside the pooled one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from csp_jax.candidates.ranking import wilson_interval
from csp_jax.config import EvalConfig
from csp_jax.evaluation.samples import load_samples


def figures(results: dict) -> dict[str, tuple[float, float | None]]:
    """{row: (match rate %, RMSE or None)} of one evaluation's `<split>_metrics.json`."""
    rows = {f"any of {results['samples_per_crystal']} raw samples": (results["match_rate"], results["rmse"]),
            "top-ranked raw sample by the learned energy": (results["top1"]["energy"]["match_rate"],
                                                            results["top1"]["energy"]["rmse"])}
    relaxed = results.get("relaxed")
    if relaxed:
        rows["any relaxed sample"] = (relaxed["match_rate"], relaxed["rmse"])
        rows[f"top-ranked by {relaxed['potential']}"] = (relaxed["top1"]["potential"]["match_rate"],
                                                        relaxed["top1"]["potential"]["rmse"])
        rows["relaxed, top-ranked by the learned energy"] = (relaxed["top1"]["energy"]["match_rate"],
                                                            relaxed["top1"]["energy"]["rmse"])
        if "refined" in relaxed:
            again = relaxed["refined"]
            rows[f"top-ranked by {again['potential']} after {relaxed['potential']}"] = (
                again["top1"]["match_rate"], again["top1"]["rmse"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval", required=True, type=Path, nargs="+", help="output folders of evaluate")
    parser.add_argument("--split", default=EvalConfig.split, help=f"the evaluated split (default {EvalConfig.split})")
    args = parser.parse_args()
    runs = [json.loads((folder / f"{args.split}_metrics.json").read_text()) for folder in args.eval]
    ids = [set(map(str, load_samples(folder / f"{args.split}_samples.npz")[2])) for folder in args.eval]
    if any(a & b for i, a in enumerate(ids) for b in ids[i + 1:]):
        raise SystemExit("the evaluations share crystals: pool only disjoint ones")
    sizes = [r["num_crystals"] for r in runs]
    tables = [figures(r) for r in runs]
    names = [name for name in tables[0] if all(name in t for t in tables)]
    print(f"| | {' | '.join(f'{f} ({n})' for f, n in zip(args.eval, sizes))} | pooled ({sum(sizes)}) |")
    print("|---" * (len(runs) + 2) + "|")
    for name in names:
        counts = [round(t[name][0] * n / 100) for t, n in zip(tables, sizes)]
        matched = sum(counts)
        rmse = (sum(c * t[name][1] for c, t in zip(counts, tables) if c) / matched) if matched else None
        low, high = wilson_interval(matched, sum(sizes))
        cells = [f"{t[name][0]:.2f}" for t in tables]
        pooled = f"**{100 * matched / sum(sizes):.2f}** [{low:.1f}, {high:.1f}]" + (f", {rmse:.4f}" if rmse else "")
        print(f"| {name} | {' | '.join(cells)} | {pooled} |")


if __name__ == "__main__":
    main()
