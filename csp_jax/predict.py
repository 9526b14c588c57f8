"""Crystal structure prediction for any formula with a trained energy.

`cell_species` turns a formula (pymatgen `Composition` syntax, e.g. `SrTiO3`)
and a cell size into the species vector `Expand(Reduce(A), Z)` (SPEC §1);
`predict` samples K chains per formula and writes, per formula, the samples as
ranked CIFs (`<out>/<cell>/rank01_E-1.2345.cif`, symmetrised in
`<out>/<cell>/symmetrised/`, see `csp_jax.symmetry`; the ranking is
`config.eval.ranking`, see `csp_jax.candidates.ranking`: by final energy, or by
consensus, the largest group of samples that match each other first), a
picture of the top-ranked structure (`rank01.png`) and of the chains' energy
against the MALA step (`chains.png`), plus a summary table of all of them
(`<out>/summary.csv` and `summary.md`: energy, group of matching samples,
volume, density, space group, lattice parameters).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from csp_jax import pictures
from csp_jax.config import Config
from csp_jax.energy.base import Energy
from csp_jax.geometry.crystal import MAX_Z, expand_composition, reduce_composition, to_structure
from csp_jax.geometry.neighbors import NeighborCapacity
from csp_jax.candidates.record import (Candidates, final, from_samples, ranked, relaxed_energies, to_refine,
                                       to_relax, with_groups, with_refined, with_relaxed)
from csp_jax.candidates.relax import calculator
from csp_jax.sampling.driver import sample_rows, schedule
from csp_jax.sampling.kernel import kernel_from
from csp_jax.symmetry import MAX_RMS, SYMPRECS, Symmetrised, space_groups, symmetrise

AUTO_FORMULA_UNITS = (1, 2, 3, 4)  # the cells `formula_units="auto"` samples, within the model's limit
SUMMARY_FIELDS = ("formula", "num_atoms", "formula_units", "rank", "energy", "valid", "group", "volume",
                  "density", *(f"sg_{symprec}" for symprec in SYMPRECS), "space_group", "symprec",
                  "a", "b", "c", "alpha", "beta", "gamma", "cif", "symmetrised_cif")
# With relaxations, also: the potential's energy per atom (eV/atom), its distance above the best
# candidate of the formula (meV/atom), the group of matching relaxed structures, FIRE's steps and
# convergence, and the unrelaxed sample's space group and CIF.
RELAX_FIELDS = ("potential_energy", "above_best_mev", "relaxed_group", "relax_steps", "converged",
                "unrelaxed_space_group", "unrelaxed_cif")
# With a second potential (relax.refine), also its energy per atom (eV/atom) and steps where it
# relaxed the structure again.
REFINE_FIELDS = ("refined_energy", "refine_steps")


def cell_species(formula: str, max_atoms: int, num_atoms: int | None = None,
                 formula_units: int | None = None) -> tuple[str, np.ndarray]:
    """(cell name, species [n] sorted by Z) of `formula` in a cell of n atoms.

    The cell holds Z formula units of the reduced formula: Z = formula_units,
    or num_atoms / (atoms of the reduced formula), default 1 (the smallest
    cell). The name is the reduced formula, with `_Z<Z>` when Z > 1. Raises
    ValueError (one line) for a formula pymatgen cannot read, an unknown
    element or one beyond Z = 100, fractional amounts, a num_atoms that is no
    multiple of the reduced formula's size, and cells above max_atoms.
    """
    from pymatgen.core import Composition, Element

    if num_atoms is not None and formula_units is not None:
        raise ValueError("give the number of atoms or of formula units, not both")
    try:
        composition = Composition(formula)
    except ValueError as err:
        raise ValueError(f"cannot read formula {formula!r}: {err}") from None
    counts = {}
    for element, amount in composition.items():
        if not isinstance(element, Element):
            raise ValueError(f"unknown element {element.symbol!r} in formula {formula!r}")
        if element.Z > MAX_Z:
            raise ValueError(f"element {element.symbol} (Z = {element.Z}) in {formula!r} is beyond "
                             f"the model's {MAX_Z} elements")
        if amount != round(amount) or amount <= 0:
            raise ValueError(f"formula {formula!r} has a non-integer amount of {element.symbol} ({amount:g})")
        counts[element.Z] = int(round(amount))
    reduced = reduce_composition(expand_composition(counts, 1))
    reduced_size = sum(reduced.values())
    reduced_formula = composition.reduced_formula
    if num_atoms is not None:
        if num_atoms <= 0 or num_atoms % reduced_size:
            below = reduced_size * max(1, num_atoms // reduced_size)
            raise ValueError(f"{num_atoms} atoms is not a multiple of {reduced_size}, the atoms of "
                             f"{reduced_formula}; try {below} or {below + reduced_size}")
        formula_units = num_atoms // reduced_size
    formula_units = 1 if formula_units is None else formula_units
    if formula_units <= 0:
        raise ValueError(f"formula units must be positive, got {formula_units}")
    size = formula_units * reduced_size
    if size > max_atoms:
        raise ValueError(f"{reduced_formula} with {size} atoms exceeds the model's cap of "
                         f"{max_atoms} atoms (config eval.max_atoms)")
    name = reduced_formula if formula_units == 1 else f"{reduced_formula}_Z{formula_units}"
    return name, expand_composition(reduced, formula_units)


def formula_cells(formula: str, config: Config, num_atoms: int | None = None,
                  formula_units: int | str | None = None) -> tuple[str, list[tuple[int, np.ndarray]]]:
    """(name, [(Z, species [n])]) of the cells `predict` samples for `formula`.

    One cell (`cell_species`), or with `formula_units="auto"` every Z of
    AUTO_FORMULA_UNITS whose cell fits the model's limit (the largest cell it
    was trained on, `data.max_atoms`, and `eval.max_atoms`; at least Z = 1),
    named by the reduced formula.
    """
    if formula_units != "auto":
        name, species = cell_species(formula, config.eval.max_atoms, num_atoms, formula_units)
        return name, [(len(species) // sum(reduce_composition(species).values()), species)]
    if num_atoms is not None:
        raise ValueError("give the number of atoms or formula units 'auto', not both")
    name, unit = cell_species(formula, config.eval.max_atoms)
    limit = min(config.data.max_atoms, config.eval.max_atoms)
    fits = [z for z in AUTO_FORMULA_UNITS if z == 1 or z * len(unit) <= limit]
    return name, [(z, cell_species(formula, config.eval.max_atoms, formula_units=z)[1]) for z in fits]


def _summary_row(name: str, units: int, rank: int, energy: float, valid: bool, group: int, structure,
                 cif: str, symmetrised: Symmetrised | None, sym_cif: str) -> dict:
    lattice = structure.lattice
    groups = space_groups(structure)
    return {"formula": name, "num_atoms": len(structure), "formula_units": units, "rank": rank,
            "energy": energy, "valid": valid, "group": group,
            "volume": structure.volume, "density": float(structure.density),
            **{f"sg_{symprec}": groups[symprec] for symprec in SYMPRECS},
            "space_group": symmetrised.space_group if symmetrised else "n/a",
            "symprec": symmetrised.symprec if symmetrised else None,
            "a": lattice.a, "b": lattice.b, "c": lattice.c,
            "alpha": lattice.alpha, "beta": lattice.beta, "gamma": lattice.gamma, "cif": cif,
            "symmetrised_cif": sym_cif}


def _write_summary(rows: list[dict], out_dir: Path, config: Config) -> tuple[Path, Path]:
    fields = SUMMARY_FIELDS + (RELAX_FIELDS if config.relax.enabled else ()) + (
        REFINE_FIELDS if config.relax.enabled and config.relax.refine else ())
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)

    def text(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(fields) + " |", "|---" * len(fields) + "|"]
    lines += ["| " + " | ".join(text(row[k]) for k in fields) + " |" for row in rows]
    relaxed = ("every valid sample" if config.relax.candidates == "all"
               else "a representative of each group of matching samples")
    ranking = (f"Ranked by the energy per atom of {config.relax.potential} after relaxing {relaxed} "
               f"(FIRE on cell and positions, fmax {config.relax.fmax} eV/A, at most "
               f"{config.relax.max_steps} steps); potential_energy in eV/atom, above_best_mev: meV/atom "
               "above the formula's best relaxed candidate; relaxed_group: relaxed structures of one "
               "group match each other; samples not relaxed follow, by learned energy"
               + (f". First come those within {config.relax.refine_window:g} meV/atom of the best that "
                  f"{config.relax.refine} relaxed again (one per relaxed_group; the CIF is its structure), "
                  "by its energy per atom, refined_energy in eV/atom" if config.relax.refine else "")
               if config.relax.enabled else
               f"Ranked by {config.eval.ranking} ({RANKING_NOTES[config.eval.ranking]})")
    md_path.write_text(f"{ranking}. Energies H of the trained model (lower is better); group: samples "
                       "of one group match each other (StructureMatcher), 0 the largest, -1 invalid or "
                       "not compared; density in g/cm^3, sg_<symprec>: the structure's space group at "
                       "that tolerance (A); space_group: that of the symmetrised CIF (refined at `symprec`, "
                       f"atoms moved at most {MAX_RMS} in StructureMatcher's normalised RMS).\n\n"
                       + "\n".join(lines) + "\n")
    return csv_path, md_path


RANKING_NOTES = {"energy": "final energy, invalid samples last",
                 "consensus": "the largest group of mutually matching samples first, then energy"}


def _write_cif(structure, path: Path, out_dir: Path, symmetrised: bool) -> tuple[str, Symmetrised | None, str]:
    """Write `structure` as `path` and, for a valid one, its symmetrised CIF in `symmetrised/`
    beside it: (cif path, Symmetrised or None, symmetrised cif path or "") relative to out_dir."""
    from pymatgen.io.cif import CifWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    CifWriter(structure).write_file(path)
    refined, sym_cif = (symmetrise(structure) if symmetrised else None), ""
    if refined is not None and refined.symprec is not None:
        sym_path = path.parent / "symmetrised" / path.name
        sym_path.parent.mkdir(exist_ok=True)
        CifWriter(refined.structure, symprec=refined.symprec).write_file(sym_path)
        sym_cif = str(sym_path.relative_to(out_dir))
    return str(path.relative_to(out_dir)), refined, sym_cif


def _write_candidates(candidates: Candidates, keep: np.ndarray, cell_dir: Path, out_dir: Path,
                      config: Config) -> list[dict]:
    """Ranked CIFs, `rank01.png` and the summary rows of one formula's candidates (`keep`: [K]
    bool, the finite samples)."""
    order = [int(k) for k in ranked(candidates, config.eval.ranking) if keep[k]]
    digits = max(2, len(str(len(order))))
    potential = relaxed_energies(candidates)
    best = np.nanmin(potential) if np.isfinite(potential).any() else math.nan
    rows = []
    for rank, k in enumerate(order, start=1):
        relaxed, energy = candidates.relaxed[k], float(candidates.energies[k])
        last, again = final(candidates, k), candidates.refined[k]
        valid = candidates.structures[k] is not None
        sample = candidates.structures[k] if valid else to_structure(candidates.crystal(k))
        file_name = f"rank{rank:0{digits}d}_E{energy:.4f}.cif"
        if relaxed is not None:
            raw_cif, raw_sym, _ = _write_cif(sample, cell_dir / "unrelaxed" / file_name, out_dir, True)
            structure = last.structure
            row_extra = {"potential_energy": relaxed.energy_per_atom,
                         "above_best_mev": 1000.0 * (relaxed.energy_per_atom - best),
                         "relaxed_group": int(candidates.relaxed_groups[k]), "relax_steps": relaxed.steps,
                         "converged": relaxed.converged, "unrelaxed_space_group": raw_sym.space_group,
                         "unrelaxed_cif": raw_cif}
            if config.relax.refine:
                row_extra.update({"refined_energy": again.energy_per_atom, "refine_steps": again.steps}
                                 if again is not None else dict.fromkeys(REFINE_FIELDS, ""))
        else:
            structure = sample
            row_extra = dict.fromkeys(RELAX_FIELDS + (REFINE_FIELDS if config.relax.refine else ()), "") \
                if config.relax.enabled else {}
        cif, refined, sym_cif = _write_cif(structure, cell_dir / file_name, out_dir, valid)
        rows.append({**_summary_row(candidates.name, int(candidates.units[k]), rank, energy, valid,
                                    int(candidates.groups[k]), structure, cif, refined, sym_cif), **row_extra})
        if rank == 1:
            title = (f"{last.energy_per_atom:.4f} eV/atom "
                     f"({config.relax.refine if last is again else config.relax.potential})"
                     if last is not None else f"H = {energy:.4f}")
            pictures.structure_png(structure, cell_dir / "rank01.png",
                                   f"{candidates.name}, rank 1: {title}, {rows[-1]['space_group']}")
    return rows


def predict(config: Config, energy: Energy, variables, formulas: Sequence[str], out_dir, *,
            num_atoms: int | None = None, formula_units: int | str | None = None,
            log: Callable[[str], None] = print) -> list[dict]:
    """Sample `eval.num_samples` chains per formula; write ranked CIFs and the summary table.

    The cell size (num_atoms or formula_units, see `cell_species`) applies to
    every formula; cells are capped at `config.eval.max_atoms`. With
    `formula_units="auto"`, each formula is sampled with Z = 1..4 formula
    units (`formula_cells`), `eval.num_samples` chains each, and all its samples
    are ranked together (the summary's `formula_units` says each one's Z; with
    relaxations the potential's energy per atom chooses Z). All formulas are
    checked, and the potential built, before anything is sampled. Samples with
    a non-finite energy or crystal are left out (and logged). The chains run in
    batches of `eval.batch_size` with the key PRNGKey(`eval.seed`) and the kernel
    `sampler.kernel`. The order is `record.ranked`'s: with `relax.enabled`, every
    valid sample (or a representative of each group of matching samples,
    `relax.candidates`) is relaxed by `relax.potential` and the relaxed structures come first, by the
    potential's energy per atom (with `relax.refine`, those the second potential relaxed again
    before them, by its energy: `record.to_refine`); otherwise `eval.ranking` orders the samples.
    Invalid samples (a collapsed cell or atoms closer than 0.5 A: the evaluation's
    criterion, `geometry.validity.valid_structure`) come after the valid ones,
    marked `valid` False. The neighbour capacity only grows (no refit between
    segments: see docs/performance.md). Returns the summary rows, by formula
    then rank.
    """
    groups = [formula_cells(f, config, num_atoms, formula_units) for f in formulas]
    calc = calculator(config.relax.potential) if config.relax.enabled else None
    calc_again = calculator(config.relax.refine) if config.relax.enabled and config.relax.refine else None
    cells = [cell for group in groups for cell in group[1]]
    num_samples = config.eval.num_samples
    width = max(len(species) for _, species in cells)
    species = np.repeat(np.stack([np.pad(s, (0, width - len(s))) for _, s in cells]),
                        num_samples, axis=0)
    units = np.repeat([z for _, z_cells in groups for z, _ in z_cells], num_samples)
    steps = schedule(config.sampler, config.eval.num_steps)
    for name, z_cells in groups:
        if len(z_cells) > 1 or formula_units == "auto":
            log(f"{name}: formula units {', '.join(str(z) for z, _ in z_cells)} (cells of "
                f"{', '.join(str(len(c)) for _, c in z_cells)} atoms), ranked together")
    log(f"sampling {len(cells)} cell(s) of {len(groups)} formula(s) x {num_samples} chains, "
        f"{steps[0].shape[0]} steps")
    sampled = sample_rows(
        jax.random.PRNGKey(config.eval.seed), species, energy, variables,
        NeighborCapacity.from_config(config.neighbors, width), steps, batch_size=config.eval.batch_size,
        segment_length=config.sampler.segment_length, kernel=kernel_from(config.sampler.kernel),
        refit=False, trace=True, log=log)  # refit=False: compiling refitted capacities costs more than they save
    crystals, energies = sampled.crystals, sampled.energies

    out_dir = Path(out_dir)
    rows, first = [], 0
    for name, z_cells in groups:
        cell_dir = out_dir / name
        cell_dir.mkdir(parents=True, exist_ok=True)
        rows_of_cell = slice(first, first + len(z_cells) * num_samples)
        first = rows_of_cell.stop
        cell = jax.tree.map(lambda a: a[rows_of_cell], crystals)
        keep = (np.isfinite(energies[rows_of_cell]) & np.isfinite(cell.positions).all(axis=(1, 2))
                & np.isfinite(cell.lattice).all(axis=(1, 2)))
        if not keep.all():
            log(f"{name}: {int(np.sum(~keep))} of {len(keep)} samples are not finite, left out")
        candidates = from_samples(name, cell, np.where(keep, energies[rows_of_cell], np.nan), units[rows_of_cell])
        if not candidates.valid[keep].all():
            log(f"{name}: {int(np.sum(~candidates.valid[keep]))} invalid samples (collapsed cell or "
                f"overlapping atoms) ranked last")
        if config.eval.ranking == "consensus" or config.relax.enabled:
            candidates = with_groups(candidates, config.eval.match_timeout)
        if config.relax.enabled:
            log(f"{name}: relaxing {len(to_relax(candidates, config.relax.candidates))} candidates with "
                f"{config.relax.potential}")
            candidates = with_relaxed(candidates, config.relax, calc, config.eval.match_timeout, log=log)
        if calc_again is not None:
            log(f"{name}: relaxing {len(to_refine(candidates, config.relax.refine_window))} of them again "
                f"with {config.relax.refine}")
            candidates = with_refined(candidates, config.relax, calc_again, log=log)
        rows += _write_candidates(candidates, keep, cell_dir, out_dir, config)
        pictures.chain_energy_png(sampled.trace[rows_of_cell], cell_dir / "chains.png",
                                  f"{name}: {len(keep)} chains")
        log(f"{name}: {int(keep.sum())} CIFs, rank01.png and chains.png in {cell_dir}")
    csv_path, md_path = _write_summary(rows, out_dir, config)
    log(f"wrote {csv_path}, {md_path}")
    return rows
