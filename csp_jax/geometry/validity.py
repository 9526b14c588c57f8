"""Is an array crystal a physical crystal? The one criterion for data, evaluation and predict.

SPEC §5 (DiffCSP's evaluation criterion): a crystal is invalid when a
coordinate or lattice entry is NaN or infinite, its volume |det L| is below
MIN_VOLUME, or two distinct atoms of the cell (periodic images included) are
closer than MIN_DISTANCE. The loader refuses such rows, the evaluation counts
such samples as invalid, and `predict` ranks them last.
"""
from __future__ import annotations

import numpy as np

from csp_jax.geometry.crystal import Crystal, to_structure

MIN_VOLUME = 0.1  # Angstrom^3
MIN_DISTANCE = 0.5  # Angstrom


def valid_structure(crystal: Crystal):
    """The crystal as a `pymatgen.core.Structure`, or None when it is invalid.

    crystal: one unbatched `Crystal` (species [N], positions [N, 3], lattice [3, 3]).
    Distances are pymatgen's minimum-image distance matrix of distinct atoms.
    """
    mask = np.asarray(crystal.species) > 0
    positions = np.asarray(crystal.positions, np.float64)[mask]
    lattice = np.asarray(crystal.lattice, np.float64)
    if not (np.isfinite(positions).all() and np.isfinite(lattice).all()):
        return None
    if abs(np.linalg.det(lattice)) < MIN_VOLUME:
        return None
    structure = to_structure(crystal)
    distances = structure.distance_matrix
    np.fill_diagonal(distances, np.inf)
    if distances.size and distances.min() < MIN_DISTANCE:
        return None
    return structure
