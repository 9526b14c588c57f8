"""Match rate against training time: evaluate a run's checkpoints on a fixed subset.

    python experiments/learning_curve.py --run runs/perov5_cpu --set eval.limit=40 --set eval.num_samples=10

Every checkpoint kept in the run (or those given with --steps) is evaluated
with the run's evaluation config (changed with `--set section.key=value`: the
first `eval.limit` crystals of the fixed test shuffle, `eval.num_samples` chains
each); the training time of a checkpoint is the sum of the step
times in the run's metrics.jsonl up to it. Writes `<out>/learning_curve.csv`
and `<out>/learning_curve.png` (default out: <run>/learning_curve).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


from csp_jax.data.datasets import load_split
from csp_jax.evaluation.evaluate import evaluate
from csp_jax import models
from csp_jax.cli import configured
from csp_jax.models import checkpoint

FIELDS = ("step", "train_minutes", "match_rate", "rmse", "match_rate_k1", "rmse_k1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, type=Path, help="training run directory")
    p.add_argument("--steps", type=int, nargs="+", help="checkpoint steps (default: all kept)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="set a value of the run's config, e.g. eval.limit=40 (repeatable)")
    p.add_argument("--data-dir", help="dataset folder (default: $CSP_JAX_DATA)")
    p.add_argument("--out", type=Path, help="output folder (default <run>/learning_curve)")
    args = p.parse_args()
    out = args.out or args.run / "learning_curve"
    out.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
    seconds = {}
    total = 0.0
    for r in records:
        if r["kind"] == "train":
            total += r["seconds"]
            seconds[r["step"]] = total
    steps = args.steps or sorted(checkpoint.manager(args.run).all_steps())
    rows = []
    for step in steps:
        config, model, variables = models.load(args.run, step)
        dataset = load_split(config.data.dataset, config.eval.split, args.data_dir)
        config = configured(config, args)
        results = evaluate(config, model, variables, dataset, out / f"step_{step}", log=lambda _: None)
        rows.append({"step": step, "train_minutes": round(seconds[step] / 60, 1),
                     **{k: results[k] for k in FIELDS[2:]}})
        print(rows[-1], flush=True)
    with open(out / "learning_curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["train_minutes"] for r in rows], [r["match_rate"] for r in rows], "o-",
            label=f"{args.num_samples} samples")
    ax.plot([r["train_minutes"] for r in rows], [r["match_rate_k1"] for r in rows], "s--", label="first sample")
    ax.set(xlabel="training time (minutes, 2-core CPU)", ylabel="match rate (%)",
           title=f"{args.run.name}: {args.limit} test crystals", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=130)
    print(f"wrote {out / 'learning_curve.csv'}, {out / 'learning_curve.png'}")


if __name__ == "__main__":
    main()
