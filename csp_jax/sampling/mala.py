"""The annealed MALA kernel for one crystal (SPEC §3), as pure functions.

Owns the Metropolis-adjusted Langevin kernel on (X, L), the random initial
crystals, the geometric annealing schedule and the scanned chain. Batches of
chains, capacities and overflow are the host driver's (`csp_jax.sampling.driver`).

Factories return pure functions, as in jax-md and BlackJAX:

    init_fn, step_fn = mala(energy_fn, reduce_fn)
    state = init_fn(crystal)                                # one crystal
    state, info = step_fn(key, state, step_size, beta)

- `energy_fn(crystal) -> (energy [], aux)` takes ONE crystal; `aux` has the
  attributes of `csp_jax.energy.base.Aux`: `overflow` ([] bool, the evaluation
  exceeded its capacity and is not to be trusted) and `needs` ([M] int).
- `reduce_fn(positions [N, 3], lattice [3, 3]) -> (positions, lattice,
  converged)` re-describes the crystal (Niggli + wrap, `csp_jax.geometry.niggli.
  reduce_crystal` by default), differentiably in its inputs.

Padding atoms (species 0) get no noise and no drift, stay where they are, and
are left out of every sum. Lift one chain to a batch with `jax.vmap` (the
driver does, in chunks).
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from csp_jax.geometry.crystal import Crystal
from csp_jax.geometry.niggli import reduce_crystal

class MALAState(NamedTuple):
    """The chain state of one crystal, with what the next step needs cached.

    crystal:        Crystal, species [N], positions [N, 3], lattice [3, 3]
                    (reduced: the output of `reduce_fn`).
    energy:         [] H at the crystal.
    grad_positions: [N, 3] dH/dX at the crystal (zero for padding atoms).
    grad_lattice:   [3, 3] dH/dL at the crystal.
    overflow:       [] bool, the evaluation that gave energy and gradients
                    exceeded the energy's capacity (not to be trusted).
    """

    crystal: Crystal
    energy: jax.Array
    grad_positions: jax.Array
    grad_lattice: jax.Array
    overflow: jax.Array


class MALAInfo(NamedTuple):
    """Diagnostics of one step of one chain (all scalars).

    acceptance_probability: min(1, exp(log a)), 0 for a non-finite proposal.
    accepted:               the proposal was accepted.
    energy:                 H of the state after the step.
    overflow:               the proposal's energy evaluation overflowed its
                            capacity (the step is not to be trusted).
    finite:                 the proposal's energy, gradient and reduced cell
                            were finite (if not, it was rejected).
    reduce_converged:       the reduction of the proposal converged.
    needs:                  [M] int, what the proposal's evaluation needed of
                            the capacity (the aux's `needs`, e.g. image slots
                            and edges; empty for an energy without a capacity).
    """

    acceptance_probability: jax.Array
    accepted: jax.Array
    energy: jax.Array
    overflow: jax.Array
    finite: jax.Array
    reduce_converged: jax.Array
    needs: jax.Array


def _evaluate(energy_fn, crystal: Crystal):
    """One energy + gradient evaluation: (energy [], dH/dX [N, 3], dH/dL [3, 3], overflow [], needs [M])."""

    def energy_at(positions, lattice):
        return energy_fn(crystal.replace(positions=positions, lattice=lattice))

    (energy, aux), (grad_positions, grad_lattice) = jax.value_and_grad(
        energy_at, argnums=(0, 1), has_aux=True)(crystal.positions, crystal.lattice)
    grad_positions = jnp.where(crystal.mask[:, None], grad_positions, 0.0)
    return (energy, grad_positions, grad_lattice, jnp.asarray(aux.overflow, bool),
            jnp.asarray(aux.needs, jnp.int32))


def _log_q(to_positions, to_lattice, from_positions, from_lattice,
           grad_positions, grad_lattice, drift, step_size, mask):
    """log q(u | v) = -|u - v + alpha beta g(v)|^2 / (4 alpha) over real atoms and L.

    drift = alpha * beta; mask: [N] bool, real atoms.
    """
    residual_positions = to_positions - from_positions + drift * grad_positions
    residual_lattice = to_lattice - from_lattice + drift * grad_lattice
    squared = (jnp.sum(jnp.where(mask[:, None], residual_positions**2, 0.0))
               + jnp.sum(residual_lattice**2))
    return -squared / (4.0 * step_size)


def mala(energy_fn: Callable, reduce_fn: Callable = reduce_crystal):
    """The MALA kernel of SPEC §3 for one crystal: returns (init_fn, step_fn).

    energy_fn: crystal -> (energy [], aux with `overflow` and `needs`).
    reduce_fn: (positions [N, 3], lattice [3, 3]) -> (positions, lattice,
               converged), by default Niggli + wrap.

    `init_fn(crystal) -> MALAState` reduces the crystal and evaluates H and its
    gradient there. `step_fn(key, state, step_size, beta) -> (MALAState,
    MALAInfo)` makes one proposal with one energy+gradient evaluation; the
    noise depends on the key and the crystal's shapes only.
    """
    def reduce_real_atoms(mask, positions, lattice):
        """R(X, L) with padding atoms kept in place: ((positions, lattice), converged)."""
        positions_red, lattice_red, converged = reduce_fn(positions, lattice)
        return (jnp.where(mask[:, None], positions_red, positions), lattice_red), converged

    def init_fn(crystal: Crystal) -> MALAState:
        (positions, lattice), _ = reduce_real_atoms(crystal.mask, crystal.positions, crystal.lattice)
        crystal = crystal.replace(positions=positions, lattice=lattice)
        return MALAState(crystal, *_evaluate(energy_fn, crystal)[:4])

    def step_fn(key, state: MALAState, step_size, beta):
        crystal = state.crystal
        mask = crystal.mask
        positions_key, lattice_key, accept_key = jax.random.split(key, 3)
        noise_positions = jnp.where(mask[:, None], jax.random.normal(
            positions_key, crystal.positions.shape, crystal.positions.dtype), 0.0)
        noise_lattice = jax.random.normal(lattice_key, crystal.lattice.shape, crystal.lattice.dtype)

        # 1. Proposal: the same Langevin rule for X and all of L; noise not tempered.
        drift = step_size * beta
        noise_scale = jnp.sqrt(2.0 * step_size)
        positions = crystal.positions - drift * state.grad_positions + noise_scale * noise_positions
        lattice = crystal.lattice - drift * state.grad_lattice + noise_scale * noise_lattice

        # 2. Reduce, evaluate once at x'_r, pull the gradient back to x' through R.
        (positions_red, lattice_red), pullback, converged = jax.vjp(
            functools.partial(reduce_real_atoms, mask), positions, lattice, has_aux=True)
        proposal = crystal.replace(positions=positions_red, lattice=lattice_red)
        energy, grad_positions_red, grad_lattice_red, overflow, needs = _evaluate(energy_fn, proposal)
        grad_positions, grad_lattice = pullback((grad_positions_red, grad_lattice_red))

        # 3. Metropolis-Hastings with the unreduced proposal in both q terms.
        log_forward = _log_q(positions, lattice, crystal.positions, crystal.lattice,
                             state.grad_positions, state.grad_lattice, drift, step_size, mask)
        log_reverse = _log_q(crystal.positions, crystal.lattice, positions, lattice,
                             grad_positions, grad_lattice, drift, step_size, mask)
        finite = jnp.isfinite(energy)
        for array in (positions_red, lattice_red, grad_positions_red, grad_lattice_red,
                      grad_positions, grad_lattice):
            finite &= jnp.all(jnp.isfinite(array))
        log_accept = beta * (state.energy - energy) + log_reverse - log_forward
        log_accept = jnp.where(finite & ~jnp.isnan(log_accept), log_accept, -jnp.inf)

        # 4. Accept or stay.
        accepted = jnp.log(jax.random.uniform(accept_key, dtype=energy.dtype)) < log_accept
        proposed = MALAState(proposal, energy, grad_positions_red, grad_lattice_red, overflow)
        new_state = jax.tree.map(lambda new, old: jnp.where(accepted, new, old), proposed, state)
        info = MALAInfo(
            acceptance_probability=jnp.minimum(1.0, jnp.exp(log_accept)),
            accepted=accepted,
            energy=new_state.energy,
            overflow=overflow,
            finite=finite,
            reduce_converged=converged,
            needs=needs,
        )
        return new_state, info

    return init_fn, step_fn


def random_crystal(key, species, rho0: float) -> Crystal:
    """A random start (SPEC §3): L = c G, fractional coordinates uniform in [0, 1)^3.

    species: [N] int, 0 for padding. G is standard normal 3 x 3 and
    c = (n / (2 sqrt(2/pi)) / rho0)^(1/3), n the number of real atoms, so that
    E|det L| = n / rho0. Padding positions are zero. Not reduced: `init_fn`
    reduces. Returns a Crystal with positions [N, 3], lattice [3, 3].
    """
    species = jnp.asarray(species, jnp.int32)
    mask = species > 0
    num_atoms = jnp.sum(mask)
    scale = (num_atoms / (2.0 * np.sqrt(2.0 / np.pi)) / rho0) ** (1.0 / 3.0)
    lattice_key, frac_key = jax.random.split(key)
    lattice = scale * jax.random.normal(lattice_key, (3, 3))
    frac = jnp.where(mask[:, None], jax.random.uniform(frac_key, (species.shape[0], 3)), 0.0)
    return Crystal(species, frac @ lattice, lattice)


def annealing_schedule(num_steps: int, step_size: tuple[float, float], temperature: tuple[float, float]):
    """Geometric step sizes and temperatures (SPEC §3): (step_sizes [K], betas [K]).

    step_size, temperature: (first, last); beta = 1 / temperature. The
    paper's values are `csp_jax.config.SamplerConfig`'s defaults.
    """
    step_sizes = np.geomspace(step_size[0], step_size[1], num_steps)
    betas = 1.0 / np.geomspace(temperature[0], temperature[1], num_steps)
    return jnp.asarray(step_sizes), jnp.asarray(betas)


def run_chain(key, init_state: MALAState, step_fn, step_sizes, betas,
              record_every: int = 0, first_step=0):
    """One chain as a `lax.scan` over the schedule.

    step_sizes, betas: [K]. Step k uses the key `fold_in(key, first_step + k)`,
    so a chain run in segments (with `first_step` set) equals the chain run at
    once. Returns (final state, info [K], trajectory): the trajectory holds the
    states after steps r, 2r, ... ([K / r, ...]) for r = record_every > 0
    (K must be a multiple of r), and is None for r = 0.
    """
    num_steps = step_sizes.shape[0]
    schedule = (first_step + jnp.arange(num_steps), step_sizes, betas)

    def one_step(state, xs):
        step, step_size, beta = xs
        return step_fn(jax.random.fold_in(key, step), state, step_size, beta)

    if record_every == 0:
        state, info = lax.scan(one_step, init_state, schedule)
        return state, info, None
    if num_steps % record_every:
        raise ValueError(f"record_every={record_every} does not divide {num_steps} steps")
    blocks = jax.tree.map(lambda a: a.reshape(num_steps // record_every, record_every), schedule)

    def block(state, xs):
        state, info = lax.scan(one_step, state, xs)
        return state, (info, state)

    state, (info, trajectory) = lax.scan(block, init_state, blocks)
    info = jax.tree.map(lambda a: a.reshape((num_steps,) + a.shape[2:]), info)
    return state, info, trajectory
