"""Validity, pair matching against pymatgen, and the time-out / crash paths of the pool.

Tests `csp_jax.candidates.matching` and `csp_jax.geometry.validity`.
"""
import os
import time

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from csp_jax.geometry.crystal import Crystal, from_structure, pad
from csp_jax.candidates.matching import (ERROR, INVALID, MATCH, MATCHER_KWARGS, NO_MATCH, TIMEOUT,
                                        PairResult, match_pair, match_pairs)
from csp_jax.geometry.validity import valid_structure
from helpers import perovskite_structure


def perovskite(a=3.905):
    """Cubic SrTiO3, 5 atoms, at its experimental lattice constant."""
    return perovskite_structure(a)


def perturbed(structure, sigma, seed=0):
    """A `Crystal` copy with Gaussian noise (Angstrom) on the Cartesian coordinates."""
    crystal = from_structure(structure, dtype=np.float64)
    noise = sigma * np.random.default_rng(seed).standard_normal(crystal.positions.shape)
    return crystal.replace(positions=crystal.positions + noise)


def pymatgen_rms(gt, sample):
    rms = StructureMatcher(**MATCHER_KWARGS).get_rms_dist(gt, sample)
    return None if rms is None else rms[0]


def test_perturbed_copy_matches_with_pymatgen_rms():
    gt = perovskite()
    sample = perturbed(gt, 0.05)
    result = match_pair(gt, sample)
    assert result.outcome == MATCH
    assert 0 < result.rms < 0.05
    assert result.rms == pytest.approx(pymatgen_rms(gt, valid_structure(sample)), rel=1e-9)


def test_rms_is_invariant_to_atom_order_translation_and_padding():
    gt = perovskite()
    sample = perturbed(gt, 0.05)
    order = np.array([3, 0, 4, 2, 1])
    moved = Crystal(sample.species[order], sample.positions[order] + np.array([1.3, -0.4, 2.2]),
                    sample.lattice)
    result = match_pair(gt, pad(moved, 8))
    assert result.outcome == MATCH
    assert result.rms == pytest.approx(match_pair(gt, sample).rms, rel=1e-6)


def test_different_structure_does_not_match():
    gt = perovskite()
    stretched = Structure(Lattice.tetragonal(3.905, 1.6 * 3.905), gt.species, gt.frac_coords)
    sample = from_structure(stretched, dtype=np.float64)
    assert pymatgen_rms(gt, stretched) is None
    assert match_pair(gt, sample) == PairResult(NO_MATCH)


def test_invalid_samples():
    gt = perovskite()
    good = from_structure(gt, dtype=np.float64)
    assert valid_structure(good).composition == gt.composition
    overlap = good.positions.copy()
    overlap[1] = overlap[0] + [0.3, 0.0, 0.0]
    inf_position = good.positions.copy()
    inf_position[2, 1] = np.inf
    # Two atoms 0.2 A apart only across the periodic boundary (x = 0.01 and 0.99 of 10 A).
    across = Crystal.from_frac([8, 8], [[0.01, 0.5, 0.5], [0.99, 0.5, 0.5]], 10.0 * np.eye(3))
    invalid = {
        "overlap": good.replace(positions=overlap),
        "overlap_across_boundary": across,
        "nan_lattice": good.replace(lattice=np.full((3, 3), np.nan)),
        "inf_position": good.replace(positions=inf_position),
        "tiny_volume": good.replace(lattice=np.diag([3.905, 3.905, 0.005])),
    }
    for name, sample in invalid.items():
        assert valid_structure(sample) is None, name
        assert match_pair(gt, sample).outcome == INVALID, name
    # Same pair, but 0.6 A apart across the boundary: valid.
    far = Crystal.from_frac([8, 8], [[0.03, 0.5, 0.5], [0.97, 0.5, 0.5]], 10.0 * np.eye(3))
    assert valid_structure(far) is not None


def test_matcher_exception_is_an_error_outcome():
    result = match_pair("not a structure", from_structure(perovskite(), dtype=np.float64))
    assert result.outcome == ERROR and result.message


def scripted_match(action, value):
    """Injected matcher for the pool tests: sleep, crash the worker, or answer at once."""
    if action == "sleep":
        time.sleep(value)
    if action == "crash":
        os._exit(3)
    return PairResult(MATCH, float(value))


@pytest.mark.slow  # worker processes started again: about 10 s
def test_pool_times_out_and_survives_crashes():
    pairs = [("fast", 0.1), ("sleep", 60.0), ("fast", 0.2), ("crash", 0.0),
             ("fast", 0.3), ("fast", 0.4), ("fast", 0.5)]
    start = time.monotonic()
    results = match_pairs(pairs, timeout_s=2.0, workers=2, match_fn=scripted_match)
    assert time.monotonic() - start < 40
    assert results[1].outcome == TIMEOUT
    assert results[3].outcome == ERROR
    fast = [i for i, (action, _) in enumerate(pairs) if action == "fast"]
    assert [results[i] for i in fast] == [PairResult(MATCH, pairs[i][1]) for i in fast]


def test_pool_agrees_with_serial_matching():
    gt = perovskite()
    stretched = Structure(Lattice.tetragonal(3.905, 1.6 * 3.905), gt.species, gt.frac_coords)
    pairs = [(gt, perturbed(gt, s, seed)) for seed, s in enumerate([0.02, 0.1, 0.3, 0.0])]
    pairs.append((gt, from_structure(stretched, dtype=np.float64)))
    parallel = match_pairs(pairs, timeout_s=60.0, workers=2)
    serial = [match_pair(*pair) for pair in pairs]
    assert [r.outcome for r in parallel] == [r.outcome for r in serial]
    assert {r.outcome for r in serial} >= {MATCH, NO_MATCH}
    np.testing.assert_array_equal([r.rms for r in parallel], [r.rms for r in serial])
