"""The other structures a dataset holds for a test crystal's composition, and the top-1 against them.

Tests `csp_jax.evaluation.polymorphs` (and its paragraph of `csp_jax.evaluation.report`).
"""
import numpy as np
import pytest

from csp_jax.data.dataset import CrystalDataset
from csp_jax.candidates.matching import MATCH, NO_MATCH, match_samples
from csp_jax.evaluation.metrics import evaluate_samples
from csp_jax.evaluation.report import markdown_report
from csp_jax.evaluation.polymorphs import other_structures, polymorph_metrics
from csp_jax.geometry.crystal import Crystal, stack
from helpers import perovskite


def swapped(crystal: Crystal, shift=(0.0, 0.0, 0.0)) -> Crystal:
    """SrTiO3 with the Sr and Ti sites exchanged (TiSrO3), its atoms moved by `shift` (Angstrom)."""
    species = np.array(crystal.species)
    species[:2] = species[1::-1]
    return Crystal(species, np.asarray(crystal.positions) + np.asarray(shift), crystal.lattice)


def rock_salt(a=5.6) -> Crystal:
    lattice = a * np.eye(3)
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    return Crystal(np.array([11, 17, 0, 0, 0], np.int32), frac @ lattice, lattice)


def dataset(crystals) -> CrystalDataset:
    batch = stack(crystals)
    return CrystalDataset(np.asarray(batch.species), np.asarray(batch.positions), np.asarray(batch.lattice),
                          np.array([f"m-{i}" for i in range(len(crystals))]), np.arange(len(crystals)), "mem")


def test_other_structures_are_the_distinct_ones_of_the_same_composition():
    truth = perovskite()
    references = [dataset([perovskite(a=3.95), swapped(truth), rock_salt()]),  # the truth again, its swap
                  dataset([swapped(truth, shift=(0.3, 0.1, 0.0)), truth])]       # the swap again, the truth
    others = other_structures(dataset([truth, rock_salt()]), references, timeout_s=60.0, workers=2)
    assert len(others[0]) == 1 and len(others[1]) == 0  # one swap for SrTiO3; NaCl has none
    assert match_samples(others[0][0], swapped(truth)).outcome == MATCH
    assert match_samples(others[0][0], truth).outcome == NO_MATCH


def test_top1_against_any_structure_and_the_ceiling():
    truth, salt = perovskite(), rock_salt()
    # SrTiO3's samples: the swap (lowest energy), the truth, the swap again; NaCl's: three copies.
    samples = stack([stack([swapped(truth), truth, swapped(truth, shift=(0.3, 0.1, 0.0))]),
                     stack([salt, salt, salt])])
    energies = np.array([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    gts = [dataset([truth]).structure(0), dataset([salt]).structure(0)]
    results = evaluate_samples(gts, samples, timeout_s=60.0, workers=2, energies=energies)
    assert results["top1"]["energy"]["match_rate"] == 50.0  # SrTiO3's top sample is its swap
    others = other_structures(dataset([truth, salt]), [dataset([truth, swapped(truth), salt])], 60.0, 2)
    record = polymorph_metrics(results, samples, energies, others, timeout_s=60.0, workers=2)
    assert record["crystals_with_other_structures"] == 1
    assert record["structures_per_composition"] == pytest.approx(1.5)
    assert record["top1_ceiling"] == pytest.approx(75.0)  # (1/2 + 1) / 2
    for ranking in ("first", "energy", "consensus"):  # each top sample is the swap, a known structure
        assert record["any_structure"][ranking]["match_rate"] == 100.0
    results["polymorphs"] = record
    assert "top-1 ceiling" in markdown_report(results, "perov_5", num_test_total=2)
