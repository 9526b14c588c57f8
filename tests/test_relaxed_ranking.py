"""Relaxation as a stage after sampling: `predict` and `evaluate` with `relax.enabled`, through a
test double of a potential whose minimum is known (`fake_potential.VolumeSpring`).

Tests `csp_jax.candidates.record` (`with_relaxed`, the potential's ranking), `csp_jax.predict` and
`csp_jax.evaluation.relaxed`.
"""
import csv
import json
import math
import shutil

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from pymatgen.core import Structure

from csp_jax.config import get_config, updated
from csp_jax.energy.continuousp import EnergyModel
from csp_jax.predict import predict
from fake_potential import SECOND_VOLUME_PER_ATOM, VOLUME_PER_ATOM
from helpers import perovskite_structure, srtio3_samples

FAKE = "fake_potential:calculator"
SECOND = "fake_potential:second"


@pytest.mark.slow  # grouping, relaxations and symmetrised CIFs: about 20 s
def test_predict_relaxes_a_representative_of_each_group_and_ranks_by_the_potential(tmp_path, monkeypatch):
    from csp_jax import predict as predict_module

    # Learned energies that put a noisy copy first.
    sampled = srtio3_samples([0.3, 0.5, 0.1, -5.0])
    monkeypatch.setattr(predict_module, "sample_rows", lambda *a, **k: sampled)
    config = updated(get_config("test"), {"eval.num_samples": 4, "relax.enabled": True,
                                          "relax.potential": FAKE, "relax.candidates": "representatives",
                                          "relax.max_steps": 2})
    lines = []
    rows = predict(config, EnergyModel.from_config(config.model), None, ["SrTiO3"], tmp_path, log=lines.append)
    # The copies match each other: their lowest-energy member (sample 2) represents them, and it
    # and the stretched cell relax.
    assert sum("relaxed" in line and "steps" in line for line in lines) == 2
    assert [r["energy"] for r in rows] == [0.5, 0.1, 0.3, -5.0]  # nearest the potential's minimum first
    first, second = rows[0], rows[1]
    assert first["relax_steps"] == 2 and first["converged"] is False and first["above_best_mev"] == 0.0
    assert 0 < first["potential_energy"] < second["potential_energy"]
    assert second["above_best_mev"] == pytest.approx(1000 * (second["potential_energy"] - first["potential_energy"]))
    assert rows[2]["potential_energy"] == "" and rows[3]["valid"] is False  # not relaxed; invalid last
    relaxed = Structure.from_file(tmp_path / first["cif"])
    unrelaxed = Structure.from_file(tmp_path / first["unrelaxed_cif"])
    assert first["unrelaxed_cif"].startswith("SrTiO3/unrelaxed/rank01")
    assert abs(relaxed.volume / 5 - VOLUME_PER_ATOM) < abs(unrelaxed.volume / 5 - VOLUME_PER_ATOM)
    with open(tmp_path / "summary.csv") as f:
        assert "potential_energy" in next(csv.reader(f))
    assert "Ranked by the energy per atom of fake_potential:calculator" in (tmp_path / "summary.md").read_text()

    # A second potential whose minimum is the cubic cell's volume relaxes both again and puts the
    # cubic copy first; its CIF is the second relaxation's structure.
    config = updated(config, {"relax.refine": SECOND, "relax.refine_window": 1e6})
    rows = predict(config, EnergyModel.from_config(config.model), None, ["SrTiO3"], tmp_path / "again",
                   log=lines.append)
    assert [r["energy"] for r in rows] == [0.1, 0.5, 0.3, -5.0]
    assert 0 <= rows[0]["refined_energy"] < rows[1]["refined_energy"] and rows[2]["refined_energy"] == ""
    assert rows[0]["potential_energy"] > rows[1]["potential_energy"]  # the first potential's order was the other
    refined = Structure.from_file(tmp_path / "again" / rows[0]["cif"])
    assert abs(refined.volume / 5 - SECOND_VOLUME_PER_ATOM) < abs(relaxed.volume / 5 - SECOND_VOLUME_PER_ATOM)
    assert f"that {SECOND} relaxed again" in (tmp_path / "again" / "summary.md").read_text()


