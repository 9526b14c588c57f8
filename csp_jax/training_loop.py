"""The host side of training: data order, capacities, checkpoints, logs, plots.

`train(config, run_dir)` runs the jitted `csp_jax.train.train_step` over the
epochs. Everything random is derived from the config's seed and the step
number (batch order from (seed, epoch), expansions j from (seed, step), chain
keys from fold_in(key, step)), so `resume=True` continues exactly where the
newest checkpoint left off.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from csp_jax import checkpoint
from csp_jax.batching import draw_multipliers, expanded_species
from csp_jax.config import Config
from csp_jax.data import CrystalDataset, load_split
from csp_jax.neighbors import NeighborCapacity
from csp_jax.parallel import replicate, shard_batch
from csp_jax.progress import format_duration
from csp_jax.plots import plot_training_curve, read_metrics
from csp_jax.train import Batch, eval_step, init_train_state, train_step

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "training_curve.png"
VAL_KEY_OFFSET = 2**30  # validation chain keys live far from the training steps'


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses; the last good checkpoint is kept."""


class Capacities:
    """Neighbour capacities in use: one for the data, one per sample bucket size."""

    def __init__(self, config: Config, data_atoms: int, saved: dict | None = None):
        self.config = config
        self.data = NeighborCapacity(*saved["data"]) if saved else self._default(data_atoms)
        self.samples = {int(n): NeighborCapacity(*c) for n, c in (saved or {}).get("samples", {}).items()}

    def _default(self, atoms: int) -> NeighborCapacity:
        n = self.config.neighbors
        return NeighborCapacity.for_atoms(atoms, n.max_images, n.edge_factor)

    def sample(self, atoms: int) -> NeighborCapacity:
        return self.samples.setdefault(atoms, self._default(atoms))

    def grow(self, atoms: int, data_needs, sample_needs) -> bool:
        """Grow what the needs ([image slots, edges]) exceed; False when nothing did."""
        data, sample = self.data, self.sample(atoms)
        if np.any(np.asarray(data_needs) > np.array(data)):
            self.data = data.grow(*data_needs)
        if np.any(np.asarray(sample_needs) > np.array(sample)):
            self.samples[atoms] = sample.grow(*sample_needs)
        return (self.data, self.samples[atoms]) != (data, sample)

    def to_json(self) -> dict:
        return {"data": list(self.data), "samples": {str(n): list(c) for n, c in self.samples.items()}}


def _limited(dataset: CrystalDataset, limit: int) -> CrystalDataset:
    return dataset.subset(slice(0, limit)) if limit else dataset


def make_batch(config: Config, dataset: CrystalDataset, indices, rng) -> tuple[Batch, int]:
    """(Batch, number of capped expansions) for the crystals at `indices`."""
    multipliers = draw_multipliers(rng, len(indices), config.sampler.geometric_q)
    species = expanded_species(dataset.species[indices], multipliers, config.data.max_atoms)
    batch = Batch(dataset.subset(indices).crystals, species.species)
    return shard_batch(jax.tree.map(jnp.asarray, batch)), species.num_capped


def run_until_no_overflow(step_fn, capacities: Capacities, batch: Batch, log):
    """Call `step_fn(data_capacity, sample_capacity)`, growing capacities on overflow.

    Returns (outputs, metrics as numpy, number of re-runs).
    """
    atoms = batch.sample_species.shape[1]
    reruns = 0
    while True:
        out = step_fn(capacities.data, capacities.sample(atoms))
        metrics = jax.device_get(out[-1] if isinstance(out, tuple) else out)
        if not bool(metrics["overflow"]):
            return out, metrics, reruns
        if not capacities.grow(atoms, metrics["data_needs"], metrics["sample_needs"]):
            raise RuntimeError(f"neighbour lists overflow although capacities {capacities.data}, "
                               f"{capacities.sample(atoms)} hold the reported needs")
        reruns += 1
        log(f"  neighbour capacity exceeded; repeating the step with {capacities.sample(atoms)}")
        if reruns > 20:
            raise RuntimeError("neighbour capacity keeps overflowing (non-finite crystals?)")


