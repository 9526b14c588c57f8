"""Contrastive-divergence training of an energy (SPEC §4), as pure functions.

A training step is: negatives from the chain driver (`csp_jax.sampling.sample`,
with the frozen spectral state, as in evaluation mode), then `update_step`, one
jitted pure function of `(state, data, samples)` that combines the data energy
with the sampled negatives' energy,

    loss = mean(E_data - E_sample) + lambda (mean(E_data^2) + mean(E_sample^2)),

plus, with species-swapped copies of the data crystals (`train.swap_negatives`),
a margin term that ranks each copy above its data crystal (`ranking_loss`). It
runs one training-mode forward pass for the data with its copies and one for
the samples (one spectral-norm power iteration before each) and applies one
Adam step. `validation_step` is
the loss with frozen variables and no update. Neighbour-capacity overflows
come back in the metrics; the host loop (`csp_jax.training.loop`) grows the
capacity and repeats the step.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import struct

from csp_jax.config import Config, TrainConfig
from csp_jax.energy.base import Energy
from csp_jax.energy.registry import build_energy
from csp_jax.geometry.crystal import Crystal


@struct.dataclass
class TrainState:
    """Everything a training run needs to continue exactly.

    step:      [] int32, optimizer steps taken (skipped non-finite steps included).
    variables: {"params", "spectral"} of the energy model.
    opt_state: optax Adam state.
    key:       [2] uint32, the run's root PRNG key (step keys are fold_in(key, step)).
    """

    step: jax.Array
    variables: dict
    opt_state: optax.OptState
    key: jax.Array


@functools.lru_cache(maxsize=None)
def adam(learning_rate: float, b1: float, b2: float) -> optax.GradientTransformation:
    """Adam, constant learning rate, no clipping, no weight decay (SPEC §4); one object per
    setting, so that a jitted step keyed on it compiles once."""
    return optax.adam(learning_rate, b1=b1, b2=b2)


def optimizer(train_config: TrainConfig) -> optax.GradientTransformation:
    """The optimizer of a config's `train` section."""
    return adam(train_config.learning_rate, train_config.b1, train_config.b2)


def init_train_state(config: Config, key, energy: Energy | None = None) -> TrainState:
    """A fresh state for training `energy` (None: the config's, `build_energy(config.model)`) with the config's
    optimizer; `key` is a raw [2] uint32 key (`jax.random.PRNGKey`)."""
    init_key, run_key = jax.random.split(key)
    variables = (build_energy(config.model) if energy is None else energy).init(init_key)
    return TrainState(jnp.zeros((), jnp.int32), variables,
                      optimizer(config.train).init(variables["params"]), run_key)


def contrastive_loss(e_data, e_sample, regularization):
    """SPEC §4: mean(E_data - E_sample) + lambda (mean(E_data^2) + mean(E_sample^2))."""
    return (jnp.mean(e_data - e_sample)
            + regularization * (jnp.mean(e_data**2) + jnp.mean(e_sample**2)))


def ranking_loss(e_data, e_swapped, margin):
    """mean over swapped copies of max(0, margin + E_data - E_swapped): zero once every copy
    is at least `margin` above its data crystal, so the copies already ranked well (most
    cation-anion swaps) leave the energy alone. e_data [B]; e_swapped [B, k]."""
    return jnp.mean(jax.nn.relu(margin + e_data[:, None] - e_swapped))


