"""Prediction for formulas: cell sizes, error messages, ranked CIFs, the command line.

Tests `csp_jax.predict` and its sub-command in `csp_jax.cli`, `csp_jax.candidates.record` (the
energy and consensus rankings), with `csp_jax.symmetry` and `csp_jax.pictures` through it.
"""
import argparse
import dataclasses
import csv
import re

import jax
import matplotlib.image
import pytest
from pymatgen.core import Structure

from csp_jax import models
from csp_jax.models import checkpoint
from csp_jax.config import get_config, override, updated
from csp_jax.geometry.crystal import from_structure
from csp_jax.energy.continuousp import EnergyModel
from csp_jax.geometry.neighbors import NeighborCapacity
from csp_jax.geometry.validity import valid_structure
from csp_jax.predict import cell_species, formula_cells, predict
from csp_jax.training.step import init_train_state

from csp_jax import cli

FORMULAS = ("SrTiO3", "KNbO3")


def tiny_config():
    return override(get_config("perov5"), "sampler.num_steps", "10")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run directory with one checkpoint of random weights.

    Both prediction tests use its restored variables: restored arrays are
    committed to the device, fresh ones are not, and jit compiles once per kind.
    """
    config = tiny_config()
    path = tmp_path_factory.mktemp("run")
    checkpoint.write_config(path, config)
    checkpoint.save(checkpoint.manager(path), 0, init_train_state(config, jax.random.PRNGKey(0)), {})
    return path


def test_cell_species_expands_the_reduced_formula():
    name, species = cell_species("SrTiO3", 35)
    assert name == "SrTiO3" and species.tolist() == [8, 8, 8, 22, 38]
    for kwargs in ({"num_atoms": 10}, {"formula_units": 2}):
        name, species = cell_species("SrTiO3", 35, **kwargs)
        assert name == "SrTiO3_Z2" and species.tolist() == [8] * 6 + [22] * 2 + [38] * 2
    name, species = cell_species("Sr2Ti2O6", 35)  # the default cell is the reduced formula
    assert name == "SrTiO3" and len(species) == 5
    name, species = cell_species("Li2O", 35, num_atoms=12)
    assert name == "Li2O_Z4" and species.tolist() == [3] * 8 + [8] * 4


@pytest.mark.parametrize("formula, kwargs, message", [
    ("Xx2O", {}, "unknown element 'Xx'"),
    ("Og2", {}, "beyond the model's 100 elements"),
    ("Fe0.5O", {}, "non-integer amount"),
    ("H2O)", {}, "cannot read formula"),
    ("SrTiO3", {"num_atoms": 7}, "7 atoms is not a multiple of 5"),
    ("SrTiO3", {"num_atoms": 40}, "exceeds the model's cap of 35 atoms"),
    ("SrTiO3", {"formula_units": 8}, "exceeds the model's cap of 35 atoms"),
    ("SrTiO3", {"formula_units": 0}, "must be positive"),
    ("SrTiO3", {"num_atoms": 10, "formula_units": 2}, "not both"),
])
def test_cell_species_errors_are_one_line(formula, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        cell_species(formula, 35, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.slow  # prediction chains compiled: about 20 s with the next test
def test_predict_writes_cifs_ranked_by_energy(run_dir, tmp_path):
    config, model, variables = models.load(run_dir)
    config = updated(config, {"eval.num_samples": 3, "eval.seed": 2, "eval.batch_size": 4})
    rows = predict(config, model, variables, FORMULAS, tmp_path, log=lambda line: None)
    energy_fn = jax.jit(model.energy, static_argnums=2)
    capacity = NeighborCapacity.for_atoms(5)
    for formula in FORMULAS:
        paths = sorted((tmp_path / formula).glob("*.cif"))
        assert [p.name[:6] for p in paths] == ["rank01", "rank02", "rank03"]
        named = [float(re.search(r"_E(-?[\d.]+)\.cif$", p.name).group(1)) for p in paths]
        valid = [r["valid"] for r in rows if r["formula"] == formula]
        # valid samples first (the evaluation's criterion), each part by energy
        assert valid == sorted(valid, reverse=True)
        assert [(not v, e) for v, e in zip(valid, named)] == sorted(
            (not v, e) for v, e in zip(valid, named))
        for path, ok in zip(paths, valid):
            structure = valid_structure(from_structure(Structure.from_file(path)))
            assert (structure is not None) == ok
        for path, energy in zip(paths, named):
            structure = Structure.from_file(path)
            assert structure.composition.reduced_formula == formula and len(structure) == 5
            # The CIF holds the crystal that has the energy in its name.
            recomputed, _ = energy_fn(variables, from_structure(structure), capacity)
            assert float(recomputed) == pytest.approx(energy, abs=2e-4)
    with open(tmp_path / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) == 6
    assert [(r["formula"], int(r["rank"])) for r in table] == [(f, k) for f in FORMULAS for k in (1, 2, 3)]
    for row in table:
        structure = Structure.from_file(tmp_path / row["cif"])
        assert float(row["volume"]) == pytest.approx(structure.volume, rel=1e-6)
        assert float(row["density"]) == pytest.approx(float(structure.density), rel=1e-6)
        assert all(re.fullmatch(r"\S+ \(\d+\)|n/a", row[f"sg_{t}"]) for t in (0.01, 0.1, 0.5))
        if row["valid"] == "True":  # the symmetrised structure's group, where one was found
            assert re.fullmatch(r"\S+ \(\d+\)", row["space_group"])
    assert (tmp_path / "summary.md").read_text().count("\n| SrTiO3 |") == 3


def test_predict_checks_every_formula_before_sampling(tmp_path):
    config = tiny_config()
    model = EnergyModel.from_config(config.model)
    with pytest.raises(ValueError, match="unknown element"):
        predict(config, model, None, ["SrTiO3", "Xx2O"], tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # prediction chains compiled: about 20 s with the test above
def test_predict_command_loads_a_run_directory(run_dir, tmp_path):
    subparsers = argparse.ArgumentParser().add_subparsers(dest="command")
    for add in (cli.add_evaluate, cli.add_predict, cli.add_displacement):
        add(subparsers)
    parser = subparsers._name_parser_map  # the sub-command parsers by name
    assert set(parser) == {"evaluate", "predict", "displacement"}
    assert cli.main(["predict", "--checkpoint", str(run_dir), "--formula", *FORMULAS, "--num-samples", "3",
                     "--batch-size", "4", "--out", str(tmp_path)]) == 0
    for formula in FORMULAS:
        assert len(list((tmp_path / formula).glob("rank*.cif"))) == 3
        for picture in ("rank01.png", "chains.png"):  # the top structure, the chains' energies
            height, width, _ = matplotlib.image.imread(tmp_path / formula / picture).shape
            assert height > 300 and width > 300
    with pytest.raises(SystemExit):  # --num-atoms and --formula-units exclude each other
        parser["predict"].parse_args(["--checkpoint", "x", "--formula", "Li2O",
                                      "--num-atoms", "3", "--formula-units", "1"])
    # Unset shortcuts leave the model's config as it is; given ones are `--set`s of its keys.
    config = get_config("perov5")
    args = parser["displacement"].parse_args(["--checkpoint", "x"])
    assert cli.configured(config, args) == config
    args = parser["displacement"].parse_args(["--checkpoint", "x", "--sigma", "0.2", "--set", "displacement.seed=4"])
    assert cli.configured(config, args).displacement == dataclasses.replace(config.displacement, sigma=0.2, seed=4)


@pytest.mark.slow
def test_auto_formula_units_sample_every_cell_that_fits_and_rank_them_together(run_dir, tmp_path):
    config = override(checkpoint.read_config(run_dir), "data.max_atoms", "12")
    assert [(z, len(s)) for z, s in formula_cells("NaCl", config, formula_units="auto")[1]] == \
        [(1, 2), (2, 4), (3, 6), (4, 8)]
    assert [z for z, _ in formula_cells("SrTiO3", config, formula_units="auto")[1]] == [1, 2]
    assert [z for z, _ in formula_cells("Ga2Te3", config, formula_units="auto")[1]] == [1, 2]
    assert formula_cells("GaTe", config, formula_units=4)[1][0][0] == 4
    with pytest.raises(ValueError, match="not both"):
        formula_cells("NaCl", config, num_atoms=4, formula_units="auto")
    _, model, variables = models.load(run_dir)
    rows = predict(updated(config, {"eval.num_samples": 2}), model, variables, ["SrTiO3"], tmp_path,
                   formula_units="auto", log=lambda _: None)
    assert sorted((r["formula_units"], r["num_atoms"]) for r in rows) == [(1, 5), (1, 5), (2, 10), (2, 10)]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4] and {r["formula"] for r in rows} == {"SrTiO3"}
    valid = [r["energy"] for r in rows if r["valid"]]
    assert valid == sorted(valid)  # one ranking over both cell sizes
    assert len(list((tmp_path / "SrTiO3").glob("rank*.cif"))) == 4


def test_consensus_ranks_the_largest_group_of_matching_samples_first(tmp_path, monkeypatch):
    """Sampling replaced by four fixed samples of SrTiO3: two noisy copies of the cubic cell,
    a stretched cell of the lowest energy, and a collapsed one. By energy the stretched cell
    ranks first; by consensus the pair of copies does, the lower of the two first."""
    from csp_jax import predict as predict_module
    from helpers import srtio3_samples

    sampled = srtio3_samples([0.3, -1.0, 0.1, -5.0])
    monkeypatch.setattr(predict_module, "sample_rows", lambda *a, **k: sampled)
    config = tiny_config()
    model = EnergyModel.from_config(config.model)
    orders = {}
    for ranking in ("energy", "consensus"):
        rows = predict(updated(config, {"eval.num_samples": 4, "eval.ranking": ranking}), model, None,
                       ["SrTiO3"], tmp_path / ranking, log=lambda line: None)
        orders[ranking] = [(r["energy"], r["group"]) for r in rows]
        assert f"Ranked by {ranking}" in (tmp_path / ranking / "summary.md").read_text()
    assert orders["energy"] == [(-1.0, -1), (0.1, -1), (0.3, -1), (-5.0, -1)]
    assert [e for e, _ in orders["consensus"]] == [0.1, 0.3, -1.0, -5.0]
    assert [g for _, g in orders["consensus"]] == [0, 0, 1, -1]
    # The top structure, a slightly noisy cubic cell, comes with its symmetrised CIF: Pm-3m.
    top = rows[0]
    assert top["space_group"] == "Pm-3m (221)" and top["symprec"] in (0.01, 0.1, 0.5)
    assert Structure.from_file(tmp_path / "consensus" / top["symmetrised_cif"]).get_space_group_info()[1] == 221
    assert rows[-1]["symmetrised_cif"] == "" and rows[-1]["space_group"] == "n/a"  # the collapsed cell
    with pytest.raises(ValueError, match="eval.ranking: choose from"):
        updated(config, {"eval.ranking": "vote"})
