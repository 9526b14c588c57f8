"""Periodic neighbour lists under jit (SPEC §2.1-2.2), with fixed capacities.

For one crystal with cutoff D, an edge is every ordered pair (i, j) of real atoms
and lattice translation k in Z^3 with `1e-4 < |x_j + k L - x_i|^2 <= D^2`;
messages flow from the image of j to i. The translations needed are the box
`|k_a| <= ceil(D / h_a)` (h_a the interplanar spacings), enumerated into a fixed
number of image slots (mixed-radix over the box, so thin cells use long boxes
along one axis without a larger cube); candidates are then selected into a
fixed edge capacity with `jnp.nonzero(size=...)`. When a crystal needs more
image slots or edges than the capacity, the list carries `overflow = True`:
callers check it on the host and rebuild with `capacity.grow()`. Nothing is
dropped silently.

The list holds integer data only (indices and translations); distances are
recomputed differentiably from positions and lattice by `edge_vectors`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jraph
from flax import struct

from csp_jax.crystal import Crystal

CUTOFF_SCALE = 3.0  # D = 3 (V / n)^(1/3)
MIN_DIST_SQ = 1e-4  # pairs closer than 0.01 A carry no edge
# Mean number of neighbours per atom at any density: (4/3) pi 3^3.
MEAN_NEIGHBORS = 4.0 / 3.0 * math.pi * CUTOFF_SCALE**3
# A cell needing more translations than this is degenerate (a needle or a sheet
# far thinner than its cutoff): its list is marked invalid, never allocated.
MAX_IMAGE_SLOTS = 32768


class NeighborCapacity(NamedTuple):
    """Static capacities of a neighbour list (hashable: a jit static argument).

    max_images: I, lattice translations per crystal (the box of `image_range`
                holds prod(2 n_a + 1) of them; 343 = 7^3 by default).
    max_edges:  E, edges per crystal.
    """

    max_images: int
    max_edges: int

    @classmethod
    def for_atoms(cls, max_atoms: int, max_images: int = 343, edge_factor: float = 1.25):
        """A capacity for crystals of up to `max_atoms` atoms.

        The edge capacity is `edge_factor` times the mean edge count
        `MEAN_NEIGHBORS * max_atoms` (rounded up to a multiple of 64).
        """
        return cls(max_images, _round64(edge_factor * MEAN_NEIGHBORS * max_atoms))

    def grow(self, needed_images: int = 0, needed_edges: int = 0) -> "NeighborCapacity":
        """A capacity that holds what was needed (`NeighborList.needs`), with some room.

        Only the part that overflowed grows (images to 1.25x, edges to 1.1x the
        need); with no need given, both grow 1.5x.
        """
        needed_images, needed_edges = int(needed_images), int(needed_edges)
        if needed_images <= self.max_images and needed_edges <= self.max_edges:
            return NeighborCapacity(int(math.ceil(1.5 * self.max_images)), _round64(1.5 * self.max_edges))
        images = self.max_images if needed_images <= self.max_images else int(math.ceil(1.25 * needed_images))
        edges = self.max_edges if needed_edges <= self.max_edges else _round64(1.1 * needed_edges)
        return NeighborCapacity(images, edges)


def _round64(x: float) -> int:
    return int(math.ceil(x / 64.0)) * 64


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
    num_images: [...] int32, image slots the crystal needs, prod(2 n_a + 1).
    overflow:   [...] bool, the list is incomplete (more edges or images than
                the capacity); results computed from it must not be used.
    valid:      [...] bool, the crystal is finite with positive volume and
                needs at most MAX_IMAGE_SLOTS translations. An invalid
                crystal has no edges, never overflows and needs nothing; the
                energy is NaN there (MALA rejects such a proposal).
    """

    senders: jax.Array
    receivers: jax.Array
    shifts: jax.Array
    edge_mask: jax.Array
    num_edges: jax.Array
    image_range: jax.Array
    num_images: jax.Array
    overflow: jax.Array
    valid: jax.Array

    @property
    def needs(self) -> jax.Array:
        """[..., 2] int32: (image slots, edges) this crystal needs; `capacity.grow(*needs)`."""
        return jnp.stack([self.num_images, self.num_edges], axis=-1)


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


