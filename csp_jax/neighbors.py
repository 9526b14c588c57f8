"""Periodic neighbour lists under jit (SPEC §2.1-2.2), with fixed capacities.

For one crystal with cutoff D, an edge is every ordered pair (i, j) of real atoms
and lattice translation k in Z^3 with `1e-4 < |x_j + k L - x_i|^2 <= D^2`;
messages flow from the image of j to i. Candidates are enumerated over a fixed
image grid `[-R, R]^3` and selected into a fixed edge capacity with
`jnp.nonzero(size=...)`. When a crystal needs more images than R (thin cells) or
more edges than the capacity, the list carries `overflow = True`: callers check
it on the host and rebuild with `capacity.grow()`. Nothing is dropped silently.

The list holds integer data only (indices and translations); distances are
recomputed differentiably from positions and lattice by `edge_vectors`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from csp_jax.crystal import Crystal

CUTOFF_SCALE = 3.0  # D = 3 (V / n)^(1/3)
MIN_DIST_SQ = 1e-4  # pairs closer than 0.01 A carry no edge
# Mean number of neighbours per atom at any density: (4/3) pi 3^3.
MEAN_NEIGHBORS = 4.0 / 3.0 * math.pi * CUTOFF_SCALE**3


class NeighborCapacity(NamedTuple):
    """Static capacities of a neighbour list (hashable: a jit static argument).

    max_image: R, translations k with |k_a| <= R along each axis.
    max_edges: E, edges per crystal.
    """

    max_image: int
    max_edges: int

    @classmethod
    def for_atoms(cls, max_atoms: int, max_image: int = 3, edge_factor: float = 1.5):
        """A capacity for crystals of up to `max_atoms` atoms.

        The edge capacity is `edge_factor` times the mean edge count
        `MEAN_NEIGHBORS * max_atoms` (rounded up to a multiple of 64).
        """
        edges = int(math.ceil(edge_factor * MEAN_NEIGHBORS * max_atoms / 64.0)) * 64
        return cls(max_image, edges)

    def grow(self, needed_image: int = 0, needed_edges: int = 0) -> "NeighborCapacity":
        """A larger capacity: at least what was needed, and at least 1.5x the edges."""
        return NeighborCapacity(
            max(self.max_image, int(needed_image)),
            max(int(math.ceil(1.5 * self.max_edges / 64.0)) * 64,
                int(math.ceil(1.2 * needed_edges / 64.0)) * 64),
        )


@struct.dataclass
class NeighborList:
    """Padded edges of one crystal (`[E]`) or a batch (`[B, E]`).

    senders:    [..., E] int32, j (the atom whose image sends the message).
    receivers:  [..., E] int32, i.
    shifts:     [..., E, 3] float, integer translation s with vector
                `x_j + s L - x_i` in the crystal's own (unwrapped) coordinates.
    edge_mask:  [..., E] bool, real edges.
    num_edges:  [...] int32, edges the crystal has (may exceed E).
    image_range: [..., 3] int32, translations the crystal needs per axis.
    overflow:   [...] bool, the list is incomplete (more edges or images than
                the capacity); results computed from it must not be used.
    """

    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    edge_mask: jax.Array
    num_edges: jax.Array
    image_range: jax.Array
    overflow: jax.Array


def cutoff_radius(crystal: Crystal) -> jax.Array:
    """D = 3 (|det L| / n)^(1/3), differentiable in the lattice. Shape [...]."""
    n = jnp.maximum(crystal.num_atoms, 1).astype(crystal.positions.dtype)
    return CUTOFF_SCALE * (crystal.volume / n) ** (1.0 / 3.0)


def image_range(lattice: jax.Array, cutoff: jax.Array) -> jax.Array:
    """Translations needed per axis, `ceil(D / h_a)` with h_a the interplanar spacing.

    lattice: [3, 3] rows a, b, c; cutoff: scalar. Returns [3] int32.
    `1 / h_a = |b x c| / |det L|` (and cyclically).
    """
    recip_norms = jnp.linalg.norm(jnp.linalg.inv(lattice), axis=0)  # |column a of L^-1| = 1/h_a
    return jnp.ceil(cutoff * recip_norms).astype(jnp.int32)


def image_grid(max_image: int) -> np.ndarray:
    """All translations in [-R, R]^3, shape [(2R+1)^3, 3] float32."""
    r = np.arange(-max_image, max_image + 1)
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)


def neighbor_list(crystal: Crystal, capacity: NeighborCapacity, cutoff=None) -> NeighborList:
    """The neighbour list of one crystal (species [N]); vmap it for a batch.

    Computed without gradient: it only decides which (i, j, s) are edges. The
    positions need not be wrapped into the cell.
    """
    crystal = jax.lax.stop_gradient(crystal)
    lattice, mask = crystal.lattice, crystal.mask
    cutoff = cutoff_radius(crystal) if cutoff is None else jax.lax.stop_gradient(cutoff)
    n_atoms = mask.shape[0]

    frac = crystal.frac
    cell = jnp.floor(frac)  # wrap: x_w = x - cell L, fractional coordinates in [0, 1)
    frac_w = frac - cell
    images = jnp.asarray(image_grid(capacity.max_image), frac.dtype)  # [I, 3]

    # Candidate (i, j, k): fractional difference f_j + k - f_i, shape [N, N, I, 3].
    dfrac = frac_w[None, :, None, :] - frac_w[:, None, None, :] + images[None, None, :, :]
    dist_sq = jnp.sum((dfrac @ lattice) ** 2, axis=-1)
    pair_mask = mask[:, None] & mask[None, :]
    is_edge = (dist_sq > MIN_DIST_SQ) & (dist_sq <= cutoff**2) & pair_mask[:, :, None]

    num_edges = jnp.sum(is_edge).astype(jnp.int32)
    (flat,) = jnp.nonzero(is_edge.reshape(-1), size=capacity.max_edges, fill_value=0)
    n_img = images.shape[0]
    receivers = (flat // (n_atoms * n_img)).astype(jnp.int32)
    senders = ((flat // n_img) % n_atoms).astype(jnp.int32)
    image = images[flat % n_img]
    edge_mask = jnp.arange(capacity.max_edges) < num_edges
    # Translation in unwrapped coordinates: x_w_j + k L - x_w_i = x_j - x_i + (k - c_j + c_i) L.
    shifts = image - cell[senders] + cell[receivers]
    shifts = jnp.where(edge_mask[:, None], shifts, 0.0)

    needed = jnp.where(jnp.any(mask), image_range(lattice, cutoff), 0)
    overflow = (num_edges > capacity.max_edges) | jnp.any(needed > capacity.max_image)
    return NeighborList(senders, receivers, shifts, edge_mask, num_edges, needed, overflow)


def edge_vectors(crystal: Crystal, nbrs: NeighborList) -> jax.Array:
    """[E, 3] vectors `x_j + s L - x_i` of one crystal, differentiable in X and L."""
    x = crystal.positions
    return x[nbrs.senders] - x[nbrs.receivers] + nbrs.shifts @ crystal.lattice


def safe_norm(vectors: jax.Array, mask: jax.Array) -> jax.Array:
    """[E] lengths of `vectors: [E, 3]`, with finite gradients on masked (zero) rows."""
    sq = jnp.sum(vectors**2, axis=-1)
    return jnp.where(mask, jnp.sqrt(jnp.where(mask, sq, 1.0)), 0.0)
