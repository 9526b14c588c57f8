"""The energy interface: what the sampler, the trainer, evaluation and prediction need.

Any hashable object with these members can be sampled, trained, evaluated and
used for prediction (`tests/test_toy_energy.py` runs a pairwise energy through
all of them). `csp_jax.energy.EnergyModel` is the paper's.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from csp_jax.geometry.crystal import Crystal


class Aux(NamedTuple):
    """The least an energy's aux output holds (a `NeighborList` holds these and more).

    overflow: [] bool, the capacity was too small: H is not to be trusted.
    needs:    [M] int, what the capacity had to hold ([0] for an energy without one).
    """

    overflow: jax.Array
    needs: jax.Array

    @classmethod
    def none(cls) -> "Aux":
        """No overflow, no capacity: the aux of an energy that needs none."""
        return cls(jnp.array(False), jnp.zeros((0,), jnp.int32))


@runtime_checkable
class Energy(Protocol):
    """An energy H(A, X, L) of one crystal with explicit variables.

    rho0:            reference density (atoms per A^3) of the chains' random
                     starts (SPEC §3: E|det L| = n / rho0).
    edges_per_chunk: the energy's declared cost: how many pair edges (chains x
                     edge capacity) to vmap together; the chain driver sizes its
                     chunks of chains by it (`csp_jax.sampling.driver.chains_per_chunk`).

    The object must be hashable and equal by value (compilations are cached
    on it). Its energy must be differentiable in `crystal.positions` and
    `crystal.lattice` and written for ONE crystal (it is lifted with vmap).
    """

    rho0: float
    edges_per_chunk: int

    def init(self, key) -> dict:
        """Fresh variables `{"params": ..., ...}`; only "params" is trained."""

    def energy(self, variables, crystal: Crystal, capacity) -> tuple[jax.Array, Any]:
        """(H [], aux): aux has the attributes of `Aux` (`overflow`, `needs`), which the
        sampler and the training step read. `capacity` is hashable, with `grow(*needs)` and
        `fit(*needs)` (a `NeighborCapacity`)."""

    def training_variables(self, variables) -> dict:
        """The variables of one training-mode forward pass (e.g. one spectral-norm
        power iteration); the identity for an energy without such state."""
