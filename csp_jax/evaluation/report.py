"""The evaluation's report: the results as JSON and as Markdown rows beside the paper's Table 1.

`write_report` writes `<stem>.json` and `<stem>.md` (`markdown_report`: our
rows beside `paper_table`, every rate with its interval, the splits, the
polymorphs and the relaxed samples when the results hold them).
"""
from __future__ import annotations

import json
from pathlib import Path

from csp_jax.candidates.matching import OUTCOME_NAMES
from csp_jax.data.registry import DATASETS, dataset_info
from csp_jax.evaluation.relaxed import relaxed_lines


def paper_table() -> dict:
    """The paper's Table 1 (20 samples per test crystal): method -> dataset -> (match rate %, RMSE)."""
    table = {}
    for info in DATASETS.values():
        for method, numbers in info.paper.items():
            table.setdefault(method, {})[info.name] = numbers
    return table


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
        skip = results.get("skip", 0)
        which = f"--skip {skip} --limit {skip + n}: crystals {skip + 1} to {skip + n} of the fixed shuffle" \
            if skip else f"--limit {n}"
        lines += ["", f"Only {n} of the {num_test_total} test crystals were evaluated ({which}); "
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
