"""The shipped Perov-5 model: it loads, its format is guarded, and it predicts a test perovskite."""
import jax
import numpy as np
import pytest

from csp_jax import cli, pretrained
from csp_jax.data.datasets import load_split
from csp_jax.energy import num_parameters
from csp_jax.evaluation.evaluate import subset_indices
from csp_jax.evaluation.matching import MATCH, match_pairs
from csp_jax.geometry.crystal import Crystal
from csp_jax.geometry.neighbors import NeighborCapacity
from csp_jax.sampling.driver import sample_rows, schedule
from helpers import perovskite

pytestmark = pytest.mark.slow  # the shipped model's chains

# Energies of the shipped model on the crystals of `fixed_crystals`, stored when it was exported.
STORED_ENERGIES = [-0.26533743739128113, -0.24565574526786804, -0.29967665672302246]


def fixed_crystals() -> list[Crystal]:
    """Cubic SrTiO3 (a = 3.9 A), the same with Ti moved 0.2 A, and a sheared BaZrO3 cell."""
    cubic = perovskite()
    moved = cubic.replace(positions=cubic.positions + np.array([[0, 0, 0], [0.2, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]))
    lattice = np.array([[4.2, 0.0, 0.0], [0.3, 4.1, 0.0], [0.2, -0.4, 4.3]])
    sheared = Crystal(np.array([40, 56, 8, 8, 8], np.int32), np.array(
        [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) @ lattice, lattice)
    return [jax.tree.map(lambda a: np.asarray(a, np.float32 if a.dtype.kind == "f" else a.dtype), c)
            for c in (cubic, moved, sheared)]


def test_shipped_model_loads_with_its_stored_energies():
    assert "perov5" in pretrained.available()
    folder = pretrained.path("perov5")
    assert sum(f.stat().st_size for f in folder.iterdir()) < 2 * 2**20
    config, model, variables = pretrained.load("perov5")
    assert config.name == "perov5_cpu" and num_parameters(variables) == 23297
    capacity = NeighborCapacity.for_atoms(5)
    energies = [float(model.energy(variables, c, capacity)[0]) for c in fixed_crystals()]
    np.testing.assert_allclose(energies, STORED_ENERGIES, rtol=1e-5, atol=1e-6)
    assert pretrained.info("perov5")["config"] == "perov5_cpu"
    with pytest.raises(ValueError, match="available"):
        pretrained.path("nope")


def test_shipped_model_predicts_a_test_perovskite(data_dir):
    """Six chains of the evaluation schedule for one test crystal: at least one matches it.

    (This crystal matches in 14 of 20 chains; six chains all missing would be a broken model.)"""
    chains = 6
    config, model, variables = pretrained.load("perov5")
    test = load_split("perov_5", "test", data_dir)
    i = int(subset_indices(len(test), 200)[0])
    crystals = sample_rows(jax.random.PRNGKey(0), np.repeat(test.species[i:i + 1], chains, axis=0),
                                    model, variables, NeighborCapacity(216, 1472),  # room: one compilation
                                    schedule(config.sampler, config.eval.num_steps), batch_size=chains,
                                    refit=False, log=lambda _: None).crystals
    samples = [jax.tree.map(lambda a: a[k], crystals) for k in range(chains)]
    results = match_pairs([(test.structure(i), s) for s in samples], timeout_s=60, workers=1)
    assert any(r.outcome == MATCH for r in results), [r.outcome for r in results]


def test_predict_command_takes_the_shipped_model_by_folder_or_name(tmp_path, monkeypatch):
    assert cli.main(["predict", "--checkpoint", str(pretrained.path("perov5")), "--formula", "SrTiO3",
                     "--num-samples", "2", "--out", str(tmp_path / "folder")]) == 0
    assert len(list((tmp_path / "folder" / "SrTiO3").glob("rank*.cif"))) == 2
    monkeypatch.chdir(tmp_path)  # by name, the default output folder is predictions/<name> here
    assert cli.main(["predict", "--checkpoint", "perov5", "--formula", "SrTiO3", "--num-samples", "2"]) == 0
    assert len(list((tmp_path / "predictions" / "perov5" / "SrTiO3").glob("rank*.cif"))) == 2
    assert cli.main(["predict", "--checkpoint", "perov6", "--formula", "SrTiO3"]) == 1  # neither
