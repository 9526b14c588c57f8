"""The `csp-jax` command: train, evaluate, predict, displacement, bench.

    csp-jax train --config perov5 [--out DIR] [--resume] [--set sampler.num_steps=200]
    csp-jax evaluate --checkpoint DIR [--limit 200] [--resume] [--relax]
    csp-jax predict --checkpoint DIR --formula SrTiO3 --num-samples 20 [--relax chgnet]
    csp-jax displacement --checkpoint DIR
    csp-jax bench [--whole-chain]

`python experiments/run.py ...` is the same command (`--config X` alone
trains). Each sub-command builds one config (the named config, or the
model's own) and calls one library function with it. Every sub-command
takes `--set section.key=value` (repeatable); its other value options are
shortcuts for config keys (`--limit 200` is `--set eval.limit=200`), their
help taken from the config. Errors a user can fix (a missing file, a bad
value) end with one `error:` line and exit status 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from csp_jax.errors import one_line
from csp_jax.config import CHOICES, Config, available_configs, check_range, get_config, override, with_sets

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


def FORMULA_UNITS(text: str):
    """An argparse type: a positive number of formula units, or "auto"."""
    return "auto" if text == "auto" else POSITIVE_INT(text)


def _add_set(p) -> None:
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="set a config value, e.g. sampler.num_steps=200 (repeatable; after the "
                        "shortcuts below)")


def _shortcut(p, flag: str, key: str, what: str, metavar: str | None = None) -> None:
    """`flag VALUE`, the same as `--set key=VALUE`; its help names the key and its default."""
    section, field = key.split(".")
    default = getattr(getattr(Config(), section), field)
    choices = f"; one of {', '.join(CHOICES[key])}" if key in CHOICES else ""
    p.add_argument(flag, dest=f"set:{key}", metavar=metavar or field.upper(),
                   help=f"{what} (= --set {key}=...{choices}; default: the config's, {default!r} "
                        f"unless the model's config says otherwise)")


def configured(config: Config, args) -> Config:
    """`config` with the shortcuts given on the command line, then every `--set`, applied; the
    energy and the sampler it names are checked before anything runs."""
    from csp_jax.energy.registry import build_energy
    from csp_jax.sampling.kernel import kernel_from

    for name, value in vars(args).items():
        if name.startswith("set:") and value is not None:
            config = override(config, name.removeprefix("set:"), value)
    if getattr(args, "relax", None) is not None:  # --relax [POTENTIAL]: two keys at once
        config = with_sets(config, ["relax.enabled=true", f"relax.potential={args.relax}"])
    config = with_sets(config, args.set)
    if config.relax.refine and not config.relax.enabled:
        raise ValueError("relax.refine (--refine) relaxes again what --relax relaxed: give --relax too")
    build_energy(config.model)
    kernel_from(config.sampler.kernel)
    return config


def add_train(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (the default sub-command)")
    p.add_argument("--config", required=True, help=f"one of: {', '.join(available_configs())}")
    p.add_argument("--out", help="run directory (default runs/<config>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    _add_set(p)
    _add_data_dir(p)
    p.add_argument("--max-steps", type=POSITIVE_INT, help="stop after this many steps (checkpointed)")
    _add_distributed(p, "each runs its share of every batch's chains, the update step runs over the "
                        "devices of all, the first writes the metrics")
    p.set_defaults(func=run_train)


def run_train(args) -> None:
    from csp_jax.distributed import initialize, is_main
    from csp_jax.training.loop import train

    initialize(args.distributed)
    config = configured(get_config(args.config), args)
    out = Path(args.out or f"runs/{config.name}")
    if args.resume and not out.is_dir():
        raise FileNotFoundError(f"--resume: run directory {out} does not exist")
    train(config, out, args.data_dir, resume=args.resume, max_steps=args.max_steps)
    if is_main():
        print(f"done: checkpoints, metrics.jsonl and training_curve.png in {out}")


def _add_distributed(p, what: str) -> None:
    p.add_argument("--distributed", action="store_true",
                   help=f"one of several processes (jax.distributed; automatic under SLURM or Open MPI): {what}")


def _add_checkpoint(p) -> None:
    from csp_jax import models

    p.add_argument("--checkpoint", required=True, metavar="DIR|NAME",
                   help="training run directory (its newest checkpoint is used), a model folder, or "
                        f"the name of a shipped model ({', '.join(models.available())})")


def _load(args):
    """The model `--checkpoint` names, its config with the command line's values applied."""
    from csp_jax import models

    model = models.load(args.checkpoint)
    return model._replace(config=configured(model.config, args))


