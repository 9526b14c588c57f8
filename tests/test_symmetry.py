"""Space groups of predicted structures at several tolerances, and their symmetrisation.

Tests `csp_jax.symmetry`.
"""
import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from csp_jax.symmetry import MAX_RMS, SYMPRECS, space_group, space_groups, symmetrise
from helpers import perovskite_structure


def noisy_cubic(sigma: float, seed: int = 0):
    structure = perovskite_structure(3.9)
    rng = np.random.default_rng(seed)
    return Structure(structure.lattice, structure.species,
                     structure.cart_coords + sigma * rng.standard_normal((5, 3)), coords_are_cartesian=True)


def test_a_slightly_distorted_cubic_perovskite_symmetrises_to_pm3m():
    sample = noisy_cubic(0.03)
    groups = space_groups(sample)
    assert list(groups) == list(SYMPRECS)
    assert groups[0.01] != "Pm-3m (221)" and groups[0.5] == "Pm-3m (221)"
    result = symmetrise(sample)
    assert result.space_group == "Pm-3m (221)" and result.symprec in SYMPRECS
    assert 0 < result.rms <= MAX_RMS
    assert StructureMatcher().fit(result.structure, perovskite_structure(3.9))
    assert space_group(result.structure, 0.001) == "Pm-3m (221)"  # exactly symmetric now


def test_an_exact_structure_is_refined_at_the_tightest_tolerance():
    result = symmetrise(perovskite_structure(3.9))
    assert (result.symprec, result.space_group) == (0.01, "Pm-3m (221)") and result.rms < 1e-6


def test_symmetrising_never_moves_atoms_far():
    """A strongly distorted cell keeps a low symmetry: Pm-3m would move its atoms too far."""
    result = symmetrise(noisy_cubic(0.5, seed=1))
    assert result.space_group != "Pm-3m (221)" and result.rms <= MAX_RMS
