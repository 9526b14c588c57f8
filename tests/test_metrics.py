"""Table 1 aggregation on a hand-computed case, the sample file round trip, and reports.

Tests `csp_jax.evaluation.metrics`, `csp_jax.evaluation.samples`, `csp_jax.evaluation.report` and
`csp_jax.candidates.ranking`.
"""
import json

import numpy as np
import pytest

from csp_jax.geometry.crystal import from_structure, stack, to_structure
from csp_jax.candidates.matching import ERROR, INVALID, MATCH, NO_MATCH, TIMEOUT, match_pair
from csp_jax.candidates.ranking import cluster_labels, ranked_order, representatives, wilson_interval
from csp_jax.evaluation.metrics import aggregate, evaluate_samples, split_by
from csp_jax.evaluation.report import markdown_report, paper_table, write_report
from csp_jax.evaluation.samples import load_samples, sample_at, save_samples
from helpers import perovskite_structure


def test_aggregate_hand_computed():
    outcome = np.array([[MATCH, MATCH], [NO_MATCH, MATCH], [ERROR, TIMEOUT], [INVALID, NO_MATCH]])
    # Entries that are not matches carry junk that must be ignored.
    rms = np.array([[0.2, 0.1], [0.0, 0.5], [0.0, np.nan], [0.01, 0.02]])
    metrics = aggregate(outcome, rms)
    # Crystals 0 and 1 match (best 0.1 and 0.5); with k = 1 only crystal 0 (0.2).
    assert metrics["num_crystals"] == 4 and metrics["samples_per_crystal"] == 2
    assert metrics["match_rate"] == pytest.approx(50.0)
    assert metrics["rmse"] == pytest.approx(0.3)
    assert metrics["match_rate_k1"] == pytest.approx(25.0)
    assert metrics["rmse_k1"] == pytest.approx(0.2)
    assert metrics["pair_counts"] == {"match": 3, "no_match": 2, "invalid": 1, "error": 1, "timeout": 1}


def test_aggregate_without_matches_has_no_rmse():
    metrics = aggregate(np.full((3, 4), NO_MATCH), np.full((3, 4), np.nan))
    assert metrics["match_rate"] == 0.0 and metrics["rmse"] is None and metrics["rmse_k1"] is None


def variants(gt, rng):
    """An exact copy, a noisy copy, a stretched copy (no match) and a NaN-lattice copy, padded to 6."""
    exact = from_structure(gt, max_atoms=6, dtype=np.float64)
    stretch = np.array([1.0, 1.0, 1.6])
    return {
        "exact": exact,
        "noisy": exact.replace(positions=exact.positions + 0.03 * rng.standard_normal((6, 3))),
        "stretched": exact.replace(lattice=exact.lattice * stretch, positions=exact.positions * stretch),
        "nan": exact.replace(lattice=np.full((3, 3), np.nan)),
    }


def make_samples():
    """Two test crystals x three samples: [T=2, K=3, N=6] (one padding slot)."""
    rng = np.random.default_rng(0)
    gts = [perovskite_structure(3.9), perovskite_structure(4.2)]
    first, second = variants(gts[0], rng), variants(gts[1], rng)
    rows = [[first["noisy"], first["stretched"], first["nan"]],
            [second["stretched"], second["noisy"], second["exact"]]]
    return gts, stack([stack(row) for row in rows])


def test_samples_file_round_trip(tmp_path):
    gts, samples = make_samples()
    energies = np.arange(6.0).reshape(2, 3)
    save_samples(tmp_path / "test.npz", samples, energies, ["mp-1", "mp-22"])
    loaded, loaded_energies, ids = load_samples(tmp_path / "test.npz")
    for name in ("species", "positions", "lattice"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(samples, name))
    np.testing.assert_array_equal(loaded_energies, energies)
    assert ids.tolist() == ["mp-1", "mp-22"]
    assert to_structure(sample_at(loaded, 1, 2)) == gts[1]
    with pytest.raises(ValueError):
        save_samples(tmp_path / "bad.npz", samples, energies[:, :2], ["mp-1", "mp-22"])


def test_wilson_interval_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 27.75), abs=0.01)
    assert wilson_interval(5, 10) == pytest.approx((23.66, 76.34), abs=0.01)
    assert wilson_interval(99, 100) == pytest.approx((94.55, 99.82), abs=0.01)


def test_rankings_pick_energy_and_the_largest_cluster():
    energies = np.array([0.5, -1.0, 0.2, 0.1, -3.0, np.nan])
    valid = np.array([True, True, True, True, False, True])
    labels = cluster_labels(valid, [(0, 2), (2, 3)])  # 0, 2, 3 one structure; 1 alone
    assert labels.tolist() == [0, 1, 0, 0, -1, 2]
    assert ranked_order(energies, labels, "first").tolist() == [0, 1, 2, 3, 4, 5]
    # Energy: the invalid sample (-3.0) and the non-finite one go last.
    assert ranked_order(energies, labels, "energy")[:4].tolist() == [1, 3, 2, 0]
    assert set(ranked_order(energies, labels, "energy")[4:].tolist()) == {4, 5}
    # Consensus: the cluster of three, by energy, then the lone sample.
    assert ranked_order(energies, labels, "consensus")[:4].tolist() == [3, 2, 0, 1]
    with pytest.raises(ValueError, match="unknown ranking"):
        ranked_order(energies, labels, "vote")



