"""ContinuouSP in JAX: train, evaluate, predict, and the displacement figure.

    python experiments/run.py --config perov5 [--out DIR] [--resume] [--set sampler.num_steps=200]
    python experiments/run.py evaluate --checkpoint DIR [--limit 100]
    python experiments/run.py predict --checkpoint DIR --formula SrTiO3 --num-samples 20 --out DIR
    python experiments/run.py displacement --checkpoint DIR

The logic lives in the `csp_jax` library; this file only parses arguments.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from csp_jax.config import available_configs, get_config, override  # noqa: E402

SUBCOMMANDS = ("train", "evaluate", "predict", "displacement")


def add_train(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (the default sub-command)")
    p.add_argument("--config", required=True, help=f"one of: {', '.join(available_configs())}")
    p.add_argument("--out", help="run directory (default runs/<config>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. sampler.num_steps=200 (repeatable)")
    p.add_argument("--data-dir", help="dataset folder (default: $CSP_JAX_DATA)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (checkpointed)")
    p.set_defaults(func=run_train)


def build_config(args):
    config = get_config(args.config)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        config = override(config, key, value)
    return config


def run_train(args) -> None:
    from csp_jax.training_loop import train

    config = build_config(args)
    out = Path(args.out or f"runs/{config.name}")
    if args.resume and not out.is_dir():
        raise FileNotFoundError(f"--resume: run directory {out} does not exist")
    train(config, out, args.data_dir, resume=args.resume, max_steps=args.max_steps)
    print(f"done: checkpoints, metrics.jsonl and training_curve.png in {out}")


def parser() -> argparse.ArgumentParser:
    from commands import add_displacement, add_evaluate, add_predict

    p = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n\n")[0])
    subparsers = p.add_subparsers(dest="command")
    add_train(subparsers)
    add_evaluate(subparsers)
    add_predict(subparsers)
    add_displacement(subparsers)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["train"] + argv  # `run.py --config perov5` trains
    args = parser().parse_args(argv)
    if args.command is None:
        parser().print_help()
        return 2
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the newest checkpoint is kept; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
