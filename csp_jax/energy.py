"""The energy H(A, X, L) = NN + density penalty (SPEC §2), as pure functions.

`EnergyModel` is a small frozen (hashable) description of the network; its
methods are pure functions of explicit variables `{"params", "spectral"}`:

    model = EnergyModel.from_config(get_config("perov5").model)
    variables = model.init(jax.random.key(0))
    energy, nbrs = model.energy(variables, crystal, capacity)   # one crystal

`energy` is differentiable with respect to `crystal.positions` and
`crystal.lattice` and composes with `jax.vmap`, `jax.jit` and `lax.scan`.
`nbrs.overflow` says the neighbour capacity was too small (see
`csp_jax.neighbors`); the energy is then not to be trusted. A degenerate crystal
(non-finite, zero volume, or needing more than `MAX_IMAGE_SLOTS` translations)
has energy NaN.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from csp_jax import native
from csp_jax.crystal import Crystal
from csp_jax.model import CGCNN, power_iteration_step
from csp_jax.neighbors import (
    NeighborCapacity, NeighborList, cutoff_radius, edge_vectors, neighbor_list, safe_norm)

# Pair-edge features (edges x width) per vmapped chunk of chains, measured best
# on a 2-core CPU with 1 MB of L2 per core (docs/performance.md): with XLA ops,
# whose per-edge arrays should stay in cache, and with the fused CPU kernel
# (`csp_jax.native`), which keeps only the matmuls' outputs.
CHUNK_WORK = 2**18
CHUNK_WORK_NATIVE = 2**21


def density_penalty(crystal: Crystal, rho0: float, weight: float) -> jax.Array:
    """weight * log(rho / rho0)^2 with rho = n / |det L|. Shape [...]."""
    rho = crystal.num_atoms / crystal.volume
    return weight * jnp.log(rho / rho0) ** 2


@dataclasses.dataclass(frozen=True)
class EnergyModel:
    """ContinuouSP's energy: CGCNN' of width `features` plus the density penalty."""

    features: int
    num_conv: int
    num_fc: int
    rho0: float = 0.05
    density_weight: float = 1.0

    @classmethod
    def from_config(cls, cfg) -> "EnergyModel":
        """From any object with the fields of this class (e.g. a config's `model`)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})

    @property
    def network(self) -> CGCNN:
        return CGCNN(self.features, self.num_conv, self.num_fc)

    def init(self, key) -> dict:
        """Random variables `{"params": ..., "spectral": ...}` (float32)."""
        species = jnp.array([1], jnp.int32)
        dist = jnp.ones((1,), jnp.float32)
        index = jnp.zeros((1,), jnp.int32)
        variables = self.network.init(key, species, dist, 3.0, index, index, jnp.ones((1,), bool))
        return {"params": variables["params"], "spectral": variables["spectral"]}

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

    @property
    def energy_fn(self) -> "EnergyFnFactory":
        """`capacity -> ((crystal, variables) -> (energy, NeighborList))`, the
        `make_energy_fn` that `csp_jax.sampler.sample` takes. Equal models give
        equal factories, so the sampler's compiled functions are shared."""
        return EnergyFnFactory(self)

    def chains_per_chunk(self, capacity: NeighborCapacity) -> int:
        """Chains to vmap together when a batch runs in chunks (`sampler.chunked_vmap`).

        The largest power of two, at least 1, with at most CHUNK_WORK pair-edge
        features (chains x edge capacity x width) per chunk, so that a chunk's
        per-edge arrays stay in cache: 16 for perov5 (5 atoms), 2 for mp20 (20);
        with the fused CPU kernel CHUNK_WORK_NATIVE: 128 and 16.
        """
        work = CHUNK_WORK_NATIVE if native.active() else CHUNK_WORK
        target = max(1, work // (capacity.max_edges * self.features))
        return 1 << (target.bit_length() - 1)

    def batch_energy(self, variables, crystals: Crystal, capacity: NeighborCapacity):
        """H for a batch (species [B, N]): returns (energies [B], NeighborList [B, ...])."""
        return jax.vmap(self.energy, in_axes=(None, 0, None))(variables, crystals, capacity)

    @staticmethod
    def power_iteration(variables) -> dict:
        """Advance every spectral-norm layer's (u, v) by one power iteration."""
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


@dataclasses.dataclass(frozen=True)
class EnergyFnFactory:
    """Hashable by value: `EnergyFnFactory(model)(capacity)(crystal, variables)`."""

    model: EnergyModel

    def __call__(self, capacity: NeighborCapacity):
        return lambda crystal, variables: self.model.energy(variables, crystal, capacity)

    def chains_per_chunk(self, capacity: NeighborCapacity) -> int:
        return self.model.chains_per_chunk(capacity)


def num_parameters(variables) -> int:
    """Number of trainable parameters (the spectral-norm vectors are state, not counted)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(variables["params"])))