class MetricsLog:
    """Append-only JSON-lines metrics; on resume, records past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def validation_loss(config, state, val_set, capacities, log) -> float:
    """Mean loss over the full validation batches (chains with frozen spectral state)."""
    batch_size = min(config.train.batch_size, len(val_set))
    losses = []
    for b in range(len(val_set) // batch_size):
        indices = np.arange(b * batch_size, (b + 1) * batch_size)
        batch, _ = make_batch(config, val_set, indices, np.random.default_rng([config.train.seed, 2, b]))
        key = jax.random.fold_in(state.key, VAL_KEY_OFFSET + b)
        _, metrics, _ = run_until_no_overflow(
            lambda dc, sc: eval_step(state, batch, key, config=config, data_capacity=dc, sample_capacity=sc),
            capacities, batch, log)
        losses.append(float(metrics["loss"]))
    return float(np.mean(losses)) if losses else math.nan


def train(config: Config, run_dir, data_dir=None, *, resume: bool = False,
          max_steps: int | None = None, log=print):
    """Train `config` into `run_dir`; returns the final TrainState.

    max_steps: stop (with a checkpoint) after this many steps in this call.
    Raises TrainingDiverged after `train.max_bad_steps` non-finite losses in a row.
    """
    run_dir = Path(run_dir)
    t = config.train
    train_set = _limited(load_split(config.data.dataset, "train", data_dir, download=True),
                         config.data.train_limit)
    val_set = _limited(load_split(config.data.dataset, "val", data_dir, download=True),
                       config.data.val_limit)
    batch_size = t.batch_size
    if batch_size > len(train_set):
        raise ValueError(f"train.batch_size={batch_size} exceeds the {len(train_set)} training crystals")
    steps_per_epoch = len(train_set) // batch_size
    total_steps = t.num_epochs * steps_per_epoch

    mngr = checkpoint.manager(run_dir, t.keep_checkpoints or None)
    state = init_train_state(config, jax.random.PRNGKey(t.seed))
    if resume and mngr.latest_step() is not None:
        state, meta = checkpoint.restore(mngr, state)
        capacities = Capacities(config, train_set.max_atoms, meta["capacities"])
        log(f"resumed from step {int(state.step)} in {run_dir}")
    elif mngr.latest_step() is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints: add --resume or choose another --out")
    else:
        capacities = Capacities(config, train_set.max_atoms)
    state = replicate(state)
    checkpoint.write_config(run_dir, config)
    metrics_log = MetricsLog(run_dir / METRICS_FILE, int(state.step))

    def save():
        checkpoint.save(mngr, int(state.step), state, {"capacities": capacities.to_json()})

    start = int(state.step)
    stop = total_steps if max_steps is None else min(total_steps, start + max_steps)
    log(f"training {config.name}: {len(train_set)} crystals, {steps_per_epoch} steps/epoch, "
        f"{t.num_epochs} epochs, steps {start}..{stop} of {total_steps}")
    bad_in_row, step_seconds = 0, []
    for step in range(start, stop):
        epoch, b = divmod(step, steps_per_epoch)
        order = np.random.default_rng([t.seed, epoch]).permutation(len(train_set))
        indices = np.sort(order[b * batch_size:(b + 1) * batch_size])
        batch, capped = make_batch(config, train_set, indices, np.random.default_rng([t.seed, 1, step]))
        key = jax.random.fold_in(state.key, step)
        tic = time.time()
        (new_state, _), metrics, reruns = run_until_no_overflow(
            lambda dc, sc: train_step(state, batch, key, config=config, data_capacity=dc, sample_capacity=sc),
            capacities, batch, log)
        seconds = time.time() - tic
        finite = bool(np.isfinite(metrics["loss"]))
        if finite:
            state, bad_in_row = new_state, 0
        else:
            state, bad_in_row = state.replace(step=state.step + 1), bad_in_row + 1
            log(f"step {step + 1}: non-finite loss, update skipped ({bad_in_row} in a row)")
        rate = batch_size * config.sampler.num_steps / seconds
        record = {"kind": "train", "step": step + 1, "epoch": epoch + 1,
                  **{k: float(metrics[k]) for k in ("loss", "e_data", "e_sample", "acceptance")},
                  "skipped": not finite, "capped": capped, "overflow_reruns": reruns,
                  "atoms_padded": int(batch.sample_species.shape[1]),
                  "seconds": seconds, "crystal_steps_per_s": rate}
        metrics_log.write(record)
        if bad_in_row >= t.max_bad_steps:
            raise TrainingDiverged(
                f"{bad_in_row} non-finite losses in a row at step {step + 1}; the last good "
                f"checkpoint (step {mngr.latest_step()}) in {run_dir} is kept")
        step_seconds.append(seconds)
        steady = step_seconds[1:] or step_seconds  # the first step of a call includes compilation
        eta = float(np.median(steady)) * (stop - step - 1)
        speed = "compiling" if len(step_seconds) == 1 else f"{rate:.0f} crystal-steps/s"
        log(f"step {step + 1}/{total_steps} epoch {epoch + 1}/{t.num_epochs} "
            f"loss {record['loss']:.4f} E_data {record['e_data']:.3f} E_sample {record['e_sample']:.3f} "
            f"acc {record['acceptance']:.2f} | {speed} | ETA {format_duration(eta)}"
            + (f" | capped {capped}" if capped else ""))
        end_of_epoch = (step + 1) % steps_per_epoch == 0
        if finite and ((step + 1) % t.checkpoint_every == 0 or end_of_epoch or step + 1 == stop):
            save()
        if end_of_epoch:
            val = validation_loss(config, state, val_set, capacities, log)
            metrics_log.write({"kind": "val", "step": step + 1, "epoch": epoch + 1, "loss": val})
            log(f"epoch {epoch + 1}: validation loss {val:.4f}")
            plot_training_curve(run_dir / METRICS_FILE, run_dir / CURVE_FILE)
    plot_training_curve(run_dir / METRICS_FILE, run_dir / CURVE_FILE)
    return state
