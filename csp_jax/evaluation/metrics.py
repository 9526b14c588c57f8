"""The paper's Table 1 metrics (SPEC §5): match rate, RMSE and their intervals.

`evaluate_samples` matches every (test crystal, sample) pair and aggregates the
outcomes into match rate and RMSE over K samples and over the first sample
alone (`aggregate`); `split_by`, `binned` and `add_splits` give the metrics of
parts of the test crystals (by cell size, by number of elements, seen or
unseen in training).
"""
from __future__ import annotations

import collections
import math
from typing import Sequence

import numpy as np

from csp_jax.candidates.matching import (INVALID, MATCH, MATCHER_KWARGS, OUTCOME_NAMES,
                                         STRICT_MATCHER_KWARGS, PairResult,
                                         match_pair, match_pair_strict, match_pairs)
from csp_jax.candidates.ranking import RANKINGS, cluster_labels, ranked_order, sample_matches, wilson_interval
from csp_jax.data.dataset import CrystalDataset
from csp_jax.evaluation.samples import sample_at
from csp_jax.geometry.crystal import Crystal, formula_key

CELL_SIZES = ((1, 20), (21, 52), (53, None))  # bins of the report's match rate by cell size (atoms)
ELEMENT_COUNTS = ((1, 1), (2, 2), (3, 3), (4, None))  # ... and by the number of elements


def match_rate_and_rmse(outcome: np.ndarray, rms: np.ndarray) -> tuple[float, float | None]:
    """(% of the T crystals with a MATCH among their samples, mean over those of their smallest
    RMS or None) of outcome codes and RMS [T, K]."""
    matched = outcome == MATCH
    found = matched.any(axis=1)
    best = np.where(matched, rms, np.inf).min(axis=1)
    rmse = float(best[found].mean()) if found.any() else None
    return 100.0 * float(found.mean()), rmse


def match_interval(outcome: np.ndarray) -> list[float]:
    """The Wilson 95% interval (%) of `match_rate_and_rmse`'s rate."""
    found = (outcome == MATCH).any(axis=1)
    return list(wilson_interval(int(found.sum()), len(found)))


def aggregate(outcome, rms, energies=None, labels=None, stol: float = MATCHER_KWARGS["stol"]) -> dict:
    """Table 1 metrics from per-pair outcomes, with the top-ranked sample's rates.

    outcome: [T, K] outcome codes of `csp_jax.candidates.matching`; rms: [T, K], read only where MATCH.
    match_rate: % of test crystals with at least one matching sample; rmse: mean
    over those crystals of their smallest RMS (None when nothing matched); the
    `_k1` pair uses the first sample only; `_interval`: Wilson 95% intervals.
    crmse: the mean smallest RMS over all crystals, a crystal without a match
    counted at `stol`. sample_match_rate: % of all samples that match.
    pair_counts: pairs per outcome. With energies [T, K] and cluster labels
    [T, K] (`ranking.cluster_labels`): `top1[ranking]` (match rate, interval,
    RMSE of the top sample of each of `ranking.RANKINGS`) and
    distinct_structures, the mean number of clusters per crystal.
    """
    outcome = np.asarray(outcome)
    rms = np.asarray(rms, dtype=np.float64)
    if outcome.ndim != 2 or outcome.size == 0 or rms.shape != outcome.shape:
        raise ValueError(f"need non-empty outcome and rms of equal shape [T, K], got {outcome.shape}, {rms.shape}")
    match_rate, rmse = match_rate_and_rmse(outcome, rms)
    match_rate_k1, rmse_k1 = match_rate_and_rmse(outcome[:, :1], rms[:, :1])
    best = np.where(outcome == MATCH, rms, np.inf).min(axis=1)
    results = {
        "num_crystals": outcome.shape[0],
        "samples_per_crystal": outcome.shape[1],
        "match_rate": match_rate, "rmse": rmse,
        "match_rate_k1": match_rate_k1, "rmse_k1": rmse_k1,
        "match_rate_interval": match_interval(outcome), "match_rate_k1_interval": match_interval(outcome[:, :1]),
        "crmse": float(np.minimum(best, stol).mean()),
        "sample_match_rate": 100.0 * float(np.mean(outcome == MATCH)),
        "pair_counts": {name: int((outcome == code).sum()) for code, name in enumerate(OUTCOME_NAMES)},
    }
    if energies is None or labels is None:
        return results
    labels = np.asarray(labels)
    rows = np.arange(outcome.shape[0])
    results["top1"] = {}
    for ranking in RANKINGS:
        top = np.array([ranked_order(e, lab, ranking)[0] for e, lab in zip(np.asarray(energies), labels)])
        rate, top_rmse = match_rate_and_rmse(outcome[rows, top][:, None], rms[rows, top][:, None])
        results["top1"][ranking] = {"match_rate": rate, "interval": match_interval(outcome[rows, top][:, None]),
                                    "rmse": top_rmse}
    results["distinct_structures"] = float(np.mean(labels.max(axis=1) + 1))
    return results


