"""Periodic neighbour lists under jit (SPEC §2.1-2.2), with fixed capacities.

For one crystal with cutoff D, SPEC §2 has a directed edge for every ordered
pair (i, j) of real atoms and lattice translation k in Z^3 with
`1e-4 < |x_j + k L - x_i|^2 <= D^2`; messages flow from the image of j to i.
The directed edges come in reversed pairs of equal length: (i, j, k) and
(j, i, -k). The list stores each such pair once, as a **pair edge** (i, j, s)
with i <= j (and s lexicographically positive when i = j), and the network
evaluates both directions from it (`csp_jax.energy.pair_conv`), so everything that
depends on the length alone is computed once per pair.

The translations tried for atom pair (i, j) are, per axis a, the
`floor(2 D / h_a) + 1` integers k_a with `|k_a + f_j,a - f_i,a| <= D / h_a`
(h_a the interplanar spacing, f fractional coordinates): every k within the
cutoff lies in this box. The box is enumerated into a fixed number of image
slots (mixed radix, so thin cells use long boxes along one axis without a
larger cube); candidates are then selected into a fixed edge capacity with
`jnp.nonzero(size=...)`. When a crystal needs more image slots or edges than
the capacity, the list carries `overflow = True` and `needs`: callers check it
on the host and rebuild with `capacity.grow(*needs)`. Nothing is dropped
silently.

The list holds integer data only (indices and translations); distances are
recomputed differentiably from positions and lattice by `edge_vectors`.
"""
from __future__ import annotations

import bisect
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from flax import struct

from csp_jax.config import NeighborConfig
from csp_jax.geometry.crystal import Crystal

CUTOFF_SCALE = 3.0  # D = 3 (V / n)^(1/3)
MIN_DIST_SQ = 1e-4  # pairs closer than 0.01 A carry no edge
# Mean number of directed neighbours per atom at any density: (4/3) pi 3^3.
MEAN_NEIGHBORS = 4.0 / 3.0 * math.pi * CUTOFF_SCALE**3
# A cell needing more translations than this is degenerate (a needle or a sheet
# far thinner than its cutoff): its list is marked invalid, never allocated.
MAX_IMAGE_SLOTS = 32768
IMAGE_ROOM = 1.25  # image slots given per slot needed
EDGE_ROOM = 1.1  # pair edges given per edge needed
SHRINK_BELOW = 0.85  # `fit` shrinks a capacity when the need with room is below this fraction
# Capacities take values on geometric grids (image slots 2^(1/4), edges 2^(1/6) apart),
# so that chains whose needs drift meet few distinct shapes, i.e. few compilations.
IMAGE_CLASS_STEP = 2.0 ** 0.25
EDGE_CLASS_STEP = 2.0 ** (1.0 / 6.0)
_DEFAULTS = NeighborConfig()


