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
from csp_jax.geometry.crystal import Crystal
from csp_jax.evaluation.matching import (MATCH, OUTCOME_NAMES, PairResult,
                              match_pair, match_pairs)

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


def aggregate(outcome, rms) -> dict:
    """Table 1 metrics from per-pair outcomes.

    outcome: [T, K] outcome codes of `csp_jax.evaluation.matching`; rms: [T, K], read only where MATCH.
    match_rate: % of test crystals with at least one matching sample; rmse: mean
    over those crystals of their smallest RMS (None when nothing matched); the
    `_k1` pair uses the first sample only. pair_counts: pairs per outcome.
    """
    outcome = np.asarray(outcome)
    rms = np.asarray(rms, dtype=np.float64)
    if outcome.ndim != 2 or outcome.size == 0 or rms.shape != outcome.shape:
        raise ValueError(f"need non-empty outcome and rms of equal shape [T, K], got {outcome.shape}, {rms.shape}")
    match_rate, rmse = _match_rate_and_rmse(outcome, rms)
    match_rate_k1, rmse_k1 = _match_rate_and_rmse(outcome[:, :1], rms[:, :1])
    return {
        "num_crystals": outcome.shape[0],
        "samples_per_crystal": outcome.shape[1],
        "match_rate": match_rate, "rmse": rmse,
        "match_rate_k1": match_rate_k1, "rmse_k1": rmse_k1,
        "pair_counts": {name: int((outcome == code).sum()) for code, name in enumerate(OUTCOME_NAMES)},
    }


def evaluate_samples(
    gt_structures: Sequence,
    samples: Crystal,
    timeout_s: float,
    workers: int | None = None,
    match_fn=match_pair,
) -> dict:
    """Match every (test crystal, sample) pair and aggregate (see `aggregate`).

    gt_structures: T pymatgen Structures; samples: `Crystal` [T, K, N].
    Adds per-pair `outcome` [T][K] (codes, names in `outcome_names`), `rms`
    [T][K] (None unless matched) and `error_messages` (text: count) so the
    metrics can be recomputed with `aggregate(outcome, rms)`.
    """
    num_crystals, num_samples = np.shape(samples.species)[:2]
    if len(gt_structures) != num_crystals:
        raise ValueError(f"{len(gt_structures)} ground-truth structures for {num_crystals} sample rows")
    pairs = [(gt_structures[t], sample_at(samples, t, k))
             for t in range(num_crystals) for k in range(num_samples)]
    results: list[PairResult] = match_pairs(pairs, timeout_s, workers, match_fn)
    outcome = np.array([r.outcome for r in results]).reshape(num_crystals, num_samples)
    rms = np.array([r.rms for r in results]).reshape(num_crystals, num_samples)
    return {
        **aggregate(outcome, rms),
        "outcome_names": list(OUTCOME_NAMES),
        "outcome": outcome.tolist(),
        "rms": [[None if math.isnan(x) else x for x in row] for row in rms.tolist()],
        "error_messages": dict(collections.Counter(r.message for r in results if r.message)),
    }


def _cell(match_rate: float, rmse: float | None) -> str:
    return f"{match_rate:.2f}, {'n/a' if rmse is None else f'{rmse:.4f}'}"


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
    lines += [row(f"{method}, 20 samples", {d: _cell(*v) for d, v in numbers.items()})
              for method, numbers in paper_table().items()]
    counts = results["pair_counts"]
    lines += ["", f"Pairs ({n} x {k}): " + ", ".join(f"{name} {counts[name]}" for name in OUTCOME_NAMES) + "."]
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