class Failing(Calculator):
    """A potential that fails on every structure."""

    implemented_properties = ["energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        raise RuntimeError("no energy here")


def test_a_second_potential_relaxes_the_best_of_each_group_again_and_ranks_them_first():
    from csp_jax.candidates.record import (final, from_samples, ranked, refinements, to_refine,
                                           with_refined)
    from csp_jax.candidates.relax import Relaxed
    from csp_jax.config import RelaxConfig
    from fake_potential import VolumeSpring

    sampled = srtio3_samples([0.3, 0.5, 0.1, 0.2])
    candidates = from_samples("SrTiO3", sampled.crystals, sampled.energies, np.ones(4, int))
    # First relaxations by hand: 0 and 2 relaxed into one minimum, 3 lies 100 meV/atom above 0.
    edges = [3.6, 3.7, 3.8, 3.9]  # cubic cells of 9.3-11.9 A^3 per atom
    relaxed = tuple(Relaxed(perovskite_structure(a), e, 5, True, 0.1)
                    for a, e in zip(edges, [-1.000, -0.990, -0.995, -0.900]))
    candidates = candidates._replace(relaxed=relaxed, relaxed_matches=((0, 2),))
    config = RelaxConfig(enabled=True, refine="second", refine_window=20.0, max_steps=3)
    assert to_refine(candidates, 20.0) == [0, 1]  # 2 is represented by 0; 3 is outside the window
    assert to_refine(candidates, 200.0) == [0, 1, 3] and to_refine(candidates, 0.0) == [0]
    assert ranked(candidates, "energy").tolist() == [0, 2, 1, 3]  # the first potential alone

    lines = []
    again = with_refined(candidates, config, VolumeSpring(SECOND_VOLUME_PER_ATOM), log=lines.append)
    assert [r is not None for r in again.refined] == [True, True, False, False] and len(lines) == 2
    # The second potential's minimum is 12 A^3 per atom: sample 1's cell (10.1) lies nearer than 0's (9.3).
    assert 0 <= again.refined[1].energy_per_atom < again.refined[0].energy_per_atom
    assert ranked(again, "energy").tolist() == [1, 0, 2, 3]
    assert final(again, 1) is again.refined[1] and final(again, 2) is relaxed[2]
    # Made relaxations are kept, not made again.
    assert refinements(again, config, lambda: Failing(), log=lines.append, done=again.refined) == again.refined
    assert len(lines) == 2
    # A second relaxation that fails leaves its structure where the first potential ranked it.
    failed = with_refined(candidates, config, Failing(), log=lines.append)
    assert all(math.isnan(failed.refined[k].energy_per_atom) for k in (0, 1))
    assert ranked(failed, "energy").tolist() == [0, 2, 1, 3] and final(failed, 0) is relaxed[0]


def test_a_cell_that_collapses_stops_its_relaxation_as_failed():
    """A potential whose minimum is a cell of 0.3 A^3 per atom: FIRE shrinks the cell until it
    leaves `relax.VOLUME_PER_ATOM`, and the relaxation stops there, failed, instead of going on."""
    from csp_jax.candidates.relax import VOLUME_PER_ATOM as ALLOWED
    from csp_jax.candidates.relax import relax
    from fake_potential import VolumeSpring

    result = relax(perovskite_structure(3.9), VolumeSpring(0.3), fmax=1e-4, max_steps=500)
    assert math.isnan(result.energy_per_atom) and not result.converged and 0 < result.steps < 500
    assert "A^3 per atom" in result.message and str(ALLOWED) in result.message


@pytest.mark.slow  # an evaluation's chains and three scorings: about 40 s
def test_evaluation_with_relaxation_resumes_to_the_same_result(data_dir, tmp_path):
    from csp_jax.candidates.ranking import representatives
    from csp_jax.data.datasets import load_split
    from csp_jax.evaluation.evaluate import evaluate
    from csp_jax.evaluation.samples import load_samples

    config = updated(get_config("test"), {"eval.num_samples": 3, "eval.limit": 2, "eval.batch_size": 6,
                                          "eval.num_steps": 20, "relax.enabled": True, "relax.potential": FAKE,
                                          "relax.candidates": "all", "relax.max_steps": 3})
    model = EnergyModel.from_config(config.model)
    variables = model.init(np.array([0, 0], np.uint32))
    dataset = load_split("perov_5", "test", data_dir)
    whole = evaluate(config, model, variables, dataset, tmp_path / "whole", workers=1, log=lambda _: None)
    relaxed = whole["relaxed"]
    valid = int(np.sum(np.array(whole["outcome"]) != 2))  # every valid sample was relaxed
    assert relaxed["relaxations"] == valid and relaxed["per_crystal"] == valid / 2
    assert "Relaxed by fake_potential:calculator" in (tmp_path / "whole" / "test_metrics.md").read_text()

    # Stopped after the first crystal's relaxations, before the report: its part is kept, the
    # other's lost; the sampling's record is kept beside the samples.
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    (tmp_path / "cut" / "test_relaxed" / "000001.json").unlink()
    (tmp_path / "cut" / "test_metrics.json").unlink()
    with pytest.raises(FileExistsError, match="--resume"):
        evaluate(config, model, variables, dataset, tmp_path / "cut", workers=1, log=lambda _: None)
    with pytest.raises(ValueError, match="other settings"):
        evaluate(updated(config, {"relax.max_steps": 4}), model, variables, dataset, tmp_path / "cut",
                 resume=True, workers=1, log=lambda _: None)
    lines = []
    resumed = evaluate(config, model, variables, dataset, tmp_path / "cut", resume=True, workers=1,
                       log=lines.append)
    assert any("samples in" in line and "are complete" in line for line in lines)  # not sampled again
    for key in ("match_rate", "top1", "relaxations", "outcome", "top_by_potential", "potential_energies"):
        assert resumed["relaxed"][key] == relaxed[key]
    stored = json.loads((tmp_path / "cut" / "test_metrics.json").read_text())
    assert stored["relaxed"]["potential_energies"] == relaxed["potential_energies"]
    assert stored["sampling"] == whole["sampling"]

    # The saved relaxations serve another choice of candidates: the representatives are scored
    # from them, and nothing is relaxed again.
    parts = sorted((tmp_path / "cut" / "test_relaxed").glob("0*.json"))  # the crystals' parts
    before = [(f.read_bytes(), f.stat().st_mtime_ns) for f in parts]
    fewer = evaluate(updated(config, {"relax.candidates": "representatives"}), model, variables, dataset,
                     tmp_path / "cut", resume=True, workers=1, log=lambda _: None)["relaxed"]
    assert [(f.read_bytes(), f.stat().st_mtime_ns) for f in parts] == before
    _, energies, _ = load_samples(tmp_path / "cut" / "test_samples.npz")
    valid = np.array(whole["outcome"]) != 2
    heads = [set(representatives(e, v, m).tolist()) - {-1} for e, v, m in zip(energies, valid, whole["matches"])]
    assert fewer["relaxations"] == sum(map(len, heads)) and fewer["candidates"] == "representatives"
    for t, chosen in enumerate(heads):
        assert [fewer["outcome"][t][k] for k in chosen] == [relaxed["outcome"][t][k] for k in chosen]
        assert all(fewer["outcome"][t][k] == 2 for k in range(3) if k not in chosen)

    # A second potential relaxes again the best of each crystal (here every distinct relaxed
    # structure), from the saved relaxations, whose parts stay as they were; a lost part of its own
    # is made again alike, and the first potential's figures do not change.
    refine = updated(config, {"relax.refine": SECOND, "relax.refine_window": 1e6})
    twice = evaluate(refine, model, variables, dataset, tmp_path / "cut", resume=True, workers=1,
                     log=lambda _: None)["relaxed"]
    assert [(f.read_bytes(), f.stat().st_mtime_ns) for f in parts] == before
    assert twice["top1"] == relaxed["top1"] and twice["outcome"] == relaxed["outcome"]
    again = twice["refined"]
    energies = np.array(again["energies"], dtype=float)
    assert again["relaxations"] == int(np.isfinite(energies).sum()) >= 2 and again["potential"] == SECOND
    assert again["top"] == [int(np.nanargmin(row)) for row in energies]  # its lowest ranks first
    (tmp_path / "cut" / "test_refined" / "000001.json").unlink()
    resumed = evaluate(refine, model, variables, dataset, tmp_path / "cut", resume=True, workers=1,
                       log=lambda _: None)["relaxed"]["refined"]
    for key in ("top1", "outcome", "energies", "top", "relaxations"):
        assert resumed[key] == again[key]
    assert "relaxing again those within" in (tmp_path / "cut" / "test_metrics.md").read_text()