class NeighborCapacity(NamedTuple):
    """Static capacities of a neighbour list (hashable: a jit static argument).

    max_images: I, lattice translations tried per atom pair (the box of
                `image_counts` holds prod(counts) of them; about 64 for a
                near-cubic cell of 5 atoms, 27 for 20 atoms).
    max_edges:  E, pair edges per crystal (each stands for two directed edges).
    """

    max_images: int
    max_edges: int

    @classmethod
    def for_atoms(cls, max_atoms: int, max_images: int = _DEFAULTS.max_images,
                  edge_factor: float = _DEFAULTS.edge_factor):
        """A capacity for crystals of up to `max_atoms` atoms.

        The edge capacity is `edge_factor` times the mean pair-edge count
        `MEAN_NEIGHBORS * max_atoms / 2` (rounded up to its class).
        The defaults are `csp_jax.config.NeighborConfig`'s.
        """
        return cls(_image_class(max_images), _edge_class(edge_factor * MEAN_NEIGHBORS * max_atoms / 2))

    @classmethod
    def from_config(cls, neighbors: NeighborConfig, max_atoms: int) -> "NeighborCapacity":
        """`for_atoms` with a config's `neighbors` section."""
        return cls.for_atoms(max_atoms, neighbors.max_images, neighbors.edge_factor)

    def grow(self, needed_images: int = 0, needed_edges: int = 0) -> "NeighborCapacity":
        """A capacity that holds what was needed (`NeighborList.needs`), with some room.

        Only the part that overflowed grows (images to the class of 1.25x, edges
        to the class of 1.1x the need); with no need given, both grow 1.5x.
        """
        needed_images, needed_edges = int(needed_images), int(needed_edges)
        if needed_images <= self.max_images and needed_edges <= self.max_edges:
            return NeighborCapacity(_image_class(1.5 * self.max_images), _edge_class(1.5 * self.max_edges))
        images = self.max_images if needed_images <= self.max_images else _image_class(IMAGE_ROOM * needed_images)
        edges = self.max_edges if needed_edges <= self.max_edges else _edge_class(EDGE_ROOM * needed_edges)
        return NeighborCapacity(images, edges)

    def fit(self, needed_images: int, needed_edges: int) -> "NeighborCapacity":
        """The capacity for states like those that needed this much, with room.

        Grows like `grow`, and shrinks a part to the class of its need with
        room (1.25x the image slots, 1.1x the edges) once that is below
        SHRINK_BELOW of the current value, so that small changes of the need
        do not cost a new compilation.
        """
        images, edges = _image_class(IMAGE_ROOM * int(needed_images)), _edge_class(EDGE_ROOM * int(needed_edges))
        keep_images = SHRINK_BELOW * self.max_images <= images <= self.max_images
        keep_edges = SHRINK_BELOW * self.max_edges <= edges <= self.max_edges
        return NeighborCapacity(self.max_images if keep_images else images,
                                self.max_edges if keep_edges else edges)


def _grid(base: int, step: float) -> list[int]:
    """The values round_up(base * step^k, base), k = 0, 1, ..., up to 2^24 base."""
    return sorted({base * math.ceil(step**k - 1e-9) for k in range(int(24 / math.log2(step)) + 1)})


_IMAGE_CLASSES = _grid(8, IMAGE_CLASS_STEP)
_EDGE_CLASSES = _grid(32, EDGE_CLASS_STEP)


def _grid_class(x: float, grid: list[int]) -> int:
    """The smallest grid value >= x."""
    return grid[min(bisect.bisect_left(grid, x), len(grid) - 1)]


def _image_class(x: float) -> int:
    return _grid_class(x, _IMAGE_CLASSES)


def _edge_class(x: float) -> int:
    return _grid_class(x, _EDGE_CLASSES)


