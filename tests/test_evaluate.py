"""Table 1 evaluation: stored samples, reports and recomputation agree with each other.

Tests `csp_jax.evaluation.evaluate` (evaluate, recompute, resume),
`csp_jax.evaluation.metrics.add_splits`, `csp_jax.evaluation.samples`,
`csp_jax.evaluation.figures`.
"""
import json

import jax
import numpy as np
import pytest

from csp_jax.config import get_config, override, updated
from csp_jax.data.datasets import load_split, subset_indices
from csp_jax.energy.continuousp import EnergyModel
from csp_jax.evaluation.evaluate import evaluate, recompute
from csp_jax.candidates.matching import MATCH, NO_MATCH
from csp_jax.evaluation.metrics import add_splits
from csp_jax.evaluation.samples import load_samples
from csp_jax.geometry.neighbors import NeighborCapacity

METRIC_KEYS = ("num_crystals", "samples_per_crystal", "match_rate", "rmse", "match_rate_k1",
               "rmse_k1", "pair_counts", "outcome", "rms")


@pytest.mark.slow  # an evaluation, its pictures and a recomputation: about 25 s
def test_evaluate_writes_consistent_samples_and_reports(data_dir, tmp_path):
    config = override(get_config("perov5"), "sampler.num_steps", "10")
    model = EnergyModel.from_config(config.model)
    variables = model.init(jax.random.PRNGKey(0))
    dataset = load_split("perov_5", "test", data_dir)
    lines = []
    # 3 crystals x 2 chains in chunks of 4: the second chunk is filled up to shape.
    picked = subset_indices(len(dataset), 3)
    config = updated(config, {"eval.num_samples": 2, "eval.limit": 3, "eval.batch_size": 4, "eval.seed": 1,
                              "eval.match_timeout": 60})
    results = evaluate(config, model, variables, dataset, tmp_path, workers=2,
                       training=dataset.subset(picked[:1]), references=[dataset], log=lines.append)
    assert any("6/6 chains" in line for line in lines)
    assert not (tmp_path / "test_parts").exists()  # the batches were merged into test_samples.npz

    samples, energies, material_ids = load_samples(tmp_path / "test_samples.npz")
    assert samples.species.shape == (3, 2, dataset.max_atoms)
    assert energies.shape == (3, 2)
    assert list(material_ids) == list(dataset.material_ids[picked])
    # Every chain ran with its test crystal's own species vector.
    assert np.array_equal(samples.species, np.repeat(dataset.species[picked][:, None], 2, axis=1))
    # The stored energies are the model's energies of the stored crystals.
    capacity = NeighborCapacity.for_atoms(dataset.max_atoms)
    flat = jax.tree.map(lambda a: a.reshape((6,) + a.shape[2:]), samples)
    recomputed, _ = jax.jit(model.batch_energy, static_argnums=2)(variables, flat, capacity)
    np.testing.assert_allclose(np.asarray(recomputed).reshape(3, 2), energies, rtol=1e-4, atol=1e-5)

    record = json.loads((tmp_path / "test_metrics.json").read_text())
    assert record["dataset"] == "perov_5" and record["subset"] and record["num_test_total"] == len(dataset)
    assert sum(record["pair_counts"].values()) == 6
    assert record["sampling"]["chains"] == 6 and record["sampling"]["overflow_reruns"] >= 0
    for key in METRIC_KEYS:
        assert record[key] == results[key]
    markdown = (tmp_path / "test_metrics.md").read_text()
    assert f"Only 3 of the {len(dataset)} test crystals" in markdown
    assert f"{results['match_rate']:.2f}" in markdown
    # The first test crystal was made the training split: its composition is "seen".
    split = record["by_composition_in_training"]
    assert split["seen"]["num_crystals"] >= 1
    assert split["seen"]["num_crystals"] + (split["unseen"] or {"num_crystals": 0})["num_crystals"] == 3
    assert "seen (n = " in markdown and "top1" in record and "strict" in record
    # Perov-5 cells hold 5 atoms: all three crystals are in the first cell-size bin.
    assert record["by_cell_size"]["1-20 atoms"]["num_crystals"] == 3
    assert record["by_cell_size"]["21-52 atoms"] is None and "1-20 atoms (n = 3)" in markdown
    assert sum(part["num_crystals"] for part in record["by_elements"].values() if part) == 3
    assert "By number of elements" in markdown
    # Each test crystal is among the references; the others of its composition bound the top-1.
    polymorphs = record["polymorphs"]
    count = polymorphs["crystals_with_other_structures"]
    assert 0 <= count <= 3 and 100 / 3 <= polymorphs["top1_ceiling"] <= 100 - 50 * count / 3
    for ranking, top in record["top1"].items():
        assert polymorphs["any_structure"][ranking]["match_rate"] >= top["match_rate"]
    assert "top-1 ceiling" in markdown
    assert (tmp_path / "test_rmse.png").stat().st_size > 0 and (tmp_path / "test_match_rate.png").stat().st_size > 0
    # The first sample of each valid chain is also a CIF.
    assert {p.stem for p in (tmp_path / "cifs").glob("*.cif")} <= set(material_ids)

    again = recompute(tmp_path / "test_samples.npz", dataset, "perov_5", timeout_s=60, workers=2,
                      training=dataset.subset(picked[:1]), references=[dataset],
                      selection="the crystals given", log=lines.append)
    for key in METRIC_KEYS:
        assert again[key] == results[key]
    rewritten = json.loads((tmp_path / "test_metrics.json").read_text())
    assert rewritten["sampling"] == record["sampling"]
    for key in ("by_cell_size", "by_elements", "by_composition_in_training", "polymorphs"):
        assert rewritten[key] == record[key]
    assert rewritten["selection"] == "the crystals given"


