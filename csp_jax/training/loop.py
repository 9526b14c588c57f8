"""The host side of training: data order, negatives, capacities, checkpoints, logs, plots.

`train(config, run_dir, energy=...)` runs the epochs: per step, the negatives
come from the chain driver (`csp_jax.sampling.sample`) and `update_step`
applies the loss. Everything random is derived from the config's seed and the step number
(batch order from (seed, epoch), expansions j from (seed, step), chain keys
from fold_in(key, step)), so `resume=True` continues exactly where the newest
checkpoint left off.

Under `jax.distributed` (several processes, `csp_jax.distributed`) every
process draws the same batches; each runs its share of every group of chains
on its own devices with the keys one process would give those rows, the
processes exchange the samples and take the largest of their capacities, and
the update step is one program over the devices of all of them
(`csp_jax.training.parallel`). Every decision on the host (a re-run on
overflow, a skipped non-finite step, a stop) is then taken from the same
numbers in every process. Every process takes part in the checkpoints; the
main one alone writes the config, the metrics, the plots and the log.
"""
from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from csp_jax.config import Config, NeighborConfig
from csp_jax.data.dataset import CrystalDataset
from csp_jax.data.datasets import training_splits
from csp_jax.data.species import chain_groups, draw_multipliers, expanded_species, swapped_sites
from csp_jax.distributed import barrier, gathered, is_main, process_local, share
from csp_jax.energy.base import Energy
from csp_jax.files import write_atomic
from csp_jax.geometry.capacity import at_least, grow_exceeded, grow_until_no_overflow
from csp_jax.geometry.crystal import Crystal
from csp_jax.geometry.neighbors import NeighborCapacity
from csp_jax.progress import Progress, format_duration
from csp_jax import models
from csp_jax.energy.registry import build_energy
from csp_jax.models import checkpoint
from csp_jax.sampling.driver import compiled_chain_programs, sample, schedule
from csp_jax.sampling.kernel import kernel_from
from csp_jax.training.curves import plot_training_curve, read_metrics
from csp_jax.training.parallel import replicate, shard_batch
from csp_jax.training.step import (init_train_state, optimizer, update_step,
                                   validation_step)

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "training_curve.png"
VAL_KEY_OFFSET = 2**30  # validation chain keys live far from the training steps'


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses; the last good checkpoint is kept."""


class Batch(NamedTuple):
    """A training batch of numpy arrays (the same in every process). data: Crystal
    [B, N_data]; sample_species: [B, max_atoms] int32 for the chains; swapped: Crystal
    [k B, N_data], `train.swap_negatives` = k copies of each data crystal in turn with
    two sites' species exchanged (`swapped_sites`)."""

    data: Crystal
    sample_species: np.ndarray
    swapped: Crystal


class Capacities:
    """Neighbour capacities in use, kept in checkpoints.

    data:   the data crystals' (grows only);
    update: the negatives' in the update step (grows only, to the largest the
            chains ended with: few update programs are compiled);
    chains: per chain width, the capacity of each segment of that width's
            chains (grows only: the driver's `floors`, so after the first
            batches the chains of a width reuse their compiled programs).
    """

    def __init__(self, neighbors: NeighborConfig, data_atoms: int, saved: dict | None = None):
        self.neighbors = neighbors
        saved = saved or {}
        self.data = NeighborCapacity(*saved["data"]) if "data" in saved else self._default(data_atoms)
        self.update = NeighborCapacity(*saved["update"]) if "update" in saved else None
        self.chains = {int(n): tuple(NeighborCapacity(*c) for c in _per_segment(caps))
                       for n, caps in saved.get("samples", {}).items()}

    def _default(self, atoms: int) -> NeighborCapacity:
        return NeighborCapacity.from_config(self.neighbors, atoms)

    def for_chains(self, width: int) -> tuple[NeighborCapacity, ...]:
        """The capacities per segment of chains of `width` atom slots (for a new width:
        the default for `width` atoms, for the first segment)."""
        return self.chains.setdefault(width, (self._default(width),))

    def agree(self) -> None:
        """Take, for every capacity of the chains and of the update step, the largest of
        any process's (each grew its own to what its chains needed), so that every process
        compiles the same update step and checkpoints the same capacities. Every process
        holds the same widths, with the same number of segments each."""
        widths = sorted(self.chains)
        flat = [self.update, *(c for n in widths for c in self.chains[n])]
        largest = gathered(np.array(flat, np.int32)).max(axis=0).tolist()  # [1 + segments, 2]
        self.update, rest = NeighborCapacity(*largest[0]), largest[1:]
        for n in widths:
            count = len(self.chains[n])
            self.chains[n], rest = tuple(NeighborCapacity(*c) for c in rest[:count]), rest[count:]

    def to_json(self) -> dict:
        saved = {"data": list(self.data),
                 "samples": {str(n): [list(c) for c in caps] for n, caps in self.chains.items()}}
        return saved if self.update is None else dict(saved, update=list(self.update))


