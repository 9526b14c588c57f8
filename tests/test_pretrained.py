"""The shipped models: they load, their format is guarded, and each predicts a test crystal.

Tests `csp_jax.models` (by name or folder) and the models in `csp_jax/pretrained/`.
"""
import jax
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from csp_jax import cli, models
from csp_jax.data.datasets import load_split
from csp_jax.energy import num_parameters
from csp_jax.candidates.matching import MATCH, match_pairs
from csp_jax.geometry.crystal import Crystal, from_structure
from csp_jax.geometry.neighbors import NeighborCapacity
from csp_jax.sampling.driver import sample_rows, schedule
from helpers import perovskite

pytestmark = pytest.mark.slow  # the shipped models' chains


def perovskites() -> list[Crystal]:
    """Cubic SrTiO3 (a = 3.9 A), the same with Ti moved 0.2 A, and a sheared BaZrO3 cell."""
    cubic = perovskite()
    moved = cubic.replace(positions=cubic.positions + np.array([[0, 0, 0], [0.2, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]))
    lattice = np.array([[4.2, 0.0, 0.0], [0.3, 4.1, 0.0], [0.2, -0.4, 4.3]])
    sheared = Crystal(np.array([40, 56, 8, 8, 8], np.int32), np.array(
        [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) @ lattice, lattice)
    return [jax.tree.map(lambda a: np.asarray(a, np.float32 if a.dtype.kind == "f" else a.dtype), c)
            for c in (cubic, moved, sheared)]


def binaries() -> list[Crystal]:
    """Rock-salt NaCl (a = 5.64 A) and zincblende GaAs (5.65 A), primitive 2-atom cells, and
    rutile TiO2 (a = 4.59, c = 2.96 A, 6 atoms), each padded to 6 atoms."""
    fcc = lambda a: Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])  # noqa: E731
    u = 0.305
    structures = [
        Structure(fcc(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure(fcc(5.65), ["Ga", "As"], [[0, 0, 0], [0.25, 0.25, 0.25]]),
        Structure(Lattice.tetragonal(4.59, 2.96), ["Ti", "Ti", "O", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [u, u, 0], [-u, -u, 0], [0.5 + u, 0.5 - u, 0.5],
                   [0.5 - u, 0.5 + u, 0.5]])]
    return [from_structure(s, max_atoms=6) for s in structures]


# Per shipped model: its training config, parameter count, the dataset and split its test crystal
# comes from, that crystal's material id (one its evaluation matched; for mpts52, all of this test's
# six chains), the crystals of the energy check and their energies, stored when the model was exported.
MODELS = {
    "perov5": dict(config="perov5_cpu", parameters=23297, dataset="perov_5", test_id="7085",
                   crystals=perovskites,
                   energies=[-0.26533743739128113, -0.24565574526786804, -0.29967665672302246]),
    "mp20": dict(config="mp20_cpu", parameters=23297, dataset="mp_20_biternary", test_id="mp-2497",
                 crystals=binaries, energies=[-0.3423084616661072, -0.3109930753707886, -0.49196740984916687]),
    "mpts52": dict(config="mpts52_cpu", parameters=23297, dataset="mpts_52", test_id="mp-1056366",
                   crystals=binaries, energies=[1.1498572826385498, 0.34071439504623413, 0.3415008783340454]),
}


ROOM = NeighborCapacity(216, 1472)  # room for random starts of up to 5 atoms: one compilation


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_model_loads_with_its_stored_energies(name):
    spec = MODELS[name]
    assert name in models.available()
    folder = models.path(name)
    assert sum(f.stat().st_size for f in folder.iterdir()) < 5 * 2**20
    config, model, variables = models.load(name)
    assert config.name == spec["config"] and num_parameters(variables) == spec["parameters"]
    crystals = spec["crystals"]()
    capacity = NeighborCapacity.for_atoms(crystals[0].species.shape[0])
    energies = [float(model.energy(variables, c, capacity)[0]) for c in crystals]
    np.testing.assert_allclose(energies, spec["energies"], rtol=1e-5, atol=1e-6)
    assert models.info(name)["config"] == spec["config"]


def test_an_unknown_model_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="available: mp20, mpts52, perov5"):
        models.path("nope")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_model_predicts_a_test_crystal(name, data_dir):
    """Chains of the evaluation schedule for one test crystal: at least one matches it.

    (Each crystal matched in most of its 20 chains in the model's evaluation; six
    chains all missing would be a broken model.)"""
    chains, spec = 6, MODELS[name]
    config, model, variables = models.load(name)
    test = load_split(spec["dataset"], config.eval.split, data_dir)
    i = list(test.material_ids).index(spec["test_id"])
    n = test.num_atoms[i]
    assert n <= 5  # ROOM holds the random starts of such cells
    crystals = sample_rows(jax.random.PRNGKey(0), np.repeat(test.species[i:i + 1, :n], chains, axis=0),
                           model, variables, ROOM,
                           schedule(config.sampler, config.eval.num_steps), batch_size=chains,
                           refit=False, log=lambda _: None).crystals
    samples = [jax.tree.map(lambda a: a[k], crystals) for k in range(chains)]
    results = match_pairs([(test.structure(i), s) for s in samples], timeout_s=60, workers=1)
    assert any(r.outcome == MATCH for r in results), [r.outcome for r in results]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_predict_command_takes_a_shipped_model_by_folder_or_name(name, tmp_path, monkeypatch):
    formula = {"perov5": "SrTiO3", "mp20": "NaCl", "mpts52": "GaAs"}[name]
    assert cli.main(["predict", "--checkpoint", str(models.path(name)), "--formula", formula,
                     "--num-samples", "2", "--out", str(tmp_path / "folder")]) == 0
    assert len(list((tmp_path / "folder" / formula).glob("rank*.cif"))) == 2
    monkeypatch.chdir(tmp_path)  # by name, the default output folder is predictions/<name> here
    assert cli.main(["predict", "--checkpoint", name, "--formula", formula, "--num-samples", "2"]) == 0
    assert len(list((tmp_path / "predictions" / name / formula).glob("rank*.cif"))) == 2
    assert cli.main(["predict", "--checkpoint", name + "x", "--formula", formula]) == 1  # neither