def losses(energy: Energy, variables, data: Crystal, samples: Crystal, swapped: Crystal,
           data_capacity, sample_capacity, regularization, swap_margin, training: bool):
    """(loss, (E_data [B], E_sample [B'], E_swapped [B, k], variables after the passes,
    data aux, sample aux)).

    data: Crystal [B, N]; samples: Crystal [B', N'] (gradient stopped);
    swapped: Crystal [k B, N], k copies of each data crystal in turn with two
    sites' species exchanged (k = 0: none). The loss is the contrastive loss
    of data and samples, plus `ranking_loss(E_data, E_swapped, swap_margin)`
    when k > 0. The swapped copies share the data's forward pass (and its
    capacity: the same geometry). With `training`, each of the two forward
    passes runs in training mode (`energy.training_variables`, e.g. one power
    iteration); otherwise the variables are frozen.
    """
    advance = energy.training_variables if training else (lambda v: v)
    batch_energy = jax.vmap(energy.energy, in_axes=(None, 0, None))
    b = data.species.shape[0]
    v_data = advance(variables)
    both = jax.tree.map(lambda x, y: jnp.concatenate([x, y]), data, swapped)
    e_both, aux_data = batch_energy(v_data, both, data_capacity)
    e_data, e_swapped = e_both[:b], e_both[b:].reshape(b, -1)
    v_sample = advance(v_data)
    e_sample, aux_sample = batch_energy(v_sample, jax.lax.stop_gradient(samples), sample_capacity)
    loss = contrastive_loss(e_data, e_sample, regularization)
    if e_swapped.shape[1]:
        loss = loss + ranking_loss(e_data, e_swapped, swap_margin)
    return loss, (e_data, e_sample, e_swapped, v_sample, aux_data, aux_sample)


def _metrics(loss, e_data, e_sample, e_swapped, aux_data, aux_sample):
    """Scalars for the log, plus `overflow` and the capacity `data_needs` / `sample_needs` ([M]);
    with swapped copies, their mean energy `e_swap` and `swaps_above_data`, the share of
    copies whose energy is above their data crystal's."""
    swaps = {} if not e_swapped.shape[1] else {
        "e_swap": jnp.mean(e_swapped),
        "swaps_above_data": jnp.mean(e_swapped > e_data[:, None])}
    return {
        "loss": loss,
        "e_data": jnp.mean(e_data),
        "e_sample": jnp.mean(e_sample),
        **swaps,
        "overflow": jnp.any(aux_data.overflow) | jnp.any(aux_sample.overflow),
        "data_needs": jnp.max(aux_data.needs, axis=0),
        "sample_needs": jnp.max(aux_sample.needs, axis=0),
    }


@functools.partial(jax.jit, static_argnames=("energy", "optimizer", "data_capacity", "sample_capacity"))
def update_step(state: TrainState, data: Crystal, samples: Crystal, regularization, *, swapped: Crystal,
                swap_margin, energy: Energy, optimizer: optax.GradientTransformation, data_capacity,
                sample_capacity):
    """One optimizer step on the loss of data [B, N], negatives [B', N'] and swapped
    copies [k B, N] (`losses`).

    regularization, swap_margin: [] float (traced: a new value does not
    recompile). Returns (new state, metrics): loss, e_data, e_sample (e_swap,
    swaps_above_data with swapped copies), overflow (a neighbour list exceeded
    its capacity: discard the result and repeat with more), data_needs and
    sample_needs.
    """
    params = state.variables["params"]

    def loss_fn(params):
        variables = dict(state.variables, params=params)
        return losses(energy, variables, data, samples, swapped, data_capacity, sample_capacity,
                      regularization, swap_margin, training=True)

    (loss, (e_data, e_sample, e_swapped, variables, aux_data, aux_sample)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    variables = dict(variables, params=optax.apply_updates(params, updates))
    new_state = state.replace(step=state.step + 1, opt_state=opt_state, variables=variables)
    return new_state, _metrics(loss, e_data, e_sample, e_swapped, aux_data, aux_sample)


@functools.partial(jax.jit, static_argnames=("energy", "data_capacity", "sample_capacity"))
def validation_step(state: TrainState, data: Crystal, samples: Crystal, regularization, *,
                    swapped: Crystal, swap_margin, energy: Energy, data_capacity, sample_capacity):
    """The metrics of `update_step` with frozen variables and no update."""
    loss, (e_data, e_sample, e_swapped, _, aux_data, aux_sample) = losses(
        energy, state.variables, data, samples, swapped, data_capacity, sample_capacity,
        regularization, swap_margin, training=False)
    return _metrics(loss, e_data, e_sample, e_swapped, aux_data, aux_sample)