def test_rates_by_cell_size_and_elements_partition_the_test_crystals():
    """Crystals of 5, 20, 21 and 52 atoms of 1, 2, 3 and 5 elements: the size bins hold 2, 2
    and none, the element bins 1 each and none of 4 alone; each bin's rate is its own."""
    outcome = np.array([[MATCH, NO_MATCH], [NO_MATCH, NO_MATCH], [NO_MATCH, MATCH], [MATCH, MATCH]])
    rms = np.where(outcome == MATCH, 0.1, np.nan)
    results = {"outcome": outcome.tolist(), "rms": rms.tolist()}
    cells = [[8] * 5, [3] * 10 + [8] * 10, [3] * 7 + [8] * 7 + [26] * 7, [1, 2, 3, 4, 5] * 10 + [8, 8]]
    species = np.array([c + [0] * (52 - len(c)) for c in cells])
    add_splits(results, species, None)
    sizes, elements = results["by_cell_size"], results["by_elements"]
    assert "by_composition_in_training" not in results  # no training crystals given
    assert list(sizes) == ["1-20 atoms", "21-52 atoms", "53+ atoms"]
    assert sizes["1-20 atoms"]["num_crystals"] == 2 and sizes["1-20 atoms"]["match_rate"] == 50.0
    assert sizes["21-52 atoms"]["num_crystals"] == 2 and sizes["21-52 atoms"]["match_rate"] == 100.0
    assert sizes["53+ atoms"] is None
    assert sizes["1-20 atoms"]["match_rate_k1"] == 50.0 and sizes["21-52 atoms"]["match_rate_k1"] == 50.0
    assert list(elements) == ["1 element", "2 elements", "3 elements", "4+ elements"]
    assert [elements[k]["match_rate"] for k in elements] == [100.0, 0.0, 100.0, 100.0]
    assert [elements[k]["num_crystals"] for k in elements] == [1, 1, 1, 1]


def test_recompute_refuses_samples_of_another_split(data_dir, tmp_path):
    dataset = load_split("perov_5", "test", data_dir, limit=20)  # the first rows: no parse of the whole split
    path = tmp_path / "test_samples.npz"
    np.savez(path, species=np.ones((1, 1, 5), np.int32), positions=np.zeros((1, 1, 5, 3)),
             lattice=np.eye(3)[None, None], energies=np.zeros((1, 1)), material_ids=np.array(["none"]))
    with pytest.raises(ValueError, match="not in the dataset"):
        recompute(path, dataset, "perov_5", timeout_s=60)


class Interrupted(Exception):
    pass


@pytest.mark.slow  # three evaluations: 15-20 s
def test_interrupted_evaluation_resumes_to_the_same_result(data_dir, tmp_path):
    """Killed after its first batch of chains, `evaluate(resume=True)` samples only the rest and
    gives the samples and metrics of an uninterrupted run; without resume it refuses to start."""
    config = override(get_config("perov5"), "sampler.num_steps", "10")
    model = EnergyModel.from_config(config.model)
    variables = model.init(jax.random.PRNGKey(0))
    dataset = load_split("perov_5", "test", data_dir)
    config = updated(config, {"eval.num_samples": 2, "eval.limit": 5, "eval.batch_size": 4, "eval.seed": 3,
                              "eval.match_timeout": 60})
    options = dict(workers=1)
    whole = evaluate(config, model, variables, dataset, tmp_path / "whole", log=lambda _: None, **options)

    def stop_after_first_batch(line):
        if "4/10 chains" in line:
            raise Interrupted
    with pytest.raises(Interrupted):
        evaluate(config, model, variables, dataset, tmp_path / "cut", log=stop_after_first_batch, **options)
    assert sorted(p.name for p in (tmp_path / "cut" / "test_parts").glob("rows_*")) == ["rows_00000000.npz"]
    with pytest.raises(FileExistsError, match="--resume"):
        evaluate(config, model, variables, dataset, tmp_path / "cut", log=lambda _: None, **options)
    with pytest.raises(ValueError, match="other settings"):
        evaluate(updated(config, {"eval.num_samples": 3}), model, variables, dataset, tmp_path / "cut",
                 resume=True, log=lambda _: None, **options)
    with pytest.raises(ValueError, match="other settings"):  # parts of another model's chains
        evaluate(config, model, model.init(jax.random.PRNGKey(1)), dataset, tmp_path / "cut",
                 resume=True, log=lambda _: None, **options)
    lines = []
    resumed = evaluate(config, model, variables, dataset, tmp_path / "cut", resume=True, log=lines.append,
                       **options)
    assert any("resuming: 1 batches" in line for line in lines)
    assert any("6/6 chains" in line for line in lines)  # only the 6 chains left were sampled
    for key in METRIC_KEYS:
        assert resumed[key] == whole[key]
    first, second = (np.load(tmp_path / run / "test_samples.npz") for run in ("whole", "cut"))
    for name in first.files:
        np.testing.assert_array_equal(first[name], second[name])