def _per_segment(saved: list) -> list:
    """A width's saved capacities: [[images, edges], ...] per segment, or one
    [images, edges] (checkpoints written before capacities were kept per segment)."""
    return [saved] if isinstance(saved[0], int) else saved


def make_batch(config: Config, dataset: CrystalDataset, indices, rng) -> tuple[Batch, int]:
    """(Batch of numpy arrays, number of capped expansions) for the crystals at `indices`."""
    d = config.data
    multipliers = draw_multipliers(rng, len(indices), d.geometric_q)
    species = expanded_species(dataset.species[indices], multipliers, d.max_atoms, d.expand_from)
    data = dataset.subset(indices).crystals
    copies = jax.tree.map(lambda x: x[np.repeat(np.arange(len(indices)), config.train.swap_negatives)], data)
    swapped = copies.replace(species=swapped_sites(copies.species, rng, config.train.swap_pairs))
    batch = Batch(data, species.species, swapped)
    return batch, species.num_capped


class Negatives(NamedTuple):
    """The chains of one training batch: samples (Crystal [B, N] numpy), their mean
    acceptance probability, overflow re-runs and rejected non-finite proposals."""

    samples: Crystal
    acceptance: float
    num_overflow_reruns: int
    num_non_finite: int


def negatives(config: Config, energy: Energy, variables, species, key, capacities: Capacities) -> Negatives:
    """The chains of one training batch (the config's `sampler.kernel`), in groups of similar
    size (`chain_groups`), each process running its share of every group.

    species: [B, N]; chain b uses the key `split(key, B)[b]` in whichever
    process runs it. Of a group of up to G = `train.chains_per_group` rows,
    each of the P processes runs its share (`distributed.share`) on its own
    devices, filled up to ceil(G / P) chains with copies of the group's first
    row (results dropped), so every group has one of a few shapes. Each group's
    segments run at least at the capacities kept for its width, which grow to
    what they ran with; `capacities.update` grows to hold every sample; then the
    processes agree on them (`Capacities.agree`) and exchange their rows, so the
    result is the same in every process.
    """
    species = np.asarray(species)
    keys = np.asarray(jax.random.split(key, species.shape[0]))
    group = min(config.train.chains_per_group, species.shape[0])
    per_process = -(-group // jax.process_count())
    annealing = schedule(config.sampler)
    kernel = kernel_from(config.sampler.kernel)
    positions = np.zeros(species.shape + (3,), np.float32)  # zero in the rows of other processes
    lattices = np.zeros((species.shape[0], 3, 3), np.float32)
    acceptance, counts = np.zeros(1, np.float32), np.zeros(2, np.int32)  # counts: re-runs, non-finite
    for width, rows in chain_groups(species, config.data.max_atoms, group):
        mine = rows[share(len(rows))]
        filled = np.concatenate([mine, np.repeat(rows[:1], per_process - len(mine))])
        floors = capacities.for_chains(width)
        chains = sample(keys[filled], species[filled, :width], energy, variables, floors[0], annealing,
                        segment_length=config.sampler.segment_length, kernel=kernel, floors=floors)
        capacities.chains[width] = chains.capacities  # each at least its floor
        capacities.update = at_least(capacities.update, chains.capacity)
        crystal = jax.device_get(chains.states.crystal)
        positions[mine, :width] = crystal.positions[:len(mine)]
        lattices[mine] = crystal.lattice[:len(mine)]
        acceptance += np.sum(np.mean(chains.info.acceptance_probability[:len(mine)], axis=1))
        counts += (chains.num_overflow_reruns, np.sum(~chains.info.finite[:len(mine)]))
    capacities.agree()
    every = gathered((positions, lattices, acceptance, counts))
    positions, lattices, acceptance, (reruns, non_finite) = (x.sum(axis=0) for x in every)
    return Negatives(Crystal(species, positions, lattices), float(acceptance[0]) / species.shape[0],
                     int(reruns), int(non_finite))


def run_step(step_fn, energy: Energy, config: Config, state, batch: Batch, key, capacities: Capacities):
    """Negatives for `batch` (numpy) by the chain driver (`negatives`), then `step_fn`.

    step_fn: `update_step` (with its optimizer bound) or `validation_step`,
    called as `step_fn(state, data, samples, regularization, swapped=,
    swap_margin=, energy=, data_capacity=, sample_capacity=)` on the batch split
    over every device (`shard_batch`); its capacities grow until nothing
    overflows (its metrics come from one program: every process sees the same
    overflow and needs). Returns (output of step_fn, metrics as numpy with the
    chains' mean acceptance and their rejected non-finite proposals, overflow
    re-runs).
    """
    chains = negatives(config, energy, process_local(state.variables), batch.sample_species, key, capacities)
    data, swapped, samples = shard_batch((batch.data, batch.swapped, chains.samples))

    def step_at(caps):
        out = step_fn(state, data, samples, config.train.regularization, swapped=swapped,
                      swap_margin=config.train.swap_margin, energy=energy,
                      data_capacity=caps[0], sample_capacity=caps[1])
        metrics = jax.device_get(out[-1] if isinstance(out, tuple) else out)
        return (out, metrics), metrics["overflow"], (metrics["data_needs"], metrics["sample_needs"])

    (out, metrics), (capacities.data, capacities.update), reruns = grow_until_no_overflow(
        step_at, (capacities.data, capacities.update), "in the training step",
        grow=lambda caps, needs: (grow_exceeded(caps[0], needs[0]), grow_exceeded(caps[1], needs[1])))
    metrics = dict(metrics, acceptance=chains.acceptance, non_finite_proposals=chains.num_non_finite)
    return out, metrics, reruns + chains.num_overflow_reruns


def compiled_training_programs() -> int:
    """Programs compiled so far in this process by training: the driver's and the steps'
    (a step replaced by a plain function, as tests do, counts none)."""
    steps = (update_step, validation_step)
    return compiled_chain_programs() + sum(s._cache_size() for s in steps if hasattr(s, "_cache_size"))


class MetricsLog:
    """Append-only JSON-lines metrics, written by the main process alone; on resume, records
    past the checkpoint are dropped. Every process reads which steps were validated."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]
        self.validated = {r["step"] for r in kept if r.get("kind") == "val"}
        barrier("metrics read")  # by every process, before the main one rewrites them
        if is_main():
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        if is_main():
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def plot(self, png_path: Path) -> None:
        """The training curve of the records so far (`plot_training_curve`), by the main process."""
        if is_main():
            plot_training_curve(self.path, png_path)


def validation_loss(energy: Energy, config: Config, state, val_set, capacities) -> float:
    """Mean loss over the full validation batches (chains with frozen spectral state)."""
    batch_size = min(config.train.batch_size, len(val_set))
    losses = []
    for b in range(len(val_set) // batch_size):
        indices = np.arange(b * batch_size, (b + 1) * batch_size)
        batch, _ = make_batch(config, val_set, indices, np.random.default_rng([config.train.seed, 2, b]))
        key = jax.random.fold_in(state.key, VAL_KEY_OFFSET + b)
        _, metrics, _ = run_step(validation_step, energy, config, state, batch, key, capacities)
        losses.append(float(metrics["loss"]))
    return float(np.mean(losses)) if losses else math.nan


def _start_from(state, config: Config, trained: str):
    """`state` with the variables of the trained model `trained` (a shipped model's name,
    a model folder or a run directory) and a fresh optimizer state for them."""
    trained_config, _, variables = models.load(trained)
    if trained_config.model != config.model:
        raise ValueError(f"train.init_from={trained!r} is a model of other size or kind "
                         f"({trained_config.model}) than this config's ({config.model})")
    return state.replace(variables=variables, opt_state=optimizer(config.train).init(variables["params"]))


def train(config: Config, run_dir, data_dir=None, *, resume: bool = False,
          max_steps: int | None = None, log=print):
    """Train the config's energy (`model.energy`) on its data into `run_dir`, the negatives
    drawn by its sampler (`sampler.kernel`); returns the final TrainState.

    max_steps: stop (with a checkpoint) after this many steps in this call.
    Raises TrainingDiverged after `train.max_bad_steps` non-finite losses in a row.
    Under `jax.distributed`, every process calls it alike; `log` is the main process's.
    """
    run_dir = Path(run_dir)
    log = log if is_main() else (lambda line: None)
    t = config.train
    energy = build_energy(config.model)
    started = time.perf_counter()
    train_set, val_set = training_splits(config.data, data_dir)
    batch_size = t.batch_size
    if batch_size > len(train_set):
        raise ValueError(f"train.batch_size={batch_size} exceeds the {len(train_set)} training crystals")
    steps_per_epoch = len(train_set) // batch_size
    total_steps = t.num_epochs * steps_per_epoch

    mngr = checkpoint.manager(run_dir, t.keep_checkpoints or None)
    state = init_train_state(config, jax.random.PRNGKey(t.seed), energy)
    if resume and mngr.latest_step() is not None:
        trained = checkpoint.read_config(run_dir).model
        if trained != config.model:
            raise ValueError(f"{run_dir} holds a model of other size or kind ({trained}); "
                             f"resume it with the config it was trained with")
        state, meta = checkpoint.restore(mngr, state, log=log)
        for unreadable in [s for s in mngr.all_steps() if s > int(state.step)]:
            mngr.delete(unreadable)  # so that the resumed run can write that step again
        capacities = Capacities(config.neighbors, train_set.max_atoms, meta["capacities"])
        log(f"resumed from step {int(state.step)} in {run_dir}")
    elif mngr.latest_step() is not None:
        raise FileExistsError(f"{run_dir} already holds checkpoints: add --resume or choose another --out")
    else:
        capacities = Capacities(config.neighbors, train_set.max_atoms)
        if t.init_from:
            state = _start_from(state, config, t.init_from)
            log(f"starting from the variables of {t.init_from}")
    state = replicate(state)
    if is_main():
        checkpoint.write_config(run_dir, config)
    metrics_log = MetricsLog(run_dir / METRICS_FILE, int(state.step))

    def save():
        checkpoint.save(mngr, int(state.step), state, {"capacities": capacities.to_json()})

    def validate(step):
        val = validation_loss(energy, config, state, val_set, capacities)
        metrics_log.write({"kind": "val", "step": step, "epoch": step // steps_per_epoch, "loss": val})
        progress.write(f"epoch {step // steps_per_epoch}: validation loss {val:.4f}")
        metrics_log.plot(run_dir / CURVE_FILE)

    start = int(state.step)
    stop = total_steps if max_steps is None else min(total_steps, start + max_steps)
    log(f"training {config.name}: {len(train_set)} crystals, {steps_per_epoch} steps/epoch, "
        f"{t.num_epochs} epochs, steps {start}..{stop} of {total_steps}")
    progress = Progress(total_steps, "training", unit="steps", log=log, initial=start)
    if start and start % steps_per_epoch == 0 and start not in metrics_log.validated:
        validate(start)  # stopped between an epoch's last checkpoint and its validation
    bad_in_row = 0
    update = functools.partial(update_step, optimizer=optimizer(t))
    for step in range(start, stop):
        epoch, b = divmod(step, steps_per_epoch)
        order = np.random.default_rng([t.seed, epoch]).permutation(len(train_set))
        indices = np.sort(order[b * batch_size:(b + 1) * batch_size])
        batch, capped = make_batch(config, train_set, indices, np.random.default_rng([t.seed, 1, step]))
        key = jax.random.fold_in(state.key, step)
        tic, programs = time.perf_counter(), compiled_training_programs()
        (new_state, _), metrics, reruns = run_step(update, energy, config, state, batch, key, capacities)
        seconds, programs = time.perf_counter() - tic, compiled_training_programs() - programs
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
                  **{k: float(metrics[k]) for k in ("e_swap", "swaps_above_data") if k in metrics},
                  "real_atoms": int(np.count_nonzero(np.asarray(batch.sample_species))),
                  "new_programs": programs, "seconds": seconds, "crystal_steps_per_s": rate}
        metrics_log.write(record)
        if bad_in_row >= t.max_bad_steps:
            raise TrainingDiverged(
                f"{bad_in_row} non-finite losses in a row at step {step + 1}; the last good "
                f"checkpoint (step {mngr.latest_step()}) in {run_dir} is kept")
        progress.update(1, f"epoch {epoch + 1}/{t.num_epochs} loss {record['loss']:.4f} "
                           f"E_data {record['e_data']:.3f} E_sample {record['e_sample']:.3f} "
                           f"acc {record['acceptance']:.2f} | {rate:.0f} crystal-steps/s"
                           + (f" | swaps above data {record['swaps_above_data']:.2f}"
                              if "swaps_above_data" in record else "")
                           + (f" | capped {capped}" if capped else "")
                           + (f" | overflow re-runs {reruns}" if reruns else "")
                           + (f" | compiled {programs}" if programs else ""))
        end_of_epoch = (step + 1) % steps_per_epoch == 0
        if finite and ((step + 1) % t.checkpoint_every == 0 or end_of_epoch or step + 1 == stop):
            save()
        if end_of_epoch:
            validate(step + 1)
    progress.close()
    metrics_log.plot(run_dir / CURVE_FILE)
    log(f"trained steps {start}..{stop} in {format_duration(time.perf_counter() - started)} (wall time)")
    return state
