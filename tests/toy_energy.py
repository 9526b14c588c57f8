"""A toy energy that lives outside the package: a config names it `toy_energy:PairSpringEnergy`
(with this folder on the Python path), as a user names their own energy."""
import dataclasses

import jax.numpy as jnp

from csp_jax.energy import density_penalty
from csp_jax.geometry.neighbors import cutoff_radius, edge_vectors, neighbor_list, safe_norm

IMPORT_PATH = "toy_energy:PairSpringEnergy"


@dataclasses.dataclass(frozen=True)
class PairSpringEnergy:
    """Springs of rest length r0 between neighbours, weighted like ContinuouSP's edges, per atom,
    plus the density penalty: 0.01 sum_edges w(d) (d - r0)^2 / n + log(rho / rho0)^2."""

    rho0: float = 0.05
    edges_per_chunk: int = 2**18

    def init(self, key):
        return {"params": {"r0": jnp.array(2.5)}}

    def energy(self, variables, crystal, capacity):
        nbrs = neighbor_list(crystal, capacity)
        d = safe_norm(edge_vectors(crystal, nbrs), nbrs.edge_mask)
        w = 1.0 + jnp.cos(jnp.pi * d / cutoff_radius(crystal))
        springs = jnp.sum(jnp.where(nbrs.edge_mask, w * (d - variables["params"]["r0"]) ** 2, 0.0))
        energy = 0.01 * springs / crystal.num_atoms + density_penalty(crystal, self.rho0, 1.0)
        return jnp.where(nbrs.valid, energy, jnp.nan), nbrs

    def training_variables(self, variables):
        return variables
