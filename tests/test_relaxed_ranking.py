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
from pymatgen.core import Structure

from csp_jax.config import get_config, updated
from csp_jax.energy.continuousp import EnergyModel
from csp_jax.predict import predict
from fake_potential import VOLUME_PER_ATOM
from helpers import perovskite_structure, srtio3_samples

FAKE = "fake_potential:calculator"


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

    # Stopped after the first crystal's relaxations: its part is kept, the other's lost.
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    (tmp_path / "cut" / "test_relaxed" / "000001.json").unlink()
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