def match_crystals(gt_structures: Sequence, samples: Crystal, timeout_s: float, workers: int | None = None,
                   match_fn=match_pair, energies=None) -> dict:
    """The per-crystal records of matching T test crystals' samples (what `summarize` aggregates).

    gt_structures: T pymatgen Structures; samples: `Crystal` [T, K, N];
    energies: [T, K] final energies (None: no energy or consensus ranking).
    Three rounds of matching in the worker pool: every pair at the usual
    tolerances (`match_fn`); the pairs that matched again at
    STRICT_MATCHER_KWARGS (a pair that does not match at the usual tolerances
    does not at stricter ones); and, with energies, the valid samples of each
    crystal against each other, whose matches cluster them
    (`ranking.cluster_labels`). Returns lists of T rows: `outcome` [T][K]
    (codes), `rms` [T][K] (None unless matched), their `_strict` twins,
    `volume_ratio` [T][K] (V_sample / V_true of matched samples, else None),
    `labels` [T][K] and `matches` [T] (lists of matching sample pairs [i, j]; both with
    energies), and `error_messages` (text: count). The
    rows of several calls on parts of the crystals concatenate (`concatenated`).
    """
    num_crystals, num_samples = np.shape(samples.species)[:2]
    if len(gt_structures) != num_crystals:
        raise ValueError(f"{len(gt_structures)} ground-truth structures for {num_crystals} sample rows")
    cells = [[sample_at(samples, t, k) for k in range(num_samples)] for t in range(num_crystals)]
    index = [(t, k) for t in range(num_crystals) for k in range(num_samples)]
    results: list[PairResult] = match_pairs([(gt_structures[t], cells[t][k]) for t, k in index],
                                            timeout_s, workers, match_fn)
    outcome = np.array([r.outcome for r in results], int).reshape(num_crystals, num_samples)
    rms = np.array([r.rms for r in results], float).reshape(num_crystals, num_samples)

    again = [(t, k) for t, k in index if outcome[t, k] == MATCH]
    strict_outcome, strict_rms = outcome.copy(), rms.copy()
    for (t, k), r in zip(again, match_pairs([(gt_structures[t], cells[t][k]) for t, k in again],
                                            timeout_s, workers, match_pair_strict)):
        strict_outcome[t, k], strict_rms[t, k] = r.outcome, r.rms

    volume_ratio = np.full((num_crystals, num_samples), math.nan)
    for t, k in index:
        if outcome[t, k] == MATCH:
            volume = abs(np.linalg.det(np.asarray(cells[t][k].lattice, np.float64)))
            volume_ratio[t, k] = volume / gt_structures[t].volume
    nan_to_none = lambda a: [[None if math.isnan(x) else x for x in row] for row in a.tolist()]  # noqa: E731
    record = {"outcome": outcome.tolist(), "rms": nan_to_none(rms), "outcome_strict": strict_outcome.tolist(),
              "rms_strict": nan_to_none(strict_rms), "volume_ratio": nan_to_none(volume_ratio),
              "error_messages": dict(collections.Counter(r.message for r in results if r.message))}
    if energies is not None:
        valid = (outcome != INVALID) & np.isfinite(np.asarray(energies))
        matches = sample_matches(cells, valid.tolist(), timeout_s, workers)
        record["labels"] = [cluster_labels(flags, found).tolist() for flags, found in zip(valid, matches)]
        record["matches"] = [[list(pair) for pair in found] for found in matches]
    return record


def concatenated(parts: Sequence[dict], order) -> dict:
    """The records of `match_crystals` on parts of the crystals as one, its rows in the crystals'
    order: `order` [T] gives, for each crystal, its row in the parts' rows one after another."""
    rows = {key: [row for part in parts for row in part[key]] for key in parts[0] if key != "error_messages"}
    record = {key: [value[i] for i in order] for key, value in rows.items()}
    record["error_messages"] = dict(sum((collections.Counter(p["error_messages"]) for p in parts),
                                        collections.Counter()))
    return record


