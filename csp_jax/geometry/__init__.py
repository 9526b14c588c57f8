"""Crystals as padded arrays and the geometry under jit: Niggli reduction, neighbour lists.

- `crystal`: the `Crystal` pytree (species 0 = padding), pymatgen round trips,
  Reduce / Expand of compositions (SPEC §1);
- `niggli`: Krivy-Gruber reduction and the wrap `R(X, L)` (SPEC §3);
- `neighbors`: periodic pair-edge neighbour lists with fixed capacities and
  overflow as data (SPEC §2.1-2.2);
- `capacity`: the one host loop that grows a capacity until nothing overflows;
- `validity`: whether an array crystal is a physical crystal (SPEC §5).
"""
from csp_jax.geometry.crystal import (Crystal, expand_composition, from_structure, pad,
                                      reduce_composition, stack, to_structure)
from csp_jax.geometry.capacity import MAX_RERUNS, grow_until_no_overflow
from csp_jax.geometry.neighbors import NeighborCapacity, NeighborList, neighbor_list
from csp_jax.geometry.niggli import niggli_reduce, reduce_crystal
from csp_jax.geometry.validity import MIN_DISTANCE, MIN_VOLUME, valid_structure

__all__ = ["MAX_RERUNS", "MIN_DISTANCE", "MIN_VOLUME", "Crystal", "NeighborCapacity", "NeighborList",
           "expand_composition", "from_structure", "grow_until_no_overflow", "neighbor_list",
           "niggli_reduce", "pad", "reduce_composition", "reduce_crystal", "stack", "to_structure",
           "valid_structure"]
