"""The energy H(A, X, L) = NN + density penalty (SPEC §2), as pure functions.

`EnergyModel` is a small frozen (hashable) description of the network; its
methods are pure functions of explicit variables `{"params", "spectral"}`:

    model = EnergyModel.from_config(get_config("perov5").model)
    variables = model.init(jax.random.key(0))
    energy, nbrs = model.energy(variables, crystal, capacity)   # one crystal

`energy` is differentiable with respect to `crystal.positions` and
`crystal.lattice` and composes with `jax.vmap`, `jax.jit` and `lax.scan`.
`nbrs.overflow` says the neighbour capacity was too small (see
`csp_jax.geometry.neighbors`); the energy is then not to be trusted. A degenerate crystal
(non-finite, zero volume, or needing more than `MAX_IMAGE_SLOTS` translations)
has energy NaN.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from csp_jax.config import ModelConfig
from csp_jax.energy import native
from csp_jax.energy.network import CGCNN, power_iteration_step
from csp_jax.geometry.crystal import Crystal
from csp_jax.geometry.neighbors import (
    NeighborCapacity, NeighborList, cutoff_radius, edge_vectors, neighbor_list, safe_norm)

# Pair-edge features (chains x edges x width) per vmapped chunk of chains,
# measured best on a 2-core CPU with 1 MB of L2 per core (docs/performance.md):
# with XLA ops, whose per-edge arrays should stay in cache, and with the fused
# CPU kernel (`csp_jax.energy.native`), which keeps only the matmuls' outputs.
CHUNK_WORK = 2**18
CHUNK_WORK_NATIVE = 2**21


def density_penalty(crystal: Crystal, rho0: float, weight: float) -> jax.Array:
    """weight * log(rho / rho0)^2 with rho = n / |det L|. Shape [...]."""
    rho = crystal.num_atoms / crystal.volume
    return weight * jnp.log(rho / rho0) ** 2


@dataclasses.dataclass(frozen=True)
class EnergyModel:
    """ContinuouSP's energy: CGCNN' of width `features` plus the density penalty.

    Implements `csp_jax.energy.base.Energy`.
    """

    features: int
    num_conv: int
    num_fc: int
    rho0: float = ModelConfig.rho0
    density_weight: float = ModelConfig.density_weight

    @classmethod
    def from_config(cls, cfg) -> "EnergyModel":
        """From any object with the fields of this class (e.g. a config's `model`)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})

    @property
    def edges_per_chunk(self) -> int:
        """Pair edges (chains x edge capacity) to vmap together: CHUNK_WORK(_NATIVE) features
        per chunk over `features` per edge (the `Energy` interface's declared cost)."""
        return (CHUNK_WORK_NATIVE if native.active() else CHUNK_WORK) // self.features

    @property
    def network(self) -> CGCNN:
        return CGCNN(self.features, self.num_conv, self.num_fc)

    def init(self, key) -> dict:
        """Random variables `{"params": ..., "spectral": ...}` (float32)."""
        species = jnp.array([1], jnp.int32)
        dist = jnp.ones((1,), jnp.float32)
        index = jnp.zeros((1,), jnp.int32)
        variables = self.network.init(key, species, dist, 3.0, index, index, jnp.ones((1,), bool))
        return {"params": variables["params"], "spectral": variables.get("spectral", {})}  # none if num_fc = 1

    def network_output(self, variables, crystal: Crystal, nbrs: NeighborList) -> jax.Array:
        """NN(A, X, L) for one crystal given its neighbour list (scalar)."""
        vectors = edge_vectors(crystal, nbrs)
        dist = safe_norm(vectors, nbrs.edge_mask)
        return self.network.apply(
            variables, crystal.species, dist, cutoff_radius(crystal),
            nbrs.senders, nbrs.receivers, nbrs.edge_mask)

    def energy(self, variables, crystal: Crystal, capacity: NeighborCapacity):
        """H for one crystal (species [N]): returns (energy scalar, NeighborList)."""
        nbrs = neighbor_list(crystal, capacity)
        nn_out = self.network_output(variables, crystal, nbrs)
        energy = nn_out + density_penalty(crystal, self.rho0, self.density_weight)
        return jnp.where(nbrs.valid, energy, jnp.nan), nbrs

    def batch_energy(self, variables, crystals: Crystal, capacity: NeighborCapacity):
        """H for a batch (species [B, N]): returns (energies [B], NeighborList [B, ...])."""
        return jax.vmap(self.energy, in_axes=(None, 0, None))(variables, crystals, capacity)

    @staticmethod
    def training_variables(variables) -> dict:
        """One training-mode forward pass: every spectral-norm layer's (u, v)
        advanced by one power iteration."""
        params = traverse_util.flatten_dict(variables["params"])
        spectral = traverse_util.flatten_dict(variables["spectral"], sep=None)
        updated = {}
        for path, value in spectral.items():
            if path[-1] != "u":
                continue
            module = path[:-2]
            kernel = jax.lax.stop_gradient(params[module + ("kernel",)])
            u, v = power_iteration_step(kernel, value, spectral[module + ("uv", "v")])
            updated[module + ("uv", "u")] = u
            updated[module + ("uv", "v")] = v
        return {"params": variables["params"], "spectral": traverse_util.unflatten_dict(updated)}


def num_parameters(variables) -> int:
    """Number of trainable parameters (the spectral-norm vectors are state, not counted)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(variables["params"])))
