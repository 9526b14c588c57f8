"""Energy against the displacement of one atom (SPEC §6).

Tests `csp_jax.evaluation.displacement`.
"""
import csv

import jax
import numpy as np
import pytest

from csp_jax.config import get_config, updated
from csp_jax.data.datasets import load_split
from csp_jax.evaluation.displacement import CSV_FIELDS, displaced_energies, displacement_experiment
from csp_jax.energy.continuousp import EnergyModel
from csp_jax.geometry.neighbors import NeighborCapacity

from helpers import perovskite

pytestmark = pytest.mark.slow  # the model and the displaced energies compiled: about 9 s

NUM_DRAWS = 200  # one value everywhere: the draw count is a compile-time constant


@pytest.fixture(scope="module")
def model_and_variables():
    model = EnergyModel.from_config(get_config("perov5").model)
    return model, model.init(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def energy_fn(model_and_variables):
    """H of one crystal, jitted."""
    model, variables = model_and_variables
    return jax.jit(lambda crystal: model.energy(variables, crystal, NeighborCapacity.for_atoms(5))[0])


def test_zero_noise_gives_the_model_energy(model_and_variables, energy_fn):
    model, variables = model_and_variables
    crystal = perovskite(dtype=np.float32)
    expected = energy_fn(crystal)
    displacement, energies, undisplaced = displaced_energies(
        model, variables, crystal, 2, jax.random.PRNGKey(0), sigma=0.0, num_draws=NUM_DRAWS)
    assert displacement.shape == energies.shape == (NUM_DRAWS,)
    np.testing.assert_array_equal(displacement, 0.0)
    np.testing.assert_allclose(energies, float(expected), rtol=1e-6)
    assert float(undisplaced) == pytest.approx(float(expected), rel=1e-6)


def test_displacements_follow_the_noise_and_move_the_energy(model_and_variables):
    model, variables = model_and_variables
    crystal = perovskite(dtype=np.float32)
    displacement, energies, undisplaced = displaced_energies(
        model, variables, crystal, 2, jax.random.PRNGKey(1), sigma=0.1, num_draws=NUM_DRAWS)
    # |noise|^2 / sigma^2 is chi-square with 3 degrees of freedom: mean 3, sd of the mean 0.17.
    assert np.mean(displacement**2) / 0.1**2 == pytest.approx(3.0, abs=0.6)
    assert np.all(np.isfinite(energies)) and np.std(energies) > 0
    # H is continuous: the smallest displacements change it least.
    order = np.argsort(displacement)
    change = np.abs(energies - undisplaced)
    assert np.mean(change[order[:40]]) < np.mean(change[order[-40:]])


def test_experiment_writes_pairs_and_figure(model_and_variables, energy_fn, data_dir, tmp_path):
    model, variables = model_and_variables
    config = updated(get_config("perov5"), {"displacement.num_crystals": 2,
                                            "displacement.num_draws": NUM_DRAWS, "displacement.seed": 3})
    dataset = load_split("perov_5", "test", data_dir)
    lines = []
    csv_path, png_path = displacement_experiment(config, model, variables, dataset, tmp_path, log=lines.append)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_FIELDS and len(rows) == 2 * NUM_DRAWS and len(lines) == 3
    ids = sorted({r["material_id"] for r in rows})
    assert len(ids) == 2
    row_of = {str(m): i for i, m in enumerate(dataset.material_ids)}
    for material_id in ids:
        mine = [r for r in rows if r["material_id"] == material_id]
        i = row_of[material_id]
        assert len({r["atom_index"] for r in mine}) == 1
        assert int(mine[0]["atom_index"]) < dataset.num_atoms[i]
        expected = energy_fn(jax.tree.map(lambda a: a[i], dataset.crystals))
        assert float(mine[0]["energy_undisplaced"]) == pytest.approx(float(expected), rel=1e-5)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The seed fixes crystals, atoms and noise.
    again, _ = displacement_experiment(config, model, variables, dataset, tmp_path / "again", log=lines.append)
    assert again.read_text() == csv_path.read_text()
