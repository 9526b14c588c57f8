"""Training batches of negative-sample species (SPEC §3, last bullet).

For each data crystal the chain's species vector is `Expand(Reduce(A), j)` with
`j ~ Geometric(0.5)` on {1, 2, ...}. Expanded cells are capped at `max_atoms`
atoms (j is lowered to the largest multiple that fits; every such case is
counted) and padded to the bucket size of the batch's largest cell; the
training loop then runs each chain at its own cell's bucket size
(`chain_groups`), so small cells do not pay for the largest.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from csp_jax.geometry.crystal import expand_composition, reduce_composition


def bucket_sizes(max_atoms: int) -> tuple[int, ...]:
    """Padded sizes of chains: 2, 3, 4, 6, 8, 12, 16, 24, 32, ... (2^(k/2) rounded up) below
    max_atoms, then max_atoms: at most 1.5x the atoms of a cell, few shapes to compile."""
    sizes = sorted({n if n <= 4 else n + n % 2
                    for n in (math.ceil(2 ** (k / 2) - 1e-9) for k in range(2, 2 * max(2, max_atoms).bit_length() + 1))})
    return tuple(n for n in sizes if n < max_atoms) + (max_atoms,)


def bucket_for(num_atoms: int, max_atoms: int) -> int:
    """The smallest bucket size holding `num_atoms` atoms."""
    for size in bucket_sizes(max_atoms):
        if num_atoms <= size:
            return size
    raise ValueError(f"{num_atoms} atoms exceed max_atoms={max_atoms}")


class SampleSpecies(NamedTuple):
    """Species vectors for a batch of chains.

    species:     [B, N] int32, padded to a bucket size N.
    multipliers: [B] int, the j actually used.
    num_capped:  how many draws were lowered to fit max_atoms.
    """

    species: np.ndarray
    multipliers: np.ndarray
    num_capped: int


def draw_multipliers(rng: np.random.Generator, size: int, q: float = 0.5) -> np.ndarray:
    """j on {1, 2, ...} with P(j) = q^(j-1) (1 - q); for q = 0.5, P(j) = 0.5^j."""
    return rng.geometric(1.0 - q, size=size)


def expanded_species(species: np.ndarray, multipliers: np.ndarray, max_atoms: int) -> SampleSpecies:
    """`Expand(Reduce(A_b), j_b)` for every row of `species: [B, N]`, capped and bucketed."""
    compositions = [reduce_composition(row) for row in species]
    sizes = np.array([sum(c.values()) for c in compositions])
    if np.any(sizes > max_atoms):
        raise ValueError(f"a reduced composition has more than max_atoms={max_atoms} atoms")
    allowed = np.minimum(multipliers, max_atoms // sizes)
    width = bucket_for(int(np.max(sizes * allowed)), max_atoms)
    out = np.stack([expand_composition(c, int(j), width) for c, j in zip(compositions, allowed)])
    return SampleSpecies(out, allowed, int(np.sum(allowed < multipliers)))


def chain_groups(species: np.ndarray, max_atoms: int) -> list[tuple[int, np.ndarray]]:
    """Rows of species [B, N] grouped by the bucket size of their own cell.

    Returns [(width, row indices)] in increasing width: run each group's
    chains at that width (`species[rows, :width]`, padding only).
    """
    sizes = np.count_nonzero(species, axis=1)
    widths = np.array([bucket_for(int(n), max_atoms) for n in sizes])
    return [(int(w), np.flatnonzero(widths == w)) for w in np.unique(widths)]
