"""Contrastive-divergence training of the energy (SPEC §4), as pure functions.

`train_step(state, batch, key) -> (state, metrics)` is one jitted pure function:
it samples negatives with the annealed MALA chain (frozen spectral state, as in
evaluation mode), stops their gradient, then advances the spectral-norm power
iteration once per training forward pass (data, then samples) and applies one
Adam step to

    loss = mean(E_data - E_sample) + lambda (mean(E_data^2) + mean(E_sample^2)).

Neighbour-capacity overflows anywhere (data or chain) come back in the metrics;
the host loop in `csp_jax.training_loop` grows the capacity and repeats the step.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from csp_jax.config import Config
from csp_jax.crystal import Crystal
from csp_jax.energy import EnergyModel
from csp_jax.neighbors import NeighborCapacity, neighbor_list
from csp_jax.sampler import annealing_schedule, chunked_vmap, mala, random_crystal, run_chain


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


class Batch(NamedTuple):
    """data: Crystal [B, N_data]; sample_species: [B, N_sample] int32 for the chains."""

    data: Crystal
    sample_species: jax.Array


def optimizer(config: Config) -> optax.GradientTransformation:
    """Adam, constant learning rate, no clipping, no weight decay (SPEC §4)."""
    t = config.train
    return optax.adam(t.learning_rate, b1=t.b1, b2=t.b2)


def init_train_state(config: Config, key) -> TrainState:
    """A fresh state; `key` is a raw [2] uint32 key (`jax.random.PRNGKey`)."""
    init_key, run_key = jax.random.split(key)
    variables = EnergyModel.from_config(config.model).init(init_key)
    return TrainState(jnp.zeros((), jnp.int32), variables,
                      optimizer(config).init(variables["params"]), run_key)


def schedule(config: Config, evaluation: bool = False):
    """(step_sizes [K], betas [K]) of the config's sampler.

    K is `sampler.num_steps` for training chains; with `evaluation`, it is
    `eval.num_steps` where set (evaluation and prediction chains), with the
    same end points.
    """
    s = config.sampler
    num_steps = config.eval.num_steps if evaluation and config.eval.num_steps else s.num_steps
    return annealing_schedule(num_steps, (s.step_size_start, s.step_size_end),
                              (s.temperature_start, s.temperature_end))


def sample_chains(model: EnergyModel, variables, species, key, capacity: NeighborCapacity,
                  step_sizes, betas):
    """Annealed MALA from random starts for species [B, N].

    Returns (final MALAState [B], MALAInfo [B, K], overflow [] bool: any
    neighbour list of the chains, the initial evaluations included, overflowed,
    needs [2]: the most image slots and edges any of them needed).
    """
    init_fn, step_fn = mala(lambda c: model.energy(variables, c, capacity))

    def chain(key, species):
        init_key, chain_key = jax.random.split(key)
        state = init_fn(random_crystal(init_key, species, model.rho0))
        final, info, _ = run_chain(chain_key, state, step_fn, step_sizes, betas)
        needs = jnp.maximum(neighbor_list(state.crystal, capacity).needs, jnp.max(info.needs, axis=0))
        return final, info, state.overflow | jnp.any(info.overflow), needs

    chunk = model.chains_per_chunk(capacity)
    final, info, overflow, needs = chunked_vmap(chain, chunk)(jax.random.split(key, species.shape[0]), species)
    return final, info, jnp.any(overflow), jnp.max(needs, axis=0)


def contrastive_loss(e_data, e_sample, regularization: float):
    """SPEC §4: mean(E_data - E_sample) + lambda (mean(E_data^2) + mean(E_sample^2))."""
    return (jnp.mean(e_data - e_sample)
            + regularization * (jnp.mean(e_data**2) + jnp.mean(e_sample**2)))


def losses(model: EnergyModel, variables, batch_data: Crystal, samples: Crystal,
           data_capacity, sample_capacity, regularization, update_spectral: bool):
    """(loss, (E_data [B], E_sample [B], spectral state, data neighbour lists, sample neighbour lists)).

    With `update_spectral`, one power iteration precedes each of the two
    forward passes (training mode); otherwise the spectral state is frozen.
    """
    advance = model.power_iteration if update_spectral else (lambda v: v)
    v_data = advance(variables)
    e_data, nb_data = model.batch_energy(v_data, batch_data, data_capacity)
    v_sample = advance(v_data)
    e_sample, nb_sample = model.batch_energy(v_sample, samples, sample_capacity)
    loss = contrastive_loss(e_data, e_sample, regularization)
    return loss, (e_data, e_sample, v_sample["spectral"], nb_data, nb_sample)


def _metrics(loss, e_data, e_sample, info, chain_overflow, chain_needs, nb_data, nb_sample):
    """Scalars for the log, plus `overflow` and the capacity `data_needs` / `sample_needs` ([2])."""
    return {
        "loss": loss,
        "e_data": jnp.mean(e_data),
        "e_sample": jnp.mean(e_sample),
        "acceptance": jnp.mean(info.acceptance_probability),
        "overflow": chain_overflow | jnp.any(nb_data.overflow) | jnp.any(nb_sample.overflow),
        "data_needs": jnp.max(nb_data.needs, axis=0),
        "sample_needs": jnp.maximum(chain_needs, jnp.max(nb_sample.needs, axis=0)),
    }


@functools.partial(jax.jit, static_argnames=("config", "data_capacity", "sample_capacity"))
def train_step(state: TrainState, batch: Batch, key, *, config: Config,
               data_capacity: NeighborCapacity, sample_capacity: NeighborCapacity):
    """One training step: negatives by MALA, then one Adam step on the loss.

    Returns (new state, metrics): loss, e_data, e_sample, acceptance (mean
    acceptance probability over chains and steps) and overflow (a neighbour
    list exceeded its capacity: discard the result and repeat with more).
    """
    model = EnergyModel.from_config(config.model)
    step_sizes, betas = schedule(config)
    final, info, chain_overflow, chain_needs = sample_chains(
        model, state.variables, batch.sample_species, key, sample_capacity, step_sizes, betas)
    samples = jax.lax.stop_gradient(final.crystal)

    def loss_fn(params):
        variables = {"params": params, "spectral": state.variables["spectral"]}
        return losses(model, variables, batch.data, samples, data_capacity, sample_capacity,
                      config.train.regularization, update_spectral=True)

    (loss, (e_data, e_sample, spectral, nb_data, nb_sample)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.variables["params"])
    updates, opt_state = optimizer(config).update(grads, state.opt_state, state.variables["params"])
    params = optax.apply_updates(state.variables["params"], updates)
    new_state = state.replace(step=state.step + 1, opt_state=opt_state,
                              variables={"params": params, "spectral": spectral})
    return new_state, _metrics(loss, e_data, e_sample, info, chain_overflow, chain_needs, nb_data, nb_sample)


@functools.partial(jax.jit, static_argnames=("config", "data_capacity", "sample_capacity"))
def eval_step(state: TrainState, batch: Batch, key, *, config: Config,
              data_capacity: NeighborCapacity, sample_capacity: NeighborCapacity):
    """The validation loss of one batch: as `train_step`, with no update (metrics only)."""
    model = EnergyModel.from_config(config.model)
    step_sizes, betas = schedule(config)
    final, info, chain_overflow, chain_needs = sample_chains(
        model, state.variables, batch.sample_species, key, sample_capacity, step_sizes, betas)
    loss, (e_data, e_sample, _, nb_data, nb_sample) = losses(
        model, state.variables, batch.data, final.crystal, data_capacity, sample_capacity,
        config.train.regularization, update_spectral=False)
    return _metrics(loss, e_data, e_sample, info, chain_overflow, chain_needs, nb_data, nb_sample)
