"""The host side of training: data order, negatives, capacities, checkpoints, logs, plots.

`train(config, run_dir)` runs the epochs: per step, the negatives come from
the chain driver (`csp_jax.sampling.sample`) and `update_step` applies the
loss. Everything random is derived from the config's seed and the step number
(batch order from (seed, epoch), expansions j from (seed, step), chain keys
from fold_in(key, step)), so `resume=True` continues exactly where the newest
checkpoint left off.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from csp_jax.config import Config
from csp_jax.data.datasets import CrystalDataset, load_split
from csp_jax.data.species import chain_groups, draw_multipliers, expanded_species
from csp_jax.files import write_atomic
from csp_jax.geometry.crystal import Crystal
from csp_jax.geometry.neighbors import NeighborCapacity
from csp_jax.progress import Progress, format_duration
from csp_jax.sampling.driver import grow_until_no_overflow, sample, schedule
from csp_jax.training import checkpoint
from csp_jax.training.curves import plot_training_curve, read_metrics
from csp_jax.training.parallel import replicate, shard_batch
from csp_jax.training.step import energy_of, init_train_state, update_step, validation_step

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "training_curve.png"
VAL_KEY_OFFSET = 2**30  # validation chain keys live far from the training steps'


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses; the last good checkpoint is kept."""


class Batch(NamedTuple):
    """data: Crystal [B, N_data]; sample_species: [B, N_sample] int32 for the chains."""

    data: Crystal
    sample_species: jax.Array


class Capacities:
    """Neighbour capacities in use: one for the data, one per sample size (at the chains' starts)."""

    def __init__(self, config: Config, data_atoms: int, saved: dict | None = None):
        self.config = config
        self.data = NeighborCapacity(*saved["data"]) if saved else self._default(data_atoms)
        self.samples = {int(n): NeighborCapacity(*c) for n, c in (saved or {}).get("samples", {}).items()}

    def _default(self, atoms: int) -> NeighborCapacity:
        return NeighborCapacity.from_config(self.config.neighbors, atoms)

    def sample(self, atoms: int) -> NeighborCapacity:
        return self.samples.setdefault(atoms, self._default(atoms))

    def to_json(self) -> dict:
        return {"data": list(self.data), "samples": {str(n): list(c) for n, c in self.samples.items()}}


def grow_exceeded(capacity: NeighborCapacity, needs) -> NeighborCapacity:
    """`capacity` grown where `needs` ([image slots, edges]) exceed it, else unchanged."""
    return capacity.grow(*needs) if np.any(np.asarray(needs) > np.array(capacity)) else capacity


def make_batch(config: Config, dataset: CrystalDataset, indices, rng) -> tuple[Batch, int]:
    """(Batch, number of capped expansions) for the crystals at `indices`."""
    multipliers = draw_multipliers(rng, len(indices), config.sampler.geometric_q)
    species = expanded_species(dataset.species[indices], multipliers, config.data.max_atoms)
    batch = Batch(dataset.subset(indices).crystals, species.species)
    return shard_batch(jax.tree.map(jnp.asarray, batch)), species.num_capped


def negatives(config: Config, energy, variables, species, key, capacities: Capacities):
    """The chains of one training batch, each run at the bucket size of its own cell.

    species: [B, N]; chain b uses the key `split(key, B)[b]`. Chains are
    grouped by their cell's bucket size (`chain_groups`); a group's chain
    count is padded to a power of two with copies of its first chain (their
    results dropped), so few shapes are compiled. Returns (samples: Crystal
    [B, N] numpy, mean acceptance probability, capacity that holds every
    sample, overflow re-runs, non-finite proposals rejected).
    """
    species = np.asarray(jax.device_get(species))
    keys = jax.random.split(key, species.shape[0])
    positions = np.zeros(species.shape + (3,), np.float32)
    lattices = np.zeros((species.shape[0], 3, 3), np.float32)
    acceptance, reruns, non_finite, capacity = 0.0, 0, 0, None
    for width, rows in chain_groups(species, config.data.max_atoms):
        padded = np.concatenate([rows, np.repeat(rows[:1], (1 << (len(rows) - 1).bit_length()) - len(rows))])
        chains = sample(keys[padded], species[padded, :width], energy, variables, capacities.sample(width),
                        schedule(config.sampler), segment_length=config.sampler.segment_length)
        capacities.samples[width] = chains.start_capacity  # what random starts needed so far
        crystal = jax.device_get(chains.states.crystal)
        positions[rows, :width] = crystal.positions[:len(rows)]
        lattices[rows] = crystal.lattice[:len(rows)]
        acceptance += float(np.sum(np.mean(chains.info.acceptance_probability[:len(rows)], axis=1)))
        reruns += chains.num_overflow_reruns
        non_finite += int(np.sum(~chains.info.finite[:len(rows)]))
        capacity = chains.capacity if capacity is None else NeighborCapacity(
            *np.maximum(np.array(capacity), np.array(chains.capacity)))
    samples = Crystal(species, positions, lattices)
    return samples, acceptance / species.shape[0], capacity, reruns, non_finite


