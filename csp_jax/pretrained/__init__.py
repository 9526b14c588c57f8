"""Models trained with csp_jax and shipped with it (no download needed).

    from csp_jax import pretrained
    config, model, variables = pretrained.load("perov5")

Each model is a folder `csp_jax/pretrained/<name>/` holding `config.json`
(the training config), `variables.npz` (the energy's variables, no optimizer
state), `model.json` (how it was trained) and `training_curve.png`. The same folder
works wherever a run directory does: `csp-jax predict --checkpoint
csp_jax/pretrained/perov5` (or `pretrained/perov5` from the repository root).
`export` writes such a folder from a training run.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from csp_jax.training import checkpoint

DIR = Path(__file__).resolve().parent
INFO_FILE = "model.json"


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(p.name for p in DIR.iterdir() if (p / checkpoint.VARIABLES_FILE).is_file())


def path(name: str) -> Path:
    """The folder of shipped model `name`; ValueError naming the available ones otherwise."""
    if name not in available():
        raise ValueError(f"no pretrained model {name!r}; available: {', '.join(available())}")
    return DIR / name


def resolve(checkpoint: str) -> Path:
    """The folder a `--checkpoint` (or `train.init_from`) names: a directory, else a
    shipped model of that name (a missing directory is reported by the loader)."""
    given = Path(checkpoint)
    if given.is_dir() or len(given.parts) != 1 or checkpoint not in available():
        return given
    return path(checkpoint)


def load(name: str):
    """(config, model, variables) of shipped model `name` (e.g. "perov5")."""
    return checkpoint.load_model(path(name))


def info(name: str) -> dict:
    """What `model.json` records of shipped model `name` (training run, time, evaluation)."""
    return json.loads((path(name) / INFO_FILE).read_text())


def export(run_dir, out_dir, **record) -> Path:
    """Write the newest checkpoint of `run_dir` as a model folder (config, variables,
    model.json, and the run's training_curve.png).

    record: what to note in model.json beside the training step (e.g. the
    training wall time and the evaluation's numbers).
    """
    config, _, variables = checkpoint.load_model(run_dir)
    out_dir = Path(out_dir)
    checkpoint.write_config(out_dir, config)
    checkpoint.save_variables(out_dir / checkpoint.VARIABLES_FILE, variables)
    curve = Path(run_dir) / "training_curve.png"
    if curve.is_file():
        shutil.copy(curve, out_dir / curve.name)
    step = checkpoint.manager(Path(run_dir)).latest_step()
    (out_dir / INFO_FILE).write_text(json.dumps({"config": config.name, "step": step, **record}, indent=1) + "\n")
    return out_dir