def test_every_sample_matches_its_representative():
    """A chain of matches a-b-c (a and c differ) is one connected component, but two
    representatives: the lowest-energy sample a, and c, which matches b but not a."""
    energies = np.array([0.3, 0.1, 0.2, 0.0, -1.0])  # samples 1 (a), 2 (b), 0 (c), 3 alone, 4 invalid
    valid = np.array([True, True, True, True, False])
    chain = [(1, 2), (2, 0)]
    assert cluster_labels(valid, chain).tolist() == [0, 0, 0, 1, -1]
    assert representatives(energies, valid, chain).tolist() == [0, 1, 1, 3, -1]

    rng = np.random.default_rng(0)
    for _ in range(20):
        num = 12
        pairs = [(i, j) for i in range(num) for j in range(i + 1, num) if rng.random() < 0.3]
        valid, energies = rng.random(num) < 0.9, rng.normal(size=num)
        chosen = representatives(energies, valid, pairs)
        heads = set(chosen[chosen >= 0].tolist())
        matched = set(pairs) | {(j, i) for i, j in pairs}
        assert all(chosen[k] == k or (k, chosen[k]) in matched for k in np.flatnonzero(valid))
        assert all((i, j) not in matched for i in heads for j in heads if i != j)  # representatives differ
        assert (chosen[~valid] == -1).all()
        # Each sample's representative is the lowest-energy one it matches.
        for k in np.flatnonzero(valid):
            options = [h for h in heads if h == k or (k, h) in matched]
            assert chosen[k] == min(options, key=lambda h: energies[h])

def test_evaluate_samples_matches_per_pair_protocol(tmp_path):
    gts, samples = make_samples()
    energies = np.array([[1.0, 0.0, -5.0], [0.0, 2.0, 3.0]])
    results = evaluate_samples(gts, samples, timeout_s=60.0, workers=2, energies=energies)
    assert results["outcome"] == [[MATCH, NO_MATCH, INVALID], [NO_MATCH, MATCH, MATCH]]
    for t in range(2):
        for k in range(3):
            expected = match_pair(gts[t], sample_at(samples, t, k))
            assert results["rms"][t][k] == (None if np.isnan(expected.rms) else pytest.approx(expected.rms))
    assert results["rms"][1][2] < 1e-6
    assert results["match_rate"] == 100.0 and results["match_rate_k1"] == 50.0
    assert results["rmse"] == pytest.approx((results["rms"][0][0] + results["rms"][1][2]) / 2)
    assert results["pair_counts"] == {"match": 3, "no_match": 2, "invalid": 1, "error": 0, "timeout": 0}
    # Samples against each other: only crystal 1's noisy and exact copies are one structure.
    assert results["labels"] == [[0, 1, -1], [0, 1, 1]] and results["distinct_structures"] == 2.0
    # Lowest energy picks the stretched copies (the NaN cell is invalid, whatever its energy);
    # the consensus picks crystal 1's pair of copies, which matches.
    top = results["top1"]
    assert (top["first"]["match_rate"], top["energy"]["match_rate"], top["consensus"]["match_rate"]) == (50, 0, 50)
    assert results["sample_match_rate"] == pytest.approx(50.0)
    assert results["crmse"] == pytest.approx(results["rmse"])  # both crystals matched
    assert results["match_rate_interval"] == pytest.approx(list(wilson_interval(2, 2)))
    assert results["strict"]["match_rate"] == 100.0 and results["strict"]["tolerances"]["stol"] == 0.3
    assert results["rms_strict"][1][2] < 1e-6
    assert results["volume_ratio"] == pytest.approx([1.0, 1.0, 1.0])  # noise moves atoms, not cells
    first, second = split_by(results, [True, False], energies), split_by(results, [False, True], energies)
    assert first["num_crystals"] == second["num_crystals"] == 1 and split_by(results, [False, False]) is None
    assert (first["top1"]["first"]["match_rate"], second["top1"]["consensus"]["match_rate"]) == (100, 100)
    assert second["top1"]["energy"]["match_rate"] == 0 and second["distinct_structures"] == 2

    json_path, md_path = write_report(results, tmp_path / "perov_5", "perov_5", num_test_total=3785)
    record = json.loads(json_path.read_text())
    assert record["subset"] and record["num_test_total"] == 3785
    recomputed = aggregate(record["outcome"], np.array(record["rms"], dtype=float), energies, record["labels"])
    assert recomputed == {key: results[key] for key in recomputed}
    table = md_path.read_text()
    assert "Only 2 of the 3785 test crystals" in table
    assert "| csp_jax, 3 samples | 100.00, " in table
    assert "| csp_jax, top-ranked of 3 by consensus | 50.00, " in table
    assert "| top by energy | 0.00 [0.0, 65.8], n/a |" in table and "stol 0.3, ltol 0.2" in table
    assert all(method in table for method in paper_table())
    assert "| 99.16, 0.0893 | 44.21, 0.1757 | 11.77, 0.2647 |" in table
    assert "Only" not in markdown_report(results, "perov_5", num_test_total=2)
    assert ("(--skip 5 --limit 7: crystals 6 to 7 of the fixed shuffle)"
            in markdown_report({**results, "skip": 5}, "perov_5", num_test_total=3785))
