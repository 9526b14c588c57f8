"""Crystals as fixed-size padded arrays, and compositions (SPEC §1).

A `Crystal` holds one crystal (`species: [N]`) or a batch (`species: [B, N]`).
Padding atoms have species 0; real atoms come first. Positions are Cartesian in
Angstrom and the lattice rows are the vectors a, b, c, so `X = F @ L`.
"""
from __future__ import annotations

import math
from functools import reduce as _fold

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

MAX_Z = 100


@struct.dataclass
class Crystal:
    """A padded crystal or batch of crystals.

    species:   [..., N] int32, atomic numbers 1..100, 0 for padding.
    positions: [..., N, 3] float, Cartesian coordinates (Angstrom).
    lattice:   [..., 3, 3] float, rows are the lattice vectors.
    """

    species: jax.Array
    positions: jax.Array
    lattice: jax.Array

    @property
    def mask(self) -> jax.Array:
        """[..., N] bool, True for real atoms."""
        return self.species > 0

    @property
    def num_atoms(self) -> jax.Array:
        """[...] int32, number of real atoms."""
        return jnp.sum(self.mask, axis=-1).astype(jnp.int32)

    @property
    def volume(self) -> jax.Array:
        """[...] float, |det L| (Angstrom^3)."""
        return jnp.abs(jnp.linalg.det(self.lattice))

    @property
    def frac(self) -> jax.Array:
        """[..., N, 3] fractional coordinates F = X L^-1 (not wrapped)."""
        return jnp.linalg.solve(
            jnp.swapaxes(self.lattice, -1, -2), jnp.swapaxes(self.positions, -1, -2)
        ).swapaxes(-1, -2)

    @classmethod
    def from_frac(cls, species, frac, lattice) -> "Crystal":
        """Build from fractional coordinates `frac: [..., N, 3]`."""
        lattice = jnp.asarray(lattice)
        return cls(jnp.asarray(species, jnp.int32), jnp.asarray(frac) @ lattice, lattice)


def from_structure(structure, max_atoms: int | None = None, dtype=np.float32) -> Crystal:
    """Convert a `pymatgen.core.Structure` (ordered) into a padded `Crystal`.

    Atoms are kept in the structure's order and padded to `max_atoms`
    (default: the structure's own size). Returns numpy-backed arrays.
    """
    n = len(structure)
    max_atoms = n if max_atoms is None else max_atoms
    if n > max_atoms:
        raise ValueError(f"structure has {n} atoms, more than max_atoms={max_atoms}")
    if not structure.is_ordered:
        raise ValueError("disordered structures are not supported")
    species = np.zeros(max_atoms, np.int32)
    species[:n] = [site.specie.Z for site in structure]
    positions = np.zeros((max_atoms, 3), dtype)
    positions[:n] = structure.cart_coords
    return Crystal(species, positions, np.asarray(structure.lattice.matrix, dtype))


def to_structure(crystal: Crystal):
    """Convert one (unbatched) `Crystal` into a `pymatgen.core.Structure`."""
    from pymatgen.core import Lattice, Structure

    species = np.asarray(crystal.species)
    if species.ndim != 1:
        raise ValueError("to_structure takes one crystal; index the batch first")
    keep = species > 0
    return Structure(
        Lattice(np.asarray(crystal.lattice, np.float64)),
        species[keep].tolist(),
        np.asarray(crystal.positions, np.float64)[keep],
        coords_are_cartesian=True,
    )


def stack(crystals) -> Crystal:
    """Stack unbatched crystals of equal padded size N into a batch `[B, N, ...]`."""
    return jax.tree.map(lambda *xs: np.stack(xs), *crystals)


def pad(crystal: Crystal, max_atoms: int) -> Crystal:
    """Pad a crystal or batch with padding atoms to `max_atoms` along the atom axis."""
    n = crystal.species.shape[-1]
    if n > max_atoms:
        raise ValueError(f"crystal has {n} atom slots, more than max_atoms={max_atoms}")
    lead = [(0, 0)] * (crystal.species.ndim - 1)
    return Crystal(
        np.pad(np.asarray(crystal.species), lead + [(0, max_atoms - n)]),
        np.pad(np.asarray(crystal.positions), lead + [(0, max_atoms - n), (0, 0)]),
        np.asarray(crystal.lattice),
    )


def reduce_composition(species) -> dict[int, int]:
    """`Reduce(A)`: per-species counts divided by their gcd, `{Z: count}` sorted by Z.

    species: [N] atomic numbers (padding zeros are ignored).
    """
    counts = cell_composition(species)
    if not counts:
        raise ValueError("empty composition")
    g = _fold(math.gcd, list(counts.values()))
    return {z: c // g for z, c in counts.items()}


def formula_key(species) -> tuple:
    """A crystal's reduced composition as a hashable ((Z, count), ...) (species: [N])."""
    return tuple(reduce_composition(species).items())


def cell_composition(species) -> dict[int, int]:
    """The composition of the whole cell, `{Z: count}` sorted by Z (padding zeros ignored)."""
    zs, counts = np.unique(np.asarray(species)[np.asarray(species) > 0], return_counts=True)
    return {int(z): int(c) for z, c in zip(zs, counts)}


def expand_composition(composition: dict[int, int], j: int, max_atoms: int | None = None) -> np.ndarray:
    """`Expand(comp, j)`: the species vector with every count times j, sorted by Z.

    Returns [max_atoms] int32 (padded with 0), or [n] when max_atoms is None.
    Raises ValueError when the expanded cell has more than max_atoms atoms.
    """
    species = np.concatenate(
        [np.full(c * j, z, np.int32) for z, c in sorted(composition.items())])
    if max_atoms is None:
        return species
    if len(species) > max_atoms:
        raise ValueError(f"{len(species)} atoms exceed max_atoms={max_atoms}")
    return np.pad(species, (0, max_atoms - len(species)))


def bucket_sizes(max_atoms: int) -> tuple[int, ...]:
    """Padded sizes of chains below max_atoms, then max_atoms: 2^(k/2) up to 16
    (2, 3, 4, 6, 8, 12, 16), then 2^(k/4) (20, 24, 28, 32, 40, 46, 54, ...),
    rounded up to even numbers above 4. A cell of more than 16 atoms pads to
    at most 1.22x its atoms (1.47x its atom pairs), a smaller one to 1.5x;
    few shapes to compile."""
    last = 4 * max(2, max_atoms).bit_length()
    powers = [2 ** (k / 2) for k in range(2, 9)] + [2 ** (k / 4) for k in range(17, last + 1)]
    sizes = sorted({n if n <= 4 else n + n % 2 for n in (math.ceil(p - 1e-9) for p in powers)})
    return tuple(n for n in sizes if n < max_atoms) + (max_atoms,)


def bucket_for(num_atoms: int, max_atoms: int) -> int:
    """The smallest bucket size holding `num_atoms` atoms."""
    for size in bucket_sizes(max_atoms):
        if num_atoms <= size:
            return size
    raise ValueError(f"{num_atoms} atoms exceed max_atoms={max_atoms}")