def _out_dir(args, name: str) -> Path:
    """--out, else `<run dir>/<name>`; for a shipped model given by name, `<name>/<model>` here."""
    from csp_jax import models

    if args.out:
        return Path(args.out)
    if models.resolve(args.checkpoint) != Path(args.checkpoint):
        return Path(name) / args.checkpoint
    return Path(args.checkpoint) / name


def _add_data_dir(p) -> None:
    p.add_argument("--data-dir", help="dataset folder (default: $CSP_JAX_DATA)")


def _add_relax(p) -> None:
    from csp_jax.candidates.relax import POTENTIALS
    from csp_jax.config import RelaxConfig

    p.add_argument("--relax", nargs="?", const=RelaxConfig.potential, metavar="POTENTIAL",
                   help="relax the candidates with a universal interatomic potential and rank them by its "
                        f"energy per atom (= --set relax.enabled=true --set relax.potential=...): one of "
                        f"{', '.join(POTENTIALS)} (default {RelaxConfig.potential}), or an import path "
                        "package.module:factory of an ASE calculator")
    _shortcut(p, "--refine", "relax.refine", "relax the best relaxed candidates (within "
                                             "relax.refine_window meV/atom of the lowest, one per group) "
                                             "again with a second potential and rank them first, by its "
                                             "energy per atom: a name or import path as for --relax",
              "POTENTIAL")


def add_evaluate(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="Table 1: sample test crystals, match, report")
    _add_checkpoint(p)
    _shortcut(p, "--dataset", "eval.dataset", "the dataset whose split is tested, e.g. mpts_52 for "
                                              "the mp20 model (empty: the model's)")
    _shortcut(p, "--split", "eval.split", "split to evaluate")
    _shortcut(p, "--num-samples", "eval.num_samples", "chains per crystal", "K")
    _shortcut(p, "--limit", "eval.limit", "evaluate the first N crystals of a fixed shuffle (0: all)", "N")
    _shortcut(p, "--skip", "eval.skip", "leave out the first N crystals of that shuffle (with --limit L: "
                                        "crystals N+1 to L)", "N")
    _shortcut(p, "--batch-size", "eval.batch_size", "chains per jitted batch", "B")
    _shortcut(p, "--max-cell-atoms", "eval.max_cell_atoms", "test only the crystals of at most this "
                                                            "many atoms (0: all)", "N")
    _shortcut(p, "--exclude", "eval.exclude", "leave out the test crystals whose material_id occurs in "
                                              "these splits, e.g. mp_20_biternary/val (comma-separated)",
              "DATASET/SPLIT")
    _shortcut(p, "--timeout", "eval.match_timeout", "seconds per matched pair", "SECONDS")
    _shortcut(p, "--seed", "eval.seed", "sampling seed")
    _add_relax(p)
    _add_set(p)
    p.add_argument("--out", help="output folder (default: <checkpoint>/eval; "
                                 "eval/<name> here for a shipped model's name)")
    _add_data_dir(p)
    p.add_argument("--workers", type=POSITIVE_INT, help="matching processes (default: all cores)")
    p.add_argument("--recompute", action="store_true",
                   help="score the stored <out>/<split>_samples.npz again, without sampling")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted evaluation from the samples saved in <out>/<split>_parts")
    _add_distributed(p, "each samples, matches and relaxes its share, the first writes the report")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> None:
    from csp_jax.evaluation.evaluate import evaluate, recompute
    from csp_jax.distributed import initialize
    from csp_jax.evaluation.selection import (reference_crystals, test_crystals, tested_dataset,
                                              training_crystals)

    initialize(args.distributed)
    config, energy, variables = _load(args)
    out = _out_dir(args, "eval")
    test, selection = test_crystals(config, args.data_dir)
    context = dict(workers=args.workers, training=training_crystals(config, args.data_dir),
                   references=reference_crystals(config, args.data_dir),
                   dataset_name=tested_dataset(config), selection=selection)
    if args.recompute:
        samples_path = out / f"{config.eval.split}_samples.npz"
        if not samples_path.is_file():
            raise FileNotFoundError(f"--recompute: {samples_path} not found; run evaluate first")
        recompute(samples_path, test, timeout_s=config.eval.match_timeout, **context)
        return
    evaluate(config, energy, variables, test, out, resume=args.resume, **context)


