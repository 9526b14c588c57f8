"""Training batches of negative-sample species (SPEC §3, last bullet).

For each data crystal the chain's species vector is `Expand(Reduce(A), j)` with
`j ~ Geometric(0.5)` on {1, 2, ...} (the paper's; `unit="formula"`), or the
data crystal's own cell repeated j times (`unit="cell"`: with q = 0 the
negatives have exactly the data cells' sizes, Z formula units each, as the
test chains do). Expanded cells are capped at `max_atoms` atoms (j is lowered
to the largest multiple that fits; every such case is counted) and padded to
`max_atoms`. The training loop runs the chains in groups of a fixed number of
chains of similar size (`chain_groups`), each at the bucket size of its
largest cell, so small cells do not pay for the largest and few shapes are
ever compiled.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from pymatgen.core import Element

from csp_jax.config import CHOICES, DataConfig
from csp_jax.geometry.crystal import bucket_for, cell_composition, expand_composition, reduce_composition


class SampleSpecies(NamedTuple):
    """Species vectors for a batch of chains.

    species:     [B, N] int32, padded to a bucket size N.
    multipliers: [B] int, the j actually used.
    num_capped:  how many draws were lowered to fit max_atoms.
    """

    species: np.ndarray
    multipliers: np.ndarray
    num_capped: int


def draw_multipliers(rng: np.random.Generator, size: int, q: float = DataConfig.geometric_q) -> np.ndarray:
    """j on {1, 2, ...} with P(j) = q^(j-1) (1 - q); for q = 0.5, P(j) = 0.5^j."""
    return rng.geometric(1.0 - q, size=size)


UNITS = ("formula", "cell")
SWAP_PAIRS = CHOICES["train.swap_pairs"]


def expanded_species(species: np.ndarray, multipliers: np.ndarray, max_atoms: int,
                     unit: str = "formula") -> SampleSpecies:
    """j_b units of every row of `species: [B, N]`, capped, padded to [B, max_atoms].

    unit "formula": `Expand(Reduce(A_b), j_b)` (SPEC §3); "cell": the row's own
    cell repeated j_b times.
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, not {unit!r}")
    of = reduce_composition if unit == "formula" else cell_composition
    compositions = [of(row) for row in species]
    sizes = np.array([sum(c.values()) for c in compositions])
    if np.any(sizes > max_atoms):
        raise ValueError(f"a {unit} has more than max_atoms={max_atoms} atoms")
    allowed = np.minimum(multipliers, max_atoms // sizes)
    out = np.stack([expand_composition(c, int(j), max_atoms) for c, j in zip(compositions, allowed)])
    return SampleSpecies(out, allowed, int(np.sum(allowed < multipliers)))


def chain_groups(species: np.ndarray, max_atoms: int, group_size: int) -> list[tuple[int, np.ndarray]]:
    """Rows of species [B, N] in groups of `group_size` rows of similar size.

    Rows are sorted by their number of atoms (stable) and cut into consecutive
    groups of `group_size` (the last one may be shorter: the caller fills it
    up); each group runs at the bucket size of its largest cell. Returns
    [(width, row indices)] in increasing width. A batch then meets only the
    shapes (group_size, bucket size), whatever its sizes.
    """
    sizes = np.count_nonzero(species, axis=1)
    order = np.argsort(sizes, kind="stable")
    groups = [order[i:i + group_size] for i in range(0, len(order), group_size)]
    return [(bucket_for(int(sizes[rows].max()), max_atoms), rows) for rows in groups]


def most_electronegative(species) -> int:
    """The atomic number of the most electronegative (Pauling) element among `species`,
    a composition's anion."""
    return int(max(species, key=lambda z: Element.from_Z(int(z)).X))


def swapped_sites(species: np.ndarray, rng: np.random.Generator, pairs: str = "any") -> np.ndarray:
    """Each row of `species: [B, N]` with two of its sites' species exchanged: the same
    composition on the same geometry, a wrong structure (the cation swap of an ABX3
    perovskite is the one with the A and B sites exchanged).

    The two species are a uniformly drawn pair of the row's distinct species
    (`pairs="cations"`: of those other than its most electronegative element,
    where two are left), then one site of each, uniformly; a row of one
    species is returned unchanged.
    """
    if pairs not in SWAP_PAIRS:
        raise ValueError(f"pairs must be one of {SWAP_PAIRS}, not {pairs!r}")
    out = np.array(species, copy=True)
    for row in out:
        kinds = np.unique(row[row > 0])
        if pairs == "cations" and len(kinds) > 2:
            kinds = kinds[kinds != most_electronegative(kinds)]
        if len(kinds) < 2:
            continue
        a, b = rng.choice(kinds, size=2, replace=False)
        i, j = rng.choice(np.flatnonzero(row == a)), rng.choice(np.flatnonzero(row == b))
        row[i], row[j] = b, a
    return out