def run_step(step_fn, config: Config, state, batch: Batch, key, capacities: Capacities):
    """Negatives for `batch` by the chain driver (`negatives`), then `step_fn(state, data, samples, ...)`.

    step_fn: `update_step` or `validation_step`. The chains start at the
    capacity kept for their size (grown where random starts needed more; the
    driver refits it to the chains' needs after their first segment); the
    step's capacities grow until nothing overflows. Returns (output of
    step_fn, metrics as numpy with the chains' mean acceptance and their
    rejected non-finite proposals, overflow re-runs).
    """
    energy = energy_of(config)
    samples, acceptance, sample_capacity, chain_reruns, non_finite = negatives(
        config, energy, state.variables, batch.sample_species, key, capacities)
    samples = shard_batch(jax.tree.map(jnp.asarray, samples))

    def step_at(caps):
        out = step_fn(state, batch.data, samples, energy=energy, config=config,
                      data_capacity=caps[0], sample_capacity=caps[1])
        metrics = jax.device_get(out[-1] if isinstance(out, tuple) else out)
        return (out, metrics), metrics["overflow"], (metrics["data_needs"], metrics["sample_needs"])

    (out, metrics), (capacities.data, _), reruns = grow_until_no_overflow(
        step_at, (capacities.data, sample_capacity), "in the training step",
        grow=lambda caps, needs: (grow_exceeded(caps[0], needs[0]), grow_exceeded(caps[1], needs[1])))
    return out, dict(metrics, acceptance=acceptance, non_finite_proposals=non_finite), reruns + chain_reruns


class MetricsLog:
    """Append-only JSON-lines metrics; on resume, records past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def validation_loss(config, state, val_set, capacities) -> float:
    """Mean loss over the full validation batches (chains with frozen spectral state)."""
    batch_size = min(config.train.batch_size, len(val_set))
    losses = []
    for b in range(len(val_set) // batch_size):
        indices = np.arange(b * batch_size, (b + 1) * batch_size)
        batch, _ = make_batch(config, val_set, indices, np.random.default_rng([config.train.seed, 2, b]))
        key = jax.random.fold_in(state.key, VAL_KEY_OFFSET + b)
        _, metrics, _ = run_step(validation_step, config, state, batch, key, capacities)
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
    started = time.perf_counter()
    train_set = load_split(config.data.dataset, "train", data_dir, download=True,
                           limit=config.data.train_limit or None)
    val_set = load_split(config.data.dataset, "val", data_dir, download=True,
                         limit=config.data.val_limit or None)
    batch_size = t.batch_size
    if batch_size > len(train_set):
        raise ValueError(f"train.batch_size={batch_size} exceeds the {len(train_set)} training crystals")
    steps_per_epoch = len(train_set) // batch_size
    total_steps = t.num_epochs * steps_per_epoch

    mngr = checkpoint.manager(run_dir, t.keep_checkpoints or None)
    state = init_train_state(config, jax.random.PRNGKey(t.seed))
    if resume and mngr.latest_step() is not None:
        trained = checkpoint.read_config(run_dir).model
        if trained != config.model:
            raise ValueError(f"{run_dir} holds a model of other size or kind ({trained}); "
                             f"resume it with the config it was trained with")
        state, meta = checkpoint.restore(mngr, state, log=log)
        for unreadable in [s for s in mngr.all_steps() if s > int(state.step)]:
            mngr.delete(unreadable)  # so that the resumed run can write that step again
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
    progress = Progress(total_steps, "training", unit="steps", log=log, initial=start)
    bad_in_row = 0
    for step in range(start, stop):
        epoch, b = divmod(step, steps_per_epoch)
        order = np.random.default_rng([t.seed, epoch]).permutation(len(train_set))
        indices = np.sort(order[b * batch_size:(b + 1) * batch_size])
        batch, capped = make_batch(config, train_set, indices, np.random.default_rng([t.seed, 1, step]))
        key = jax.random.fold_in(state.key, step)
        tic = time.perf_counter()
        (new_state, _), metrics, reruns = run_step(update_step, config, state, batch, key, capacities)
        seconds = time.perf_counter() - tic
        finite = bool(np.isfinite(metrics["loss"]))
        if finite:
            state, bad_in_row = new_state, 0
        else:
            state, bad_in_row = state.replace(step=state.step + 1), bad_in_row + 1
            progress.write(f"step {step + 1}: non-finite loss, update skipped ({bad_in_row} in a row)")
        rate = batch_size * config.sampler.num_steps / seconds
        record = {"kind": "train", "step": step + 1, "epoch": epoch + 1,
                  **{k: float(metrics[k]) for k in ("loss", "e_data", "e_sample", "acceptance")},
                  "skipped": not finite, "capped": capped, "overflow_reruns": reruns,
                  "non_finite_proposals": int(metrics["non_finite_proposals"]),
                  "atoms_padded": int(batch.sample_species.shape[1]),
                  "seconds": seconds, "crystal_steps_per_s": rate}
        metrics_log.write(record)
        if bad_in_row >= t.max_bad_steps:
            raise TrainingDiverged(
                f"{bad_in_row} non-finite losses in a row at step {step + 1}; the last good "
                f"checkpoint (step {mngr.latest_step()}) in {run_dir} is kept")
        progress.update(1, f"epoch {epoch + 1}/{t.num_epochs} loss {record['loss']:.4f} "
                           f"E_data {record['e_data']:.3f} E_sample {record['e_sample']:.3f} "
                           f"acc {record['acceptance']:.2f} | {rate:.0f} crystal-steps/s"
                           + (f" | capped {capped}" if capped else "")
                           + (f" | overflow re-runs {reruns}" if reruns else ""))
        end_of_epoch = (step + 1) % steps_per_epoch == 0
        if finite and ((step + 1) % t.checkpoint_every == 0 or end_of_epoch or step + 1 == stop):
            save()
        if end_of_epoch:
            val = validation_loss(config, state, val_set, capacities)
            metrics_log.write({"kind": "val", "step": step + 1, "epoch": epoch + 1, "loss": val})
            progress.write(f"epoch {epoch + 1}: validation loss {val:.4f}")
            plot_training_curve(run_dir / METRICS_FILE, run_dir / CURVE_FILE)
    progress.close()
    plot_training_curve(run_dir / METRICS_FILE, run_dir / CURVE_FILE)
    log(f"trained steps {start}..{stop} in {format_duration(time.perf_counter() - started)} (wall time)")
    return state
