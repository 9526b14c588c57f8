"""Trained models: find one by name or folder, and load it. Every stage loads models here.

    from csp_jax import models
    config, energy, variables = models.load("mp20")     # a shipped model's name
    model = models.load("runs/perov5")                  # a run directory (newest checkpoint)

A model is a folder with `config.json` (its config: the energy it uses is
`model.energy`, the sampler `sampler.kernel`) and either orbax checkpoints (a
training run) or `variables.npz` (an exported model, e.g. the shipped ones in
`csp_jax/pretrained/<name>/`, which also hold `model.json`: how it was trained
and evaluated). `checkpoint` reads and writes that format.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import jax

from csp_jax.config import Config
from csp_jax.energy.base import Energy
from csp_jax.energy.registry import build_energy
from csp_jax.models import checkpoint

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "pretrained"  # the models shipped with csp_jax
INFO_FILE = "model.json"


class Model(NamedTuple):
    """A loaded model: its config, its energy (`build_energy(config.model)`) and the
    energy's variables (a pytree of arrays)."""

    config: Config
    energy: Energy
    variables: Any


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / checkpoint.VARIABLES_FILE).is_file())


def path(name: str) -> Path:
    """The folder of shipped model `name`; ValueError naming the available ones otherwise."""
    if name not in available():
        raise ValueError(f"no pretrained model {name!r}; available: {', '.join(available())}")
    return SHIPPED_DIR / name


def resolve(model: str | Path) -> Path:
    """The folder `model` names (`--checkpoint`, `train.init_from`): a directory, else a
    shipped model of that name (a missing directory is reported by the loader)."""
    given = Path(model)
    if given.is_dir() or len(given.parts) != 1 or str(model) not in available():
        return given
    return path(str(model))


def info(name: str) -> dict:
    """What `model.json` records of shipped model `name` (training run, time, evaluation)."""
    return json.loads((path(name) / INFO_FILE).read_text())


def load(model: str | Path, step: int | None = None) -> Model:
    """The model a name, a model folder or a run directory holds (`resolve`); a run
    directory's checkpoint at `step` (default the newest readable one)."""
    folder = resolve(model)
    config = checkpoint.read_config(folder)
    energy = build_energy(config.model)
    template = energy.init(jax.random.PRNGKey(0))
    if (folder / checkpoint.VARIABLES_FILE).is_file():
        variables = checkpoint.load_variables(folder / checkpoint.VARIABLES_FILE, template)
    else:
        variables = checkpoint.restore(checkpoint.manager(folder), template, step, only="variables")[0]
    return Model(config, energy, variables)