def summarize(matched: dict, energies=None) -> dict:
    """Table 1 metrics (see `aggregate`) of `match_crystals`' records, with them: the usual and the
    `strict` tolerances' metrics, `volume_ratio` (10th, 50th and 90th percentile of V_sample /
    V_true over matched samples: the matcher scales volumes away), `outcome_names`, and the
    per-pair records themselves, so the metrics can be recomputed with `aggregate`."""
    outcome = np.asarray(matched["outcome"])
    as_float = lambda a: np.array(a, dtype=np.float64)  # noqa: E731 (None -> nan)
    labels = np.asarray(matched["labels"]) if "labels" in matched else None
    ratios = as_float(matched["volume_ratio"])
    ratios = ratios[np.isfinite(ratios)]
    record = {
        **aggregate(outcome, as_float(matched["rms"]), energies, labels),
        "strict": {"tolerances": STRICT_MATCHER_KWARGS,
                   **aggregate(np.asarray(matched["outcome_strict"]), as_float(matched["rms_strict"]), energies,
                               labels, STRICT_MATCHER_KWARGS["stol"])},
        "tolerances": MATCHER_KWARGS,
        "volume_ratio": np.percentile(ratios, [10, 50, 90]).tolist() if ratios.size else None,
        "outcome_names": list(OUTCOME_NAMES),
        **{key: matched[key] for key in ("outcome", "rms", "outcome_strict", "rms_strict", "error_messages")},
    }
    if labels is not None:
        record["labels"], record["matches"] = matched["labels"], matched["matches"]
    return record


def evaluate_samples(gt_structures: Sequence, samples: Crystal, timeout_s: float, workers: int | None = None,
                     match_fn=match_pair, energies=None) -> dict:
    """Match every (test crystal, sample) pair and aggregate: `summarize(match_crystals(...))`."""
    return summarize(match_crystals(gt_structures, samples, timeout_s, workers, match_fn, energies), energies)


def split_by(results: dict, mask, energies=None) -> dict | None:
    """`aggregate` of the test crystals where mask [T] holds (None when there are none),
    from the per-pair records of `evaluate_samples` (energies [T, K] for the rankings)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return None
    labels = np.asarray(results["labels"])[mask] if "labels" in results else None
    rms = np.array(results["rms"], dtype=np.float64)[mask]
    return aggregate(np.asarray(results["outcome"])[mask], rms,
                     None if energies is None else np.asarray(energies)[mask], labels)


def _bin_name(lo: int, hi: int | None, unit: str) -> str:
    """"1-20 atoms", "53+ atoms", "1 element", "3 elements"."""
    if hi is None:
        return f"{lo}+ {unit}s"
    if lo == hi:
        return f"{lo} {unit}" + ("" if lo == 1 else "s")
    return f"{lo}-{hi} {unit}s"


def binned(results: dict, values, bins, unit: str, energies) -> dict:
    """The metrics of the test crystals by a count (values [T]) in inclusive bins (lo, hi),
    hi None for no upper end, keyed by `_bin_name`; a bin without crystals is None."""
    values = np.asarray(values)
    return {_bin_name(lo, hi, unit): split_by(results, (values >= lo) & (values <= (hi or np.inf)), energies)
            for lo, hi in bins}


def add_splits(results: dict, species, energies, training: CrystalDataset | None = None) -> None:
    """Add to `results` the metrics of the test crystals (species [T, N], 0 = padding) by cell
    size (`by_cell_size`), by number of elements (`by_elements`) and, given the training
    crystals, by whether their reduced composition occurs among them
    (`by_composition_in_training`: "seen" / "unseen")."""
    species = np.asarray(species)
    if training is not None:
        known = {formula_key(row) for row in training.species}
        seen = np.array([formula_key(row) in known for row in species])
        results["by_composition_in_training"] = {
            "seen": split_by(results, seen, energies), "unseen": split_by(results, ~seen, energies)}
    elements = [len(set(row[row > 0].tolist())) for row in species]
    results["by_cell_size"] = binned(results, np.count_nonzero(species, axis=1), CELL_SIZES, "atom", energies)
    results["by_elements"] = binned(results, elements, ELEMENT_COUNTS, "element", energies)
