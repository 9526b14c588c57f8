"""The paper's Table 1 evaluation: sample files, match metrics and reports (SPEC §5).

Sampled crystals of one split are stored in one `.npz` (padded arrays, see
`save_samples`) so the metrics can be recomputed without sampling again.
`evaluate_samples` matches every (test crystal, sample) pair and aggregates the
outcomes into match rate and RMSE over K samples and over the first sample
alone; `write_report` writes them as JSON and as a Markdown table beside the
paper's Table 1.
"""
from __future__ import annotations

import collections
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from csp_jax.data.registry import DATASETS, dataset_info
from csp_jax.evaluation.relaxed import relaxed_lines
from csp_jax.geometry.crystal import Crystal
from csp_jax.candidates.matching import (INVALID, MATCH, MATCHER_KWARGS, OUTCOME_NAMES,
                                         STRICT_MATCHER_KWARGS, PairResult,
                                         match_pair, match_pair_strict, match_pairs)
from csp_jax.candidates.ranking import RANKINGS, cluster_samples, ranked_order, wilson_interval

def paper_table() -> dict:
    """The paper's Table 1 (20 samples per test crystal): method -> dataset -> (match rate %, RMSE)."""
    table = {}
    for info in DATASETS.values():
        for method, numbers in info.paper.items():
            table.setdefault(method, {})[info.name] = numbers
    return table


def save_samples(path, samples: Crystal, energies, material_ids: Sequence[str]) -> None:
    """Store the samples of one split in a compressed `.npz`.

    samples: `Crystal` with species [T, K, N], positions [T, K, N, 3], lattice [T, K, 3, 3]
             (T test crystals, K samples each); energies: [T, K]; material_ids: [T].
    """
    species = np.asarray(samples.species, np.int32)
    energies = np.asarray(energies)
    material_ids = np.asarray(material_ids, dtype=str)
    if species.ndim != 3 or energies.shape != species.shape[:2] or material_ids.shape != species.shape[:1]:
        raise ValueError(f"inconsistent shapes: species {species.shape}, energies {energies.shape}, "
                         f"material_ids {material_ids.shape}; expected [T, K, N], [T, K], [T]")
    np.savez_compressed(path, species=species, positions=np.asarray(samples.positions),
                        lattice=np.asarray(samples.lattice), energies=energies,
                        material_ids=material_ids)


def load_samples(path) -> tuple[Crystal, np.ndarray, np.ndarray]:
    """Read a file of `save_samples`: (samples [T, K, N], energies [T, K], material_ids [T]).

    One sample as a pymatgen Structure: `crystal.to_structure(sample_at(samples, t, k))`.
    """
    with np.load(path) as f:
        return Crystal(f["species"], f["positions"], f["lattice"]), f["energies"], f["material_ids"]


def sample_at(samples: Crystal, t: int, k: int) -> Crystal:
    """Sample k of test crystal t from a `[T, K, N]` batch, as numpy arrays."""
    return Crystal(*(np.asarray(x)[t, k] for x in (samples.species, samples.positions, samples.lattice)))


def _match_rate_and_rmse(outcome: np.ndarray, rms: np.ndarray) -> tuple[float, float | None]:
    matched = outcome == MATCH
    found = matched.any(axis=1)
    best = np.where(matched, rms, np.inf).min(axis=1)
    rmse = float(best[found].mean()) if found.any() else None
    return 100.0 * float(found.mean()), rmse