def add_predict(subparsers) -> None:
    p = subparsers.add_parser("predict", help="predict structures for formulas, ranked CIFs")
    _add_checkpoint(p)
    p.add_argument("--formula", nargs="+", required=True, help="one or more formulas, e.g. SrTiO3 Li2O")
    _shortcut(p, "--num-samples", "eval.num_samples", "chains per formula (and cell)", "K")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--num-atoms", type=POSITIVE_INT,
                      help="atoms per cell, a multiple of the reduced formula's (default: the reduced formula)")
    size.add_argument("--formula-units", type=FORMULA_UNITS, metavar="Z|auto",
                      help="reduced formula units per cell (default 1); auto: Z = 1..4 within the "
                           "model's cell limit, ranked together")
    _shortcut(p, "--ranking", "eval.ranking", "order of the samples without --relax: energy (the "
                                              "learned energy); consensus (the largest group of "
                                              "samples that match each other, then energy)")
    _shortcut(p, "--batch-size", "eval.batch_size", "chains per jitted batch", "B")
    _shortcut(p, "--seed", "eval.seed", "sampling seed")
    _add_relax(p)
    _add_set(p)
    p.add_argument("--out", help="output folder (default: <checkpoint>/predictions; "
                                 "predictions/<name> here for a shipped model's name)")
    p.set_defaults(func=run_predict)


def run_predict(args) -> None:
    from csp_jax.predict import predict

    config, energy, variables = _load(args)
    predict(config, energy, variables, args.formula, _out_dir(args, "predictions"),
            num_atoms=args.num_atoms, formula_units=args.formula_units)


def add_displacement(subparsers) -> None:
    p = subparsers.add_parser("displacement", help="Figure 2: energy vs displacement of one atom")
    _add_checkpoint(p)
    _shortcut(p, "--sigma", "displacement.sigma", "noise per Cartesian component, A", "A")
    _shortcut(p, "--num-crystals", "displacement.num_crystals", "random test crystals", "N")
    _shortcut(p, "--num-draws", "displacement.num_draws", "noise draws per crystal", "N")
    _shortcut(p, "--split", "displacement.split", "split to draw crystals from")
    _shortcut(p, "--seed", "displacement.seed", "seed for crystals, atoms and noise")
    _add_set(p)
    p.add_argument("--out", help="output folder (default: <checkpoint>/displacement; "
                                 "displacement/<name> here for a shipped model's name)")
    _add_data_dir(p)
    p.set_defaults(func=run_displacement)


def run_displacement(args) -> None:
    from csp_jax.data.datasets import load_split
    from csp_jax.evaluation.displacement import displacement_experiment

    config, energy, variables = _load(args)
    split = load_split(config.data.dataset, config.displacement.split, args.data_dir)
    displacement_experiment(config, energy, variables, split, _out_dir(args, "displacement"))


def add_bench(subparsers) -> None:
    p = subparsers.add_parser("bench", help="speed of the MALA step against the authors' code",
                              add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of experiments/bench.py")
    p.set_defaults(func=run_bench)


def run_bench(args) -> None:
    from csp_jax.benchmark import main as bench

    bench(args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args)


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
    if argv and argv[0] == "bench" and argv[1:2] not in (["-h"], ["--help"]):
        argv = ["bench", "--", *argv[1:]]  # its options are the benchmark's own, passed on whole
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