def image_slots(ranges: jax.Array, max_images: int, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The box of translations |k_a| <= n_a in `max_images` slots (mixed radix).

    ranges: [3] int32, n_a in [0, MAX_IMAGE_SLOTS]. Returns (images [I, 3]
    float, valid [I] bool, needed [] int32 = prod(2 n_a + 1), or
    MAX_IMAGE_SLOTS + 1 when larger); slots past `needed` are invalid.
    """
    sizes = 2 * ranges + 1
    slot = jnp.arange(max_images)
    k_c = slot % sizes[2]
    k_b = (slot // sizes[2]) % sizes[1]
    k_a = slot // (sizes[1] * sizes[2])
    images = jnp.stack([k_a, k_b, k_c], axis=-1) - ranges
    product = jnp.prod(sizes.astype(jnp.float32))  # exact up to 2^24, no int32 overflow
    needed = jnp.where(product <= MAX_IMAGE_SLOTS, product, MAX_IMAGE_SLOTS + 1).astype(jnp.int32)
    return images.astype(dtype), slot < needed, needed


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
    ranges = jnp.where(jnp.any(mask), image_range(lattice, cutoff), 0)
    ranges = jnp.where((ranges >= 0) & (ranges <= MAX_IMAGE_SLOTS), ranges, MAX_IMAGE_SLOTS)
    images, valid_image, num_images = image_slots(ranges, capacity.max_images, frac.dtype)

    # Candidate (i, j, k): fractional difference f_j + k - f_i, shape [N, N, I, 3].
    dfrac = frac_w[None, :, None, :] - frac_w[:, None, None, :] + images[None, None, :, :]
    dist_sq = jnp.sum((dfrac @ lattice) ** 2, axis=-1)
    pair_mask = mask[:, None] & mask[None, :]
    is_edge = ((dist_sq > MIN_DIST_SQ) & (dist_sq <= cutoff**2)
               & pair_mask[:, :, None] & valid_image[None, None, :])

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

    real = mask[:, None]
    valid = (jnp.all(jnp.isfinite(lattice)) & jnp.all(jnp.isfinite(jnp.where(real, frac, 0.0)))
             & (crystal.volume > 0) & (num_images <= MAX_IMAGE_SLOTS))
    num_edges = jnp.where(valid, num_edges, 0)
    num_images = jnp.where(valid, num_images, 0)
    edge_mask = edge_mask & valid
    overflow = (num_edges > capacity.max_edges) | (num_images > capacity.max_images)
    return NeighborList(senders, receivers, shifts, edge_mask, num_edges, ranges, num_images,
                        overflow, valid)


def edge_vectors(crystal: Crystal, nbrs: NeighborList) -> jax.Array:
    """[E, 3] vectors `x_j + s L - x_i` of one crystal, differentiable in X and L."""
    x = crystal.positions
    return x[nbrs.senders] - x[nbrs.receivers] + nbrs.shifts @ crystal.lattice


def safe_norm(vectors: jax.Array, mask: jax.Array) -> jax.Array:
    """[E] lengths of `vectors: [E, 3]`, with finite gradients on masked (zero) rows."""
    sq = jnp.sum(vectors**2, axis=-1)
    return jnp.where(mask, jnp.sqrt(jnp.where(mask, sq, 1.0)), 0.0)


def graphs_tuple(crystal: Crystal, nbrs: NeighborList) -> jraph.GraphsTuple:
    """One crystal and its neighbour list as a `jraph.GraphsTuple` (for jraph models).

    nodes: {"species" [N], "positions" [N, 3]}; edges: {"vectors" [E, 3]
    (`edge_vectors`, differentiable), "mask" [E]}; globals: {"lattice" [1, 3, 3]}.
    Padding atoms and edges stay in place, marked by species 0 and `mask`.
    """
    return jraph.GraphsTuple(
        nodes={"species": crystal.species, "positions": crystal.positions},
        edges={"vectors": edge_vectors(crystal, nbrs), "mask": nbrs.edge_mask},
        senders=nbrs.senders, receivers=nbrs.receivers,
        n_node=jnp.array([crystal.species.shape[0]]), n_edge=jnp.array([nbrs.senders.shape[0]]),
        globals={"lattice": crystal.lattice[None]})
