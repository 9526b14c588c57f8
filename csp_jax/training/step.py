"""Contrastive-divergence training of an energy (SPEC §4), as pure functions.

A training step is: negatives from the chain driver (`csp_jax.sampling.sample`,
with the frozen spectral state, as in evaluation mode), then `update_step`, one
jitted pure function of `(state, data, samples)` that combines the data energy
with the sampled negatives' energy,

    loss = mean(E_data) - mean(E_sample) + lambda (mean(E_data^2) + mean(E_sample^2)),

(one training-mode forward pass each, data then samples: one spectral-norm
power iteration before each) and applies one Adam step. `validation_step` is
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
from csp_jax.energy.continuousp import EnergyModel
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


def config_energy(config: Config) -> EnergyModel:
    """The energy a config describes when no other is given: ContinuouSP's, sized by `config.model`."""
    return EnergyModel.from_config(config.model)


def init_train_state(config: Config, key, energy: Energy | None = None) -> TrainState:
    """A fresh state for training `energy` (None: `config_energy(config)`) with the config's
    optimizer; `key` is a raw [2] uint32 key (`jax.random.PRNGKey`)."""
    init_key, run_key = jax.random.split(key)
    variables = (config_energy(config) if energy is None else energy).init(init_key)
    return TrainState(jnp.zeros((), jnp.int32), variables,
                      optimizer(config.train).init(variables["params"]), run_key)


def contrastive_loss(e_data, e_sample, regularization):
    """SPEC §4: mean(E_data) - mean(E_sample) + lambda (mean(E_data^2) + mean(E_sample^2));
    e_data [B], e_sample [B'] (B' = B for the chains alone, more with swapped negatives)."""
    return (jnp.mean(e_data) - jnp.mean(e_sample)
            + regularization * (jnp.mean(e_data**2) + jnp.mean(e_sample**2)))


def losses(energy: Energy, variables, data: Crystal, samples: Crystal,
           data_capacity, sample_capacity, regularization, training: bool):
    """(loss, (E_data [B], E_sample [B'], variables after the passes, data aux, sample aux)).

    data: Crystal [B, N]; samples: Crystal [B', N'] (gradient stopped). With
    `training`, each of the two forward passes runs in training mode
    (`energy.training_variables`, e.g. one power iteration); otherwise the
    variables are frozen.
    """
    advance = energy.training_variables if training else (lambda v: v)
    batch_energy = jax.vmap(energy.energy, in_axes=(None, 0, None))
    v_data = advance(variables)
    e_data, aux_data = batch_energy(v_data, data, data_capacity)
    v_sample = advance(v_data)
    e_sample, aux_sample = batch_energy(v_sample, jax.lax.stop_gradient(samples), sample_capacity)
    loss = contrastive_loss(e_data, e_sample, regularization)
    return loss, (e_data, e_sample, v_sample, aux_data, aux_sample)


def _metrics(loss, e_data, e_sample, aux_data, aux_sample):
    """Scalars for the log, the energies `data_energies` [B] and `sample_energies` [B'], plus
    `overflow` and the capacity `data_needs` / `sample_needs` ([M])."""
    return {
        "loss": loss,
        "e_data": jnp.mean(e_data),
        "e_sample": jnp.mean(e_sample),
        "data_energies": e_data,
        "sample_energies": e_sample,
        "overflow": jnp.any(aux_data.overflow) | jnp.any(aux_sample.overflow),
        "data_needs": jnp.max(aux_data.needs, axis=0),
        "sample_needs": jnp.max(aux_sample.needs, axis=0),
    }


@functools.partial(jax.jit, static_argnames=("energy", "optimizer", "data_capacity", "sample_capacity"))
def update_step(state: TrainState, data: Crystal, samples: Crystal, regularization, *, energy: Energy,
                optimizer: optax.GradientTransformation, data_capacity, sample_capacity):
    """One optimizer step on the contrastive loss of data [B, N] and negatives [B', N'].

    regularization: [] float, lambda of the loss (traced: a new value does not
    recompile). Returns (new state, metrics): loss, e_data, e_sample, overflow
    (a neighbour list exceeded its capacity: discard the result and repeat
    with more), data_needs and sample_needs.
    """
    params = state.variables["params"]

    def loss_fn(params):
        variables = dict(state.variables, params=params)
        return losses(energy, variables, data, samples, data_capacity, sample_capacity,
                      regularization, training=True)

    (loss, (e_data, e_sample, variables, aux_data, aux_sample)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    variables = dict(variables, params=optax.apply_updates(params, updates))
    new_state = state.replace(step=state.step + 1, opt_state=opt_state, variables=variables)
    return new_state, _metrics(loss, e_data, e_sample, aux_data, aux_sample)


@functools.partial(jax.jit, static_argnames=("energy", "data_capacity", "sample_capacity"))
def validation_step(state: TrainState, data: Crystal, samples: Crystal, regularization, *,
                    energy: Energy, data_capacity, sample_capacity):
    """The metrics of `update_step` with frozen variables and no update."""
    loss, (e_data, e_sample, _, aux_data, aux_sample) = losses(
        energy, state.variables, data, samples, data_capacity, sample_capacity,
        regularization, training=False)
    return _metrics(loss, e_data, e_sample, aux_data, aux_sample)