def _interval(outcome: np.ndarray) -> list[float]:
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
    match_rate, rmse = _match_rate_and_rmse(outcome, rms)
    match_rate_k1, rmse_k1 = _match_rate_and_rmse(outcome[:, :1], rms[:, :1])
    best = np.where(outcome == MATCH, rms, np.inf).min(axis=1)
    results = {
        "num_crystals": outcome.shape[0],
        "samples_per_crystal": outcome.shape[1],
        "match_rate": match_rate, "rmse": rmse,
        "match_rate_k1": match_rate_k1, "rmse_k1": rmse_k1,
        "match_rate_interval": _interval(outcome), "match_rate_k1_interval": _interval(outcome[:, :1]),
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
        rate, top_rmse = _match_rate_and_rmse(outcome[rows, top][:, None], rms[rows, top][:, None])
        results["top1"][ranking] = {"match_rate": rate, "interval": _interval(outcome[rows, top][:, None]),
                                    "rmse": top_rmse}
    results["distinct_structures"] = float(np.mean(labels.max(axis=1) + 1))
    return results


def evaluate_samples(
    gt_structures: Sequence,
    samples: Crystal,
    timeout_s: float,
    workers: int | None = None,
    match_fn=match_pair,
    energies=None,
) -> dict:
    """Match every (test crystal, sample) pair and aggregate (see `aggregate`).

    gt_structures: T pymatgen Structures; samples: `Crystal` [T, K, N];
    energies: [T, K] final energies (None: no energy or consensus ranking).
    Three rounds of matching in the worker pool: every pair at the usual
    tolerances (`match_fn`); the pairs that matched again at
    STRICT_MATCHER_KWARGS (a pair that does not match at the usual tolerances
    does not at stricter ones), reported as `strict` (the same metrics); and,
    with energies, the valid samples of each crystal against each other, whose
    matches cluster them (`ranking.cluster_labels`: `labels` [T][K]).
    Adds per-pair `outcome` [T][K] (codes, names in `outcome_names`), `rms`
    [T][K] (None unless matched), their `_strict` twins, `volume_ratio`
    (10th, 50th and 90th percentile of V_sample / V_true over matched samples:
    the matcher scales volumes away) and `error_messages` (text: count), so
    the metrics can be recomputed with `aggregate`.
    """
    num_crystals, num_samples = np.shape(samples.species)[:2]
    if len(gt_structures) != num_crystals:
        raise ValueError(f"{len(gt_structures)} ground-truth structures for {num_crystals} sample rows")
    cells = [[sample_at(samples, t, k) for k in range(num_samples)] for t in range(num_crystals)]
    index = [(t, k) for t in range(num_crystals) for k in range(num_samples)]
    results: list[PairResult] = match_pairs([(gt_structures[t], cells[t][k]) for t, k in index],
                                            timeout_s, workers, match_fn)
    outcome = np.array([r.outcome for r in results]).reshape(num_crystals, num_samples)
    rms = np.array([r.rms for r in results]).reshape(num_crystals, num_samples)

    again = [(t, k) for t, k in index if outcome[t, k] == MATCH]
    strict_outcome, strict_rms = outcome.copy(), rms.copy()
    for (t, k), r in zip(again, match_pairs([(gt_structures[t], cells[t][k]) for t, k in again],
                                            timeout_s, workers, match_pair_strict)):
        strict_outcome[t, k], strict_rms[t, k] = r.outcome, r.rms

    labels = None
    if energies is not None:
        valid = (outcome != INVALID) & np.isfinite(np.asarray(energies))
        labels = np.array(cluster_samples(cells, valid.tolist(), timeout_s, workers))

    volume_ratios = [abs(np.linalg.det(np.asarray(cells[t][k].lattice, np.float64))) / gt_structures[t].volume
                     for t, k in index if outcome[t, k] == MATCH]
    nan_to_none = lambda a: [[None if math.isnan(x) else x for x in row] for row in a.tolist()]  # noqa: E731
    record = {
        **aggregate(outcome, rms, energies, labels),
        "strict": {"tolerances": STRICT_MATCHER_KWARGS,
                   **aggregate(strict_outcome, strict_rms, energies, labels, STRICT_MATCHER_KWARGS["stol"])},
        "tolerances": MATCHER_KWARGS,
        "volume_ratio": (np.percentile(volume_ratios, [10, 50, 90]).tolist() if volume_ratios else None),
        "outcome_names": list(OUTCOME_NAMES),
        "outcome": outcome.tolist(), "rms": nan_to_none(rms),
        "outcome_strict": strict_outcome.tolist(), "rms_strict": nan_to_none(strict_rms),
        "error_messages": dict(collections.Counter(r.message for r in results if r.message)),
    }
    if labels is not None:
        record["labels"] = labels.tolist()
    return record


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


def _cell(match_rate: float, rmse: float | None) -> str:
    return f"{match_rate:.2f}, {'n/a' if rmse is None else f'{rmse:.4f}'}"


def _detail_table(results: dict) -> list[str]:
    """Every rate with its Wilson 95% interval, at the usual and the strict tolerances."""
    k = results["samples_per_crystal"]

    def rates(r: dict) -> list[tuple[str, float, list, float | None]]:
        out = [(f"any of {k}", r["match_rate"], r["match_rate_interval"], r["rmse"]),
               ("first", r["match_rate_k1"], r["match_rate_k1_interval"], r["rmse_k1"])]
        out += [(f"top by {name}", t["match_rate"], t["interval"], t["rmse"])
                for name, t in r.get("top1", {}).items() if name != "first"]
        return out

    def tolerances(t: dict) -> str:
        return f"stol {t['stol']}, ltol {t['ltol']}, angle_tol {t['angle_tol']}"

    strict = results.get("strict")
    head = f"| sample | match rate (%) [95% interval], RMSE: {tolerances(results['tolerances'])} |"
    lines = [head + (f" {tolerances(strict['tolerances'])} |" if strict else ""),
             "|---|---|" + ("---|" if strict else "")]
    for i, (name, rate, interval, rmse) in enumerate(rates(results)):
        cells = [f"{rate:.2f} [{interval[0]:.1f}, {interval[1]:.1f}], {'n/a' if rmse is None else f'{rmse:.4f}'}"]
        if strict:
            _, s_rate, s_interval, s_rmse = rates(strict)[i]
            cells.append(f"{s_rate:.2f} [{s_interval[0]:.1f}, {s_interval[1]:.1f}], "
                         f"{'n/a' if s_rmse is None else f'{s_rmse:.4f}'}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = [f"cRMSE (a crystal without a match counted at stol) {results['crmse']:.4f}"
             + (f", strict {strict['crmse']:.4f}" if strict else ""),
             f"samples that match {results['sample_match_rate']:.2f}%"]
    if "distinct_structures" in results:
        notes.append(f"distinct structures per crystal {results['distinct_structures']:.2f}")
    if results.get("volume_ratio"):
        p10, p50, p90 = results["volume_ratio"]
        notes.append(f"V_sample / V_true of matched samples {p50:.3f} (10th-90th percentile {p10:.3f}-{p90:.3f})")
    return lines + ["", "; ".join(notes) + "."]


def _split_text(parts: dict) -> str:
    """'name (n = T): rate [interval], top by energy rate; ...' of a `split_by` dict (None parts left out)."""
    texts = []
    for name, part in parts.items():
        if part is not None:
            top = part.get("top1", {}).get("energy")
            texts.append(f"{name} (n = {part['num_crystals']}): {part['match_rate']:.2f} "
                         f"[{part['match_rate_interval'][0]:.1f}, {part['match_rate_interval'][1]:.1f}]"
                         + (f", top by energy {top['match_rate']:.2f}" if top else ""))
    return "; ".join(texts)


def _polymorph_text(p: dict, n: int) -> str:
    """The `polymorphs` record (`polymorphs.polymorph_metrics`) as a paragraph."""
    rates = "; ".join(f"top by {name} {r['match_rate']:.2f} [{r['interval'][0]:.1f}, {r['interval'][1]:.1f}]"
                      for name, r in p["any_structure"].items())
    return (f"Test crystals whose composition the dataset also holds as another structure: "
            f"{p['crystals_with_other_structures']} of {n} ({p['structures_per_composition']:.2f} "
            f"structures per composition); a model given only the composition ranks the test "
            f"crystal first for at most {p['top1_ceiling']:.2f}% of them in expectation over a "
            f"random split (the top-1 ceiling). The top-ranked sample matches the test crystal "
            f"or another of the dataset's structures of its composition: {rates}.")


def markdown_report(results: dict, dataset: str, num_test_total: int) -> str:
    """Our match rate and RMSE as rows of the paper's Table 1 (Markdown)."""
    name = dataset_info(dataset).display_name
    k = results["samples_per_crystal"]
    n = results["num_crystals"]

    def row(method: str, cells: dict) -> str:
        return "| " + " | ".join([method] + [cells.get(d, "") for d in DATASETS]) + " |"

    lines = [
        f"Crystal structure prediction on {name}: match rate (%), RMSE.",
        "",
        "| method | " + " | ".join(d.display_name for d in DATASETS.values()) + " |",
        "|---" * (len(DATASETS) + 1) + "|",
        row(f"csp_jax, {k} samples", {dataset: _cell(results["match_rate"], results["rmse"])}),
        row(f"csp_jax, first of {k} samples", {dataset: _cell(results["match_rate_k1"], results["rmse_k1"])}),
    ]
    for ranking in ("energy", "consensus"):
        if ranking in results.get("top1", {}):
            top = results["top1"][ranking]
            lines.append(row(f"csp_jax, top-ranked of {k} by {ranking}", {dataset: _cell(top["match_rate"], top["rmse"])}))
    lines += [row(f"{method}, 20 samples", {d: _cell(*v) for d, v in numbers.items()})
              for method, numbers in paper_table().items()]
    if dataset_info(dataset).note:
        lines += ["", f"{name}: {dataset_info(dataset).note}."]
    counts = results["pair_counts"]
    lines += ["", f"Pairs ({n} x {k}): " + ", ".join(f"{name} {counts[name]}" for name in OUTCOME_NAMES) + "."]
    lines += ["", *_detail_table(results)]
    if "by_composition_in_training" in results:
        lines += ["", "Test crystals whose composition occurs in the training split (seen) or not "
                      f"(unseen), match rate with {k} samples: "
                      + _split_text(results["by_composition_in_training"]) + "."]
    if "by_cell_size" in results:
        lines += ["", f"By cell size, match rate with {k} samples: " + _split_text(results["by_cell_size"]) + "."]
    if "by_elements" in results:
        lines += ["", f"By number of elements, match rate with {k} samples: "
                  + _split_text(results["by_elements"]) + "."]
    if "polymorphs" in results:
        lines += ["", _polymorph_text(results["polymorphs"], n)]
    if "relaxed" in results:
        lines += ["", *relaxed_lines(results["relaxed"], k)]
    if "selection" in results:
        lines += ["", f"Tested: {results['selection']}."]
    if n < num_test_total:
        lines += ["", f"Only {n} of the {num_test_total} test crystals were evaluated (--limit {n}); "
                      "the other rows use the full test set."]
    return "\n".join(lines) + "\n"


def write_report(results: dict, stem, dataset: str, num_test_total: int) -> tuple[Path, Path]:
    """Write `<stem>.json` (results plus dataset and subset note) and `<stem>.md`; return both paths."""
    json_path, md_path = Path(f"{stem}.json"), Path(f"{stem}.md")
    record = {"dataset": dataset, "num_test_total": num_test_total,
              "subset": results["num_crystals"] < num_test_total, **results}
    json_path.write_text(json.dumps(record, allow_nan=False) + "\n")
    md_path.write_text(markdown_report(results, dataset, num_test_total))
    return json_path, md_path