@struct.dataclass
class NeighborList:
    """Padded pair edges of one crystal (`[E]`) or a batch (`[B, E]`).

    Pair edge e stands for the directed edges receivers[e] <- senders[e]
    (vector `x_j + s L - x_i`) and senders[e] <- receivers[e] (the opposite
    vector); receivers <= senders.

    senders:    [..., E] int32, j.
    receivers:  [..., E] int32, i.
    shifts:     [..., E, 3] float, integer translation s with vector
                `x_j + s L - x_i` in the crystal's own (unwrapped) coordinates.
    edge_mask:  [..., E] bool, real pair edges.
    num_edges:  [...] int32, pair edges the crystal has (may exceed E).
    image_counts: [..., 3] int32, translations tried per axis.
    num_images: [...] int32, image slots the crystal needs, prod(image_counts).
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
    image_counts: jax.Array
    num_images: jax.Array
    overflow: jax.Array
    valid: jax.Array

    @property
    def needs(self) -> jax.Array:
        """[..., 2] int32: (image slots, pair edges) this crystal needs; `capacity.grow(*needs)`."""
        return jnp.stack([self.num_images, self.num_edges], axis=-1)


def cutoff_radius(crystal: Crystal) -> jax.Array:
    """D = 3 (|det L| / n)^(1/3), differentiable in the lattice. Shape [...]."""
    n = jnp.maximum(crystal.num_atoms, 1).astype(crystal.positions.dtype)
    return CUTOFF_SCALE * (crystal.volume / n) ** (1.0 / 3.0)


def to_cartesian(frac: jax.Array, lattice: jax.Array) -> jax.Array:
    """[..., 3] fractional (or integer) coordinates times the rows of `lattice` [3, 3].

    Written as three broadcast products rather than a matmul, so that XLA fuses
    it with its neighbours.
    """
    return frac[..., 0:1] * lattice[0] + frac[..., 1:2] * lattice[1] + frac[..., 2:3] * lattice[2]


def inverse_spacings(lattice: jax.Array) -> jax.Array:
    """[3] 1 / h_a = |b x c| / |det L| (and cyclically) for rows a, b, c of `lattice`."""
    a, b, c = lattice
    normals = jnp.stack([jnp.cross(b, c), jnp.cross(c, a), jnp.cross(a, b)])
    return jnp.linalg.norm(normals, axis=-1) / jnp.abs(jnp.dot(a, normals[0]))


def image_counts(lattice: jax.Array, cutoff: jax.Array) -> jax.Array:
    """[3] int32: `floor(2 D / h_a) + 1`, translations tried per axis for each atom pair.

    The values are clipped to [1, MAX_IMAGE_SLOTS + 1] (non-finite cells give
    the upper end).
    """
    reach = 2.0 * cutoff * inverse_spacings(lattice)
    reach = jnp.where(jnp.isfinite(reach), jnp.clip(reach, 0.0, MAX_IMAGE_SLOTS), MAX_IMAGE_SLOTS)
    return jnp.floor(reach).astype(jnp.int32) + 1


def image_slots(counts: jax.Array, max_images: int, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The box `0 <= m_a < counts_a` in `max_images` slots (mixed radix).

    counts: [3] int32. Returns (offsets [I, 3] float, valid [I] bool, needed []
    int32 = prod(counts), or MAX_IMAGE_SLOTS + 1 when larger); slots past
    `needed` are invalid.
    """
    slot = jnp.arange(max_images)
    m_c = slot % counts[2]
    m_b = (slot // counts[2]) % counts[1]
    m_a = slot // (counts[1] * counts[2])
    offsets = jnp.stack([m_a, m_b, m_c], axis=-1)
    product = jnp.prod(counts.astype(jnp.float32))  # exact up to 2^24, no int32 overflow
    needed = jnp.where(product <= MAX_IMAGE_SLOTS, product, MAX_IMAGE_SLOTS + 1).astype(jnp.int32)
    return offsets.astype(dtype), slot < needed, needed


def _lexicographically_positive(k: jax.Array) -> jax.Array:
    """[...] bool: k [..., 3] > 0 in lexicographic order."""
    a, b, c = k[..., 0], k[..., 1], k[..., 2]
    return (a > 0) | ((a == 0) & ((b > 0) | ((b == 0) & (c > 0))))


def neighbor_list(crystal: Crystal, capacity: NeighborCapacity, cutoff=None) -> NeighborList:
    """The pair-edge list of one crystal (species [N]); vmap it for a batch.

    Computed without gradient: it only decides which (i, j, s) are edges. The
    positions need not be wrapped into the cell.
    """
    crystal = jax.lax.stop_gradient(crystal)
    lattice, mask = crystal.lattice, crystal.mask
    cutoff = cutoff_radius(crystal) if cutoff is None else jax.lax.stop_gradient(cutoff)
    first, second = (jnp.asarray(x, jnp.int32) for x in np.triu_indices(mask.shape[0]))  # pairs i <= j

    frac = crystal.frac
    cell = jnp.floor(frac)  # wrap: x_w = x - cell L, fractional coordinates in [0, 1)
    frac_w = frac - cell
    counts = jnp.where(jnp.any(mask), image_counts(lattice, cutoff), 1)
    offsets, valid_image, num_images = image_slots(counts, capacity.max_images, frac.dtype)

    # Pair p = (i, j) tries k = low_p + offset with low_p the first k_a in reach.
    dfrac = frac_w[second] - frac_w[first]  # [P, 3]
    reach = cutoff * inverse_spacings(lattice)
    low = jnp.ceil(-dfrac - reach)
    vectors = (to_cartesian(dfrac + low, lattice)[:, None, :]
               + to_cartesian(offsets, lattice)[None, :, :])  # [P, I, 3]
    dist_sq = jnp.sum(vectors**2, axis=-1)
    k = low[:, None, :] + offsets[None, :, :]
    one_direction = (first < second)[:, None] | _lexicographically_positive(k)
    is_edge = ((dist_sq > MIN_DIST_SQ) & (dist_sq <= cutoff**2) & one_direction
               & (mask[first] & mask[second])[:, None] & valid_image[None, :])

    num_edges = jnp.sum(is_edge).astype(jnp.int32)
    (flat,) = jnp.nonzero(is_edge.reshape(-1), size=capacity.max_edges, fill_value=0)
    pair, slot = flat // capacity.max_images, flat % capacity.max_images
    receivers, senders = first[pair], second[pair]
    edge_mask = jnp.arange(capacity.max_edges) < num_edges
    # Translation in unwrapped coordinates: x_w_j + k L - x_w_i = x_j - x_i + (k - c_j + c_i) L.
    shifts = low[pair] + offsets[slot] - cell[senders] + cell[receivers]
    shifts = jnp.where(edge_mask[:, None], shifts, 0.0)

    real = mask[:, None]
    valid = (jnp.all(jnp.isfinite(lattice)) & jnp.all(jnp.isfinite(jnp.where(real, frac, 0.0)))
             & (crystal.volume > 0) & (num_images <= MAX_IMAGE_SLOTS))
    num_edges = jnp.where(valid, num_edges, 0)
    num_images = jnp.where(valid, num_images, 0)
    edge_mask = edge_mask & valid
    overflow = (num_edges > capacity.max_edges) | (num_images > capacity.max_images)
    return NeighborList(senders, receivers, shifts, edge_mask, num_edges, counts, num_images,
                        overflow, valid)


def edge_vectors(crystal: Crystal, nbrs: NeighborList) -> jax.Array:
    """[E, 3] vectors `x_j + s L - x_i` of one crystal's pair edges, differentiable in X and L."""
    x = crystal.positions
    return x[nbrs.senders] - x[nbrs.receivers] + to_cartesian(nbrs.shifts, crystal.lattice)


def safe_norm(vectors: jax.Array, mask: jax.Array) -> jax.Array:
    """[E] lengths of `vectors: [E, 3]`, with finite gradients on masked (zero) rows."""
    sq = jnp.sum(vectors**2, axis=-1)
    return jnp.where(mask, jnp.sqrt(jnp.where(mask, sq, 1.0)), 0.0)


def graphs_tuple(crystal: Crystal, nbrs: NeighborList) -> jraph.GraphsTuple:
    """One crystal and its directed edges as a `jraph.GraphsTuple` (for jraph models).

    Each pair edge gives its two directed edges (2E in all: the listed
    direction, then the reversed ones). nodes: {"species" [N], "positions"
    [N, 3]}; edges: {"vectors" [2E, 3] (sender's image minus receiver,
    differentiable), "mask" [2E]}; globals: {"lattice" [1, 3, 3]}. Padding
    atoms and edges stay in place, marked by species 0 and `mask`.
    """
    vectors = edge_vectors(crystal, nbrs)
    return jraph.GraphsTuple(
        nodes={"species": crystal.species, "positions": crystal.positions},
        edges={"vectors": jnp.concatenate([vectors, -vectors]),
               "mask": jnp.concatenate([nbrs.edge_mask, nbrs.edge_mask])},
        senders=jnp.concatenate([nbrs.senders, nbrs.receivers]),
        receivers=jnp.concatenate([nbrs.receivers, nbrs.senders]),
        n_node=jnp.array([crystal.species.shape[0]]), n_edge=jnp.array([2 * nbrs.senders.shape[0]]),
        globals={"lattice": crystal.lattice[None]})
