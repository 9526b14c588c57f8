"""The `csp-jax` command: train, evaluate, predict, displacement, bench.

    csp-jax train --config perov5 [--out DIR] [--resume] [--set sampler.num_steps=200]
    csp-jax evaluate --checkpoint DIR [--limit 200] [--resume]
    csp-jax predict --checkpoint DIR --formula SrTiO3 --num-samples 20
    csp-jax displacement --checkpoint DIR
    csp-jax bench [--whole-chain]

`python experiments/run.py ...` is the same command (`--config X` alone
trains). Each sub-command parses its options and calls library functions;
options left unset take the run's config values. Errors a user can fix (a
missing file, a bad value) end with one `error:` line and exit status 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

from csp_jax.errors import one_line
from csp_jax.config import CHOICES, available_configs, check_range, get_config, override

SUBCOMMANDS = ("train", "evaluate", "predict", "displacement", "bench")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors raise ValueError (one `error:` line, exit status 1)."""

    def error(self, message):
        raise ValueError(f"{self.prog}: {message}")


def _number(kind: type, low, low_ok: bool):
    """An argparse type: finite `kind` values of at least (or above) `low` (`config.check_range`)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        try:
            check_range("it", value, low, low_ok=low_ok)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix("bad value for it: ")) from None
        return value
    parse.__name__ = kind.__name__
    return parse


POSITIVE_INT = _number(int, 1, True)
NON_NEGATIVE_INT = _number(int, 0, True)
POSITIVE_FLOAT = _number(float, 0.0, False)


def FORMULA_UNITS(text: str):
    """An argparse type: a positive number of formula units, or "auto"."""
    return "auto" if text == "auto" else POSITIVE_INT(text)


def add_train(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (the default sub-command)")
    p.add_argument("--config", required=True, help=f"one of: {', '.join(available_configs())}")
    p.add_argument("--out", help="run directory (default runs/<config>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. sampler.num_steps=200 (repeatable)")
    p.add_argument("--data-dir", help="dataset folder (default: $CSP_JAX_DATA)")
    p.add_argument("--max-steps", type=POSITIVE_INT, help="stop after this many steps (checkpointed)")
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
    from csp_jax.training.loop import train

    config = build_config(args)
    out = Path(args.out or f"runs/{config.name}")
    if args.resume and not out.is_dir():
        raise FileNotFoundError(f"--resume: run directory {out} does not exist")
    train(config, out, args.data_dir, resume=args.resume, max_steps=args.max_steps)
    print(f"done: checkpoints, metrics.jsonl and training_curve.png in {out}")


def _add_checkpoint(p) -> None:
    p.add_argument("--checkpoint", required=True, metavar="DIR|NAME",
                   help="training run directory (its newest checkpoint is used), or the name of a "
                        "shipped model (perov5, mp20)")


def _model_dir(checkpoint: str) -> Path:
    """The folder `--checkpoint` names: a directory, else a shipped model of that name."""
    from csp_jax import pretrained

    return pretrained.resolve(checkpoint)


def _out_dir(args, name: str) -> Path:
    """--out, else `<run dir>/<name>`; for a shipped model given by name, `<name>/<model>` here."""
    if args.out:
        return Path(args.out)
    if _model_dir(args.checkpoint) != Path(args.checkpoint):
        return Path(name) / args.checkpoint
    return Path(args.checkpoint) / name


def _add_data_dir(p) -> None:
    p.add_argument("--data-dir", help="dataset folder (default: $CSP_JAX_DATA)")


def _load_split(config, split: str, data_dir):
    from csp_jax.data.datasets import load_split

    return load_split(config.data.dataset, split, data_dir)


def _key(seed: int | None):
    """The sampling key of `--seed` (None: the library's default, from the config)."""
    return None if seed is None else jax.random.PRNGKey(seed)


def add_evaluate(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="Table 1: sample test crystals, match, report")
    _add_checkpoint(p)
    p.add_argument("--split", help="split to evaluate (default: config eval.split, 'test')")
    p.add_argument("--num-samples", type=POSITIVE_INT, help="chains per crystal (default: config, 20)")
    p.add_argument("--limit", type=NON_NEGATIVE_INT,
                   help="evaluate the first N crystals of a fixed shuffle (default: config, 0 = all)")
    p.add_argument("--batch-size", type=POSITIVE_INT, help="chains per jitted batch (default: config)")
    p.add_argument("--dataset", help="the dataset whose split is tested (default: the model's, config "
                                     "data.dataset), e.g. mpts_52 for the mp20 model")
    p.add_argument("--max-cell-atoms", type=POSITIVE_INT,
                   help="test only the crystals of at most this many atoms")
    p.add_argument("--exclude", action="append", default=[], metavar="DATASET/SPLIT",
                   help="leave out the test crystals whose material_id occurs in this split (e.g. "
                        "mp_20_biternary/val, what the mp20 model trained on); repeatable")
    p.add_argument("--out", help="output folder (default: <checkpoint>/eval; "
                                           "eval/<name> here for a shipped model's name)")
    _add_data_dir(p)
    p.add_argument("--workers", type=POSITIVE_INT, help="matching processes (default: all cores)")
    p.add_argument("--timeout", type=POSITIVE_FLOAT, help="seconds per matched pair (default: config)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, help="sampling seed (default: config eval.seed, 0)")
    p.add_argument("--recompute", action="store_true",
                   help="score the stored <out>/<split>_samples.npz again, without sampling")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted evaluation from the samples saved in <out>/<split>_parts")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> None:
    from csp_jax.training.checkpoint import load_model, read_config
    from csp_jax.evaluation.evaluate import evaluate, recompute

    out = _out_dir(args, "eval")
    if args.recompute:
        config = read_config(_model_dir(args.checkpoint))
        split = args.split or config.eval.split
        samples_path = out / f"{split}_samples.npz"
        if not samples_path.is_file():
            raise FileNotFoundError(f"--recompute: {samples_path} not found; run evaluate first")
        dataset = args.dataset or config.data.dataset
        test, selection = _test_crystals(dataset, split, args)
        recompute(samples_path, test, dataset, timeout_s=args.timeout or config.eval.match_timeout,
                  workers=args.workers, training=_training_crystals(config, args.data_dir),
                  references=_reference_crystals(dataset, args.data_dir), selection=selection)
        return
    config, energy, variables = load_model(_model_dir(args.checkpoint))
    split = args.split or config.eval.split
    dataset = args.dataset or config.data.dataset
    test, selection = _test_crystals(dataset, split, args)
    evaluate(config, energy, variables, test, out,
             split=split, num_samples=args.num_samples, limit=args.limit,
             batch_size=args.batch_size, key=_key(args.seed),
             timeout_s=args.timeout, workers=args.workers, resume=args.resume,
             training=_training_crystals(config, args.data_dir),
             references=_reference_crystals(dataset, args.data_dir), dataset_name=dataset,
             selection=selection)


def _test_crystals(dataset: str, split: str, args):
    """(the crystals `evaluate` draws from, a sentence saying how they were selected, or "")."""
    from csp_jax.data.datasets import load_split

    crystals = load_split(dataset, split, args.data_dir)
    if not args.max_cell_atoms and not args.exclude:
        return crystals, ""
    excluded = set()
    for name in args.exclude:
        other, _, other_split = name.partition("/")
        if not other_split:
            raise ValueError(f"--exclude {name!r}: expected DATASET/SPLIT, e.g. mp_20_biternary/val")
        excluded.update(load_split(other, other_split, args.data_dir).material_ids.astype(str).tolist())
    selected = crystals.select(most_atoms=args.max_cell_atoms, exclude_ids=excluded)
    rules = ([f"of at most {args.max_cell_atoms} atoms"] if args.max_cell_atoms else []) + (
        [f"whose material_id is not in {' or '.join(args.exclude)}"] if args.exclude else [])
    selection = (f"the {len(selected)} of the {len(crystals)} {dataset}/{split} crystals "
                 + " and ".join(rules))
    print(f"testing {selection}")
    return selected, selection


def _reference_crystals(dataset: str, data_dir) -> list:
    """Every split of the tested dataset at hand (for the report's other structures of a
    test crystal's composition); a note names the splits that are not."""
    from csp_jax.data.datasets import splits_at_hand

    found, missing = splits_at_hand(dataset, data_dir)
    if missing:
        print(f"note: the report's other structures per composition leave out {dataset}/"
              f"{', '.join(missing)} (not at hand)")
    return found


def _training_crystals(config, data_dir):
    """The config's training crystals (for the seen / unseen split of the report), or None
    with a note when the training split is not at hand."""
    from csp_jax.data.datasets import training_splits

    try:
        return training_splits(config.data, data_dir)[0]
    except (FileNotFoundError, OSError, ValueError) as error:
        print(f"note: no seen / unseen split of the report ({one_line(error)})")
        return None


def add_predict(subparsers) -> None:
    p = subparsers.add_parser("predict", help="predict structures for formulas, ranked CIFs")
    _add_checkpoint(p)
    p.add_argument("--formula", nargs="+", required=True, help="one or more formulas, e.g. SrTiO3 Li2O")
    p.add_argument("--num-samples", type=POSITIVE_INT, help="chains per formula (default: config eval.num_samples)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--num-atoms", type=POSITIVE_INT,
                      help="atoms per cell, a multiple of the reduced formula's (default: the reduced formula)")
    size.add_argument("--formula-units", type=FORMULA_UNITS, metavar="Z|auto",
                      help="reduced formula units per cell (default 1); auto: Z = 1..4 within the "
                           "model's cell limit, ranked together")
    p.add_argument("--ranking", choices=CHOICES["eval.ranking"],
                   help="order of the samples: energy; consensus (the largest group of samples that "
                        "match each other, then energy); first (chain order) (default: config eval.ranking)")
    p.add_argument("--batch-size", type=POSITIVE_INT, help="chains per jitted batch (default: config)")
    p.add_argument("--out", help="output folder (default: <checkpoint>/predictions; "
                                           "predictions/<name> here for a shipped model's name)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, help="sampling seed (default: config eval.seed, 0)")
    p.set_defaults(func=run_predict)


def run_predict(args) -> None:
    from csp_jax.training.checkpoint import load_model
    from csp_jax.predict import predict

    config, energy, variables = load_model(_model_dir(args.checkpoint))
    predict(config, energy, variables, args.formula, _out_dir(args, "predictions"),
            num_samples=args.num_samples, num_atoms=args.num_atoms, formula_units=args.formula_units,
            key=_key(args.seed), batch_size=args.batch_size, ranking=args.ranking)


def add_displacement(subparsers) -> None:
    p = subparsers.add_parser("displacement", help="Figure 2: energy vs displacement of one atom")
    _add_checkpoint(p)
    p.add_argument("--sigma", type=POSITIVE_FLOAT, help="noise per Cartesian component, A (default: config, 0.1)")
    p.add_argument("--num-crystals", type=POSITIVE_INT, help="random test crystals (default: config, 5)")
    p.add_argument("--num-draws", type=POSITIVE_INT, help="noise draws per crystal (default: config, 1000)")
    p.add_argument("--split", help="split to draw crystals from (default: config, test)")
    p.add_argument("--out", help="output folder (default: <checkpoint>/displacement; "
                                           "displacement/<name> here for a shipped model's name)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, help="seed for crystals, atoms and noise (default: config, 0)")
    _add_data_dir(p)
    p.set_defaults(func=run_displacement)


def run_displacement(args) -> None:
    from csp_jax.training.checkpoint import load_model
    from csp_jax.evaluation.displacement import displacement_experiment

    config, energy, variables = load_model(_model_dir(args.checkpoint))
    split = args.split or config.displacement.split
    displacement_experiment(config, energy, variables, _load_split(config, split, args.data_dir),
                            _out_dir(args, "displacement"),
                            sigma=args.sigma, num_crystals=args.num_crystals,
                            num_draws=args.num_draws, seed=args.seed)


def add_bench(subparsers) -> None:
    p = subparsers.add_parser("bench", help="speed of the MALA step against the authors' code",
                              add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of experiments/bench.py")
    p.set_defaults(func=lambda args: __import__("csp_jax.benchmark").benchmark.main(args.bench_args))


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="csp-jax", description=__doc__.split("\n\n")[0])
    subparsers = p.add_subparsers(dest="command")
    for add in (add_train, add_evaluate, add_predict, add_displacement, add_bench):
        add(subparsers)
    return p


def main(argv=None) -> int:
    """Run one sub-command; `--config X` with no sub-command trains. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["train"] + argv
    try:
        args = parser().parse_args(argv)
        if args.command is None:
            parser().print_help()
            return 2
        from csp_jax.sampling.driver import enable_compilation_cache

        enable_compilation_cache()
        args.func(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the newest checkpoint is kept; continue with --resume", file=sys.stderr)
        return 130
    return 0
