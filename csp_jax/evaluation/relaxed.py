"""Table 1 with relaxed samples beside the raw ones (`evaluate` with `relax.enabled`).

For every test crystal, its K samples become a `Candidates` record with the
matches the evaluation found among them; every valid sample (or a
representative of each group of matching samples, `relax.candidates`) is relaxed by
`relax.potential` (`csp_jax.candidates.record.relaxations`), each crystal's
relaxations saved in `<split>_relaxed/<t>.json` as they finish, so that
`--resume` continues where it stopped with the same result. The saved
relaxations serve any choice of candidates: a resumed evaluation with
`relax.candidates=representatives` after one with `all` relaxes nothing more
and scores the representatives alone. The relaxed structures are matched to the
truth: `relaxed` in the results holds the match rate of any relaxed sample, of
the top-ranked one by the potential's energy per atom (the answer `predict
--relax` gives) and by the learned energy, RMSEs, Wilson intervals, and the
relaxations' count, convergence and time. With `relax.refine`, a second
potential relaxes again each crystal's best relaxed structures
(`record.to_refine`, saved in `<split>_refined/<t>.json`, resumable alike,
also after an evaluation without it); `relaxed.refined` then holds the
top-ranked final structure's match rate (the answer `predict --relax
--refine` gives) and those relaxations' count and time.
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import numpy as np

from csp_jax.candidates.matching import INVALID, match_pair, match_pairs
from csp_jax.candidates.record import (Candidates, from_samples, kept, kept_refinements, ranked, refined_energies,
                                       refinements, relaxations, relaxed_crystal, relaxed_energies, to_refine,
                                       to_relax, with_matches, with_relaxations)
from csp_jax.candidates.relax import Relaxed, calculator
from csp_jax.config import Config
from csp_jax.distributed import barrier, is_main, share
from csp_jax.evaluation.metrics import match_interval, match_rate_and_rmse
from csp_jax.evaluation.parts import open_parts
from csp_jax.files import write_atomic
from csp_jax.geometry.crystal import Crystal
from csp_jax.progress import Progress, format_duration


RELAXED, RELAXED_WHAT = "relaxed", "relaxations of an interrupted evaluation"  # <split>_relaxed/


def _to_json(r: Relaxed | None):
    return None if r is None else {"cif": r.structure.to(fmt="cif"), "energy_per_atom": r.energy_per_atom
                                   if math.isfinite(r.energy_per_atom) else None, "steps": r.steps,
                                   "converged": r.converged, "seconds": r.seconds, "message": r.message}


def _from_json(d) -> Relaxed | None:
    from pymatgen.core import Structure

    if d is None:
        return None
    energy = math.nan if d["energy_per_atom"] is None else d["energy_per_atom"]
    return Relaxed(Structure.from_str(d["cif"], fmt="cif"), energy, d["steps"], d["converged"],
                   d["seconds"], d["message"])


def _rates(outcome, rms) -> dict:
    """Match rate (%), Wilson interval and RMSE of outcome codes and RMS [T, K]."""
    rate, rmse = match_rate_and_rmse(outcome, rms)
    return {"match_rate": rate, "interval": match_interval(outcome), "rmse": rmse}


def _top_rates(outcome, rms, top) -> dict:
    """`_rates` of the samples `top` [T] (-1: none) alone."""
    rows, column = np.arange(len(top)), np.maximum(top, 0)
    return _rates(np.where(top >= 0, outcome[rows, column], INVALID)[:, None], rms[rows, column][:, None])


def _candidates(name: str, crystals: Crystal, energies, matches) -> Candidates:
    """The record of one test crystal's K samples (crystals [K, N], energies [K]) with the pairs
    of them the evaluation found to match (`matches`, [i, j] lists)."""
    return with_matches(from_samples(name, crystals, energies, np.ones(len(energies), int)), matches)


def saved_relaxations(path: Path) -> list:
    """The relaxations [K] (`Relaxed` or None) saved as `path` (empty when there is none)."""
    return [_from_json(d) for d in json.loads(path.read_text())] if path.is_file() else []


def _relax_crystal(config: Config, candidates: Candidates, path: Path, again: bool) -> int:
    """Relax one test crystal's chosen samples not relaxed yet (again: its chosen relaxed
    structures, by `relax.refine`: `record.refinements`), and save them with those saved
    before as `path`; how many were relaxed now."""
    saved = saved_relaxations(path) or [None] * len(candidates.energies)
    made = (refinements if again else relaxations)(
        candidates, config.relax, lambda: calculator(config.relax.refine if again else config.relax.potential),
        log=lambda line: None, done=saved)
    write_atomic(path, json.dumps([_to_json(old or new) for old, new in zip(saved, made)]))
    return sum(old is None and new is not None for old, new in zip(saved, made))


def _relax_in_pool(config: Config, jobs: dict, mine: list[int], again: bool, workers: int | None,
                   log: Callable[[str], None]) -> None:
    """Run `_relax_crystal` for `jobs` ({crystal: (its Candidates, its part's path)}, the crystals
    of `mine` with something left to relax) in `workers` processes, with progress over `mine`."""
    potential = config.relax.refine if again else config.relax.potential
    progress = Progress(len(mine), f"relaxing {'again ' if again else ''}with {potential}", unit="crystals",
                        log=log, initial=len(mine) - len(jobs))
    made = 0
    with ProcessPoolExecutor(max_workers=min(workers or os.cpu_count() or 1, max(1, len(jobs))),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_relax_crystal, config, candidates, path, again)
                   for candidates, path in jobs.values()]
        for future in as_completed(futures):
            made += future.result()
            progress.update(1, f"{made} relaxed")
    progress.close()


def _missing(path: Path, chosen: list[int]) -> bool:
    """Whether a sample of `chosen` has no relaxation saved in `path` (read from the part's JSON
    alone: its structures are not parsed)."""
    saved = json.loads(path.read_text()) if path.is_file() else []
    return any(not saved or saved[k] is None for k in chosen)


def _matched(config: Config, gt_structures, found: dict, workers) -> dict:
    """{(t, k): (outcome, rms)} of the structures `found` ({(t, k): Relaxed}) against the truths."""
    index = [(t, k) for (t, k), x in found.items() if math.isfinite(x.energy_per_atom)]
    results = match_pairs([(gt_structures[t], relaxed_crystal(found[t, k])) for t, k in index],
                          config.eval.match_timeout, workers, match_pair)
    return {(t, k): (result.outcome, result.rms) for (t, k), result in zip(index, results)}


def _as_arrays(matched: dict, shape) -> tuple[np.ndarray, np.ndarray]:
    """(outcome, rms) [T, K] of `_matched`'s pairs, INVALID and NaN elsewhere."""
    outcome, rms = np.full(shape, INVALID), np.full(shape, math.nan)
    for (t, k), (code, value) in matched.items():
        outcome[t, k], rms[t, k] = code, value
    return outcome, rms


def relax_and_score(config: Config, gt_structures, samples: Crystal, energies, matches, material_ids,
                    out_dir: Path, split: str, *, resume: bool, workers: int | None = None,
                    log: Callable[[str], None] = print) -> dict:
    """Relax the samples [T, K, N] of T test crystals (energies [T, K]; matches: [T] lists of the
    pairs [i, j] of a crystal's samples that match) and score the relaxed structures against
    `gt_structures`.

    The crystals relax in `workers` processes (None: one per core), each with its own potential
    (and its thread pools on one thread, `relax.relax`). With `relax.refine`, the relaxed
    structures `record.to_refine` chooses relax again by that potential, saved in
    `<split>_refined/` as the relaxations are. Returns the `relaxed` record of the
    results (see the module's docstring). With several processes each relaxes its share of the
    crystals (`distributed.share`); after a barrier the main one reads every crystal's
    relaxations, scores them and returns the record (the others: None).
    """
    r = config.relax
    parts, again_parts = Path(out_dir) / f"{split}_{RELAXED}", Path(out_dir) / f"{split}_refined"
    digest = hashlib.sha256(np.ascontiguousarray(samples.positions).tobytes()
                            + np.ascontiguousarray(samples.lattice).tobytes()).hexdigest()
    settings = {"potential": r.potential, "fmax": r.fmax, "max_steps": r.max_steps, "samples": digest}
    open_parts(parts, settings, resume, RELAXED_WHAT)
    num_test, num_samples = np.shape(energies)
    path = lambda t: parts / f"{t:06d}.json"  # noqa: E731
    again_path = lambda t: again_parts / f"{t:06d}.json"  # noqa: E731
    candidates = [_candidates(str(material_ids[t]), Crystal(samples.species[t], samples.positions[t],
                                                            samples.lattice[t]), energies[t], matches[t])
                  for t in range(num_test)]

    def record(t: int) -> Candidates:
        """Crystal t's candidates with its saved relaxations (of the chosen samples), grouped again."""
        return with_relaxations(candidates[t], kept(candidates[t], r.candidates, saved_relaxations(path(t))),
                                config.eval.match_timeout, workers)

    mine = share(num_test)
    _relax_in_pool(config, {t: (candidates[t], path(t)) for t in mine
                            if _missing(path(t), to_relax(candidates[t], r.candidates))}, mine, False, workers, log)
    barrier("relaxed")
    records = {}
    if r.refine:
        open_parts(again_parts, {"refine": r.refine, **settings}, resume,
                   "second relaxations of an interrupted evaluation")
        records = {t: record(t) for t in mine}
        _relax_in_pool(config, {t: (records[t], again_path(t)) for t in mine
                                if _missing(again_path(t), to_refine(records[t], r.refine_window))},
                       mine, True, workers, log)
        barrier("relaxed again")
    if not is_main():
        return None
    records = [records[t] if t in records else record(t) for t in range(num_test)]
    if r.refine:
        records = [c._replace(refined=kept_refinements(c, r.refine_window, saved_relaxations(again_path(t))))
                   for t, c in enumerate(records)]
    found = {(t, k): x for t, c in enumerate(records) for k, x in enumerate(c.relaxed) if x is not None}
    outcome, rms = _as_arrays(_matched(config, gt_structures, found, workers), (num_test, num_samples))

    def by_potential(c: Candidates) -> int:
        """`ranked`'s first (the relaxed samples come first there), -1 when none was relaxed."""
        first = int(ranked(c, config.eval.ranking)[0])
        return first if c.relaxed[first] is not None else -1

    def by_learned(c: Candidates) -> int:
        """The relaxed sample of lowest learned energy, -1 when none was relaxed."""
        tried = [k for k, x in enumerate(c.relaxed) if x is not None]
        return min(tried, key=lambda k: c.energies[k]) if tried else -1

    unrefined = [c._replace(refined=(None,) * num_samples) for c in records]
    tops = {"potential": _top_rates(outcome, rms, np.array([by_potential(c) for c in unrefined])),
            "energy": _top_rates(outcome, rms, np.array([by_learned(c) for c in unrefined]))}
    made = [x for c in records for x in c.relaxed if x is not None]
    seconds = float(sum(x.seconds for x in made))
    log(f"relaxed {len(made)} candidates in {format_duration(seconds)} of relaxation")
    rates = _rates(outcome, rms)
    result = {
        "potential": r.potential, "candidates": r.candidates, "fmax": r.fmax, "max_steps": r.max_steps,
        "match_rate": rates["match_rate"], "match_rate_interval": rates["interval"], "rmse": rates["rmse"],
        "top1": tops,
        "relaxations": len(made),
        "per_crystal": len(made) / num_test,
        "converged": int(sum(x.converged for x in made)),
        "failed": int(sum(not math.isfinite(x.energy_per_atom) for x in made)),
        "seconds": seconds, "seconds_per_candidate": seconds / max(1, len(made)),
        "distinct_relaxed": float(np.mean([c.relaxed_groups.max() + 1 for c in records])),
        "outcome": outcome.tolist(),
        "top_by_potential": [by_potential(c) for c in unrefined],
        "potential_energies": [[None if math.isnan(e) else e for e in relaxed_energies(c)] for c in records],
    }
    if r.refine:
        result["refined"] = _refined_record(config, records, gt_structures, outcome, rms, by_potential, workers)
    return result


def _refined_record(config: Config, records: list[Candidates], gt_structures, outcome, rms, top_of,
                    workers) -> dict:
    """The `refined` part of the relaxed record: the second relaxations' count, time and outcome
    [T, K] (INVALID where none), and the top-ranked final structure's match rate (`record.ranked`
    with them; `final`: the second relaxation where it succeeded, else the first)."""
    again = {(t, k): x for t, c in enumerate(records) for k, x in enumerate(c.refined) if x is not None}
    again_outcome, again_rms = _as_arrays(_matched(config, gt_structures, again, workers), outcome.shape)
    succeeded = np.isfinite([refined_energies(c) for c in records])
    final_outcome, final_rms = np.where(succeeded, again_outcome, outcome), np.where(succeeded, again_rms, rms)
    tops = np.array([top_of(c) for c in records])
    seconds = float(sum(x.seconds for x in again.values()))
    return {"potential": config.relax.refine, "window_mev": config.relax.refine_window,
            "relaxations": len(again), "per_crystal": len(again) / len(records),
            "converged": int(sum(x.converged for x in again.values())),
            "failed": int(sum(not math.isfinite(x.energy_per_atom) for x in again.values())),
            "seconds": seconds, "seconds_per_candidate": seconds / max(1, len(again)),
            "top1": _top_rates(final_outcome, final_rms, tops),
            "outcome": again_outcome.tolist(), "top": tops.tolist(),
            "energies": [[None if math.isnan(e) else e for e in refined_energies(c)] for c in records]}


def relaxed_lines(relaxed: dict, k: int) -> list[str]:
    """The report's table of relaxed samples beside the raw ones (Markdown lines)."""
    def cell(top: dict) -> str:
        low, high = top["interval"]
        rmse = "" if top["rmse"] is None else f", {top['rmse']:.4f}"
        return f"{top['match_rate']:.2f} [{low:.1f}, {high:.1f}]{rmse}"

    again = relaxed.get("refined")
    any_cell = cell({"match_rate": relaxed["match_rate"], "interval": relaxed["match_rate_interval"],
                     "rmse": relaxed["rmse"]})
    which = ("every valid sample" if relaxed["candidates"] == "all"
             else "a representative of each group of matching samples")
    return [f"Relaxed by {relaxed['potential']} (FIRE on cell and positions, fmax {relaxed['fmax']} eV/A, "
            f"at most {relaxed['max_steps']} steps; {which}): "
            "match rate (%) [95% interval], RMSE.", "",
            "| relaxed samples | match rate |", "|---|---|",
            f"| any relaxed sample of {k} | {any_cell} |",
            f"| top-ranked by the potential's energy per atom | {cell(relaxed['top1']['potential'])} |",
            f"| top-ranked by the learned energy | {cell(relaxed['top1']['energy'])} |",
            *([] if again is None else [
                f"| top-ranked by {again['potential']}'s energy per atom after relaxing again those within "
                f"{again['window_mev']:g} meV/atom of the lowest | {cell(again['top1'])} |"]), "",
            f"{relaxed['relaxations']} relaxations ({relaxed['per_crystal']:.2f} per crystal, "
            f"{relaxed['converged']} converged, {relaxed['failed']} failed) in "
            f"{format_duration(relaxed['seconds'])}, {relaxed['seconds_per_candidate']:.1f} s per candidate; "
            f"{relaxed['distinct_relaxed']:.2f} distinct relaxed structures per crystal."
            + ("" if again is None else
               f" Relaxed again by {again['potential']}: {again['relaxations']} ({again['per_crystal']:.2f} per "
               f"crystal, {again['converged']} converged, {again['failed']} failed) in "
               f"{format_duration(again['seconds'])}, {again['seconds_per_candidate']:.1f} s each.")]
