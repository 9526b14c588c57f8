"""Checkpoints of a training run (orbax): state arrays plus JSON metadata.

A run directory holds `config.json` and `checkpoints/<step>/` with two items:
`state` (the `TrainState` pytree: step, variables, optimizer state, key) and
`meta` (JSON: neighbour capacities in use and loop counters). The newest
checkpoint is what `--resume` and `load_model` read. An exported model
(`csp_jax.pretrained.export`) is `config.json` plus `variables.npz`: the
variables alone, no optimizer state.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from csp_jax.config import Config
from csp_jax.energy.continuousp import EnergyModel
from csp_jax.training.step import init_train_state

CONFIG_FILE = "config.json"
VARIABLES_FILE = "variables.npz"  # an exported model: variables only


def write_config(run_dir: Path, config: Config) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(config.to_json())


def read_config(run_dir: Path) -> Config:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a csp_jax run directory")
    return Config.from_dict(json.loads(path.read_text()))


def manager(run_dir: Path, max_to_keep: int | None = 3) -> ocp.CheckpointManager:
    """The run's checkpoint manager; `max_to_keep` None keeps every checkpoint."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(Path(run_dir).absolute() / "checkpoints", options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
    """Save `state` (a pytree of arrays) and `meta` (JSON-able) at `step`, and wait."""
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, template, step: int | None = None):
    """(state, meta) of `step` (default: the newest); `template` gives the pytree structure."""
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out.state, out.meta


def save_variables(path: Path, variables: dict) -> None:
    """The model's variables alone (no optimizer state) as one `.npz`, keys like `params/conv_0/...`."""
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    np.savez(path, **{key: np.asarray(value) for key, value in flat.items()})


def load_variables(path: Path, template: dict) -> dict:
    """Variables saved by `save_variables`, checked against `template`'s structure and shapes."""
    with np.load(path) as saved:
        flat = {key: saved[key] for key in saved.files}
    expected = traverse_util.flatten_dict(template, sep="/")
    if set(flat) != set(expected) or any(flat[k].shape != np.shape(v) for k, v in expected.items()):
        raise ValueError(f"{path} does not hold the variables of this config's model "
                         f"(wrong model size or format)")
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")


def load_model(run_dir, step: int | None = None) -> tuple[Config, EnergyModel, dict]:
    """(config, model, variables) of a run directory's checkpoint at `step` (default the
    newest), or of an exported model (a folder with `config.json` and `VARIABLES_FILE`,
    e.g. `csp_jax/pretrained/perov5`)."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    template = init_train_state(config, jax.random.PRNGKey(0))
    if (run_dir / VARIABLES_FILE).is_file():
        variables = load_variables(run_dir / VARIABLES_FILE, template.variables)
    else:
        variables = restore(manager(run_dir), template, step)[0].variables
    return config, EnergyModel.from_config(config.model), variables
