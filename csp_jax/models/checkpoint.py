"""A model on disk: a run directory's config and orbax checkpoints, or an exported model.

A run directory holds `config.json` and `checkpoints/<step>/` with two items:
`state` (the training state pytree: step, variables, optimizer state, key) and
`meta` (JSON: neighbour capacities in use and loop counters). The newest
checkpoint is what `--resume` and `csp_jax.models.load` read. An exported model
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

from csp_jax.config import Config, TrainConfig
from csp_jax.errors import one_line
from csp_jax.files import write_atomic

CONFIG_FILE = "config.json"
VARIABLES_FILE = "variables.npz"  # an exported model: variables only


def write_config(run_dir: Path, config: Config) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / CONFIG_FILE, config.to_json())


def read_config(run_dir: Path) -> Config:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a csp_jax run directory")
    try:
        return Config.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not a readable csp_jax config ({err})") from None


def manager(run_dir: Path, max_to_keep: int | None = TrainConfig.keep_checkpoints) -> ocp.CheckpointManager:
    """The run's checkpoint manager; `max_to_keep` None keeps every checkpoint."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(Path(run_dir).absolute() / "checkpoints", options=options)


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
    """Save `state` (a pytree of arrays) and `meta` (JSON-able) at `step`, and wait."""
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()


class OtherModelError(ValueError):
    """A checkpoint holds arrays of other shapes than the config's model (another model size)."""


def _path_name(path) -> str:
    """`variables/params/conv_0/W1/bias`: a pytree path by its keys, fields or indices."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _stored(mngr: ocp.CheckpointManager, step: int):
    """The metadata (shape, dtype) of every array of checkpoint `step`'s state, as its pytree."""
    from absl import logging as absl_logging

    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns about the step-level metadata
    try:
        stored = ocp.StandardCheckpointer().metadata(Path(mngr.directory) / str(step) / "state")
    finally:
        absl_logging.set_verbosity(level)
    return getattr(stored, "item_metadata", stored)


def _whole_here(tree):
    """Restore targets of the shapes and dtypes of `tree`'s arrays (a template, or a
    checkpoint's metadata), each whole on this process's first device, whatever devices (of
    however many processes) wrote them."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), tree)


def _check_shapes(stored, step: int, directory, template) -> None:
    """ValueError when checkpoint `step` (its metadata `stored`) holds arrays of other shapes
    than `template` (a model of another size): checked before any array is read."""
    stored = {_path_name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(stored)}
    for path, leaf in jax.tree_util.tree_leaves_with_path(template):
        name = _path_name(path)
        if name not in stored:
            raise OSError(f"checkpoint {step} is incomplete: {name} missing")
        if stored[name] != tuple(np.shape(leaf)):
            raise OtherModelError(f"checkpoint {step} in {directory} holds another model: "
                             f"{name} has shape {stored[name]}, this config's "
                             f"model needs {tuple(np.shape(leaf))}")


def restore(mngr: ocp.CheckpointManager, template, step: int | None = None, log=print,
            only: str | None = None):
    """(state, meta) of `step`, or of the newest checkpoint that reads back.

    `template` gives the pytree structure; with `only` (e.g. "variables"), it is
    the template of that one field of the state, and the state returned is that
    field alone (what loading a model needs). A newer checkpoint that cannot be
    read (half written when the process died, damaged) is skipped and named
    through `log`; a run with none readable raises ValueError, and so does a
    checkpoint of another model size. Every array is read whole into this
    process (whatever number of processes wrote it); under `jax.distributed`
    every process calls this alike.
    """
    steps = [step] if step is not None else sorted(mngr.all_steps(), reverse=True)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
    reasons = []
    for s in steps:
        try:
            stored = _stored(mngr, s)
            _check_shapes(stored, s, mngr.directory, {only: template} if only else template)
            abstract = _whole_here(stored if only else template)
            out = mngr.restore(s, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
            state = jax.tree.map(lambda a, t: np.asarray(a, np.asarray(t).dtype), out.state[only],
                                 template) if only else out.state
            # As fresh arrays: orbax's restored ones carry a sharding that changes every
            # jit program's text, so none would be found in the persistent compilation cache.
            return jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), state), out.meta
        except OtherModelError:
            raise
        except Exception as error:  # orbax and tensorstore raise many types for a bad checkpoint
            reason = one_line(f"{type(error).__name__}: {error}", limit=300)
            reasons.append(f"step {s}: {reason}")
            if s != steps[-1]:
                log(f"skipping checkpoint {s} in {mngr.directory}: it cannot be read ({reason})")
    raise ValueError(f"no readable checkpoint in {mngr.directory} ({'; '.join(reasons)[:600]})")


def save_variables(path: Path, variables: dict) -> None:
    """The model's variables alone (no optimizer state) as one `.npz`, keys like `params/conv_0/...`."""
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    np.savez(path, **{key: np.asarray(value) for key, value in flat.items()})


def load_variables(path: Path, template: dict) -> dict:
    """Variables saved by `save_variables`, checked against `template`'s structure and shapes."""
    try:
        with np.load(path) as saved:
            flat = {key: saved[key] for key in saved.files}
    except Exception as err:  # numpy raises zipfile, EOF and value errors for a damaged file
        raise ValueError(f"{path}: damaged variables file ({type(err).__name__}: {err})") from None
    expected = traverse_util.flatten_dict(template, sep="/")
    if set(flat) != set(expected) or any(flat[k].shape != np.shape(v) for k, v in expected.items()):
        raise ValueError(f"{path} does not hold the variables of this config's model "
                         f"(wrong model size or format)")
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
