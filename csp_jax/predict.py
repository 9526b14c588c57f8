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
from csp_jax.geometry.validity import valid_structure
from csp_jax.geometry.crystal import MAX_Z, expand_composition, reduce_composition, to_structure
from csp_jax.geometry.neighbors import NeighborCapacity
from csp_jax.candidates.ranking import cluster_samples, ranked_order
from csp_jax.sampling.driver import sample_rows, schedule
from csp_jax.sampling.mala import mala
from csp_jax.symmetry import MAX_RMS, SYMPRECS, Symmetrised, space_groups, symmetrise

AUTO_FORMULA_UNITS = (1, 2, 3, 4)  # the cells `formula_units="auto"` samples, within the model's limit
SUMMARY_FIELDS = ("formula", "num_atoms", "formula_units", "rank", "energy", "valid", "group", "volume",
                  "density", *(f"sg_{symprec}" for symprec in SYMPRECS), "space_group", "symprec",
                  "a", "b", "c", "alpha", "beta", "gamma", "cif", "symmetrised_cif")


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


def _write_summary(rows: list[dict], out_dir: Path, ranking: str) -> tuple[Path, Path]:
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)

    def text(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(SUMMARY_FIELDS) + " |", "|---" * len(SUMMARY_FIELDS) + "|"]
    lines += ["| " + " | ".join(text(row[k]) for k in SUMMARY_FIELDS) + " |" for row in rows]
    md_path.write_text(f"Ranked by {ranking} ({RANKING_NOTES[ranking]}). Energies H of the trained "
                       "model (lower is better); group: samples of one group match each other "
                       "(StructureMatcher), 0 the largest, -1 invalid or not compared; density in g/cm^3, "
                       f"sg_<symprec>: the sample's space group at that tolerance (A); space_group: that of "
                       f"the symmetrised CIF (refined at `symprec`, atoms moved at most {MAX_RMS} in "
                       "StructureMatcher's normalised RMS).\n\n" + "\n".join(lines) + "\n")
    return csv_path, md_path


RANKING_NOTES = {"energy": "final energy, invalid samples last",
                 "consensus": "the largest group of mutually matching samples first, then energy"}


def _groups(samples: dict, checked: dict, timeout_s: float) -> dict:
    """Sample index -> group: labels of `ranking.cluster_labels` renumbered by size (0 the
    largest, -1 invalid), from matching the valid samples against each other (K^2 / 2 pairs)."""
    indices = list(samples)
    [labels] = cluster_samples([[samples[i] for i in indices]], [[checked[i] is not None for i in indices]],
                               timeout_s)
    sizes = np.bincount(labels[labels >= 0], minlength=1)
    by_size = {int(c): n for n, c in enumerate(np.argsort(-sizes, kind="stable"))}
    return {i: by_size[int(c)] if c >= 0 else -1 for i, c in zip(indices, labels)}


def predict(config: Config, energy: Energy, variables, formulas: Sequence[str], out_dir, *,
            num_samples: int | None = None, num_atoms: int | None = None,
            formula_units: int | str | None = None, key=None, batch_size: int | None = None,
            ranking: str | None = None, kernel: Callable = mala,
            log: Callable[[str], None] = print) -> list[dict]:
    """Sample `num_samples` chains per formula; write ranked CIFs and the summary table.

    The cell size (num_atoms or formula_units, see `cell_species`) applies to
    every formula; cells are capped at `config.eval.max_atoms`. With
    `formula_units="auto"`, each formula is sampled with Z = 1..4 formula
    units (`formula_cells`), `num_samples` chains each, and all its samples
    are ranked together (the summary's `formula_units` says each one's Z). All formulas
    are checked before anything is sampled. Samples with a non-finite energy
    or crystal are left out of the ranking (and logged). `ranking` (None:
    `config.eval.ranking`) orders the rest (`csp_jax.candidates.ranking.ranked_order`);
    invalid samples (a collapsed cell or atoms closer than 0.5 A: the evaluation's
    criterion, `geometry.validity.valid_structure`) come after the valid ones,
    whatever their energy, and are marked `valid` False. The neighbour capacity only grows
    (no refit between segments: see docs/performance.md). Returns the summary rows
    (SUMMARY_FIELDS), by formula then rank.
    """
    groups = [formula_cells(f, config, num_atoms, formula_units) for f in formulas]
    cells = [cell for group in groups for cell in group[1]]
    num_samples = config.eval.num_samples if num_samples is None else num_samples
    key = jax.random.PRNGKey(config.eval.seed) if key is None else key
    batch_size = config.eval.batch_size if batch_size is None else batch_size
    ranking = config.eval.ranking if ranking is None else ranking
    if ranking not in RANKING_NOTES:
        raise ValueError(f"unknown ranking {ranking!r}; choose from {', '.join(RANKING_NOTES)}")
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
        key, species, energy, variables, NeighborCapacity.from_config(config.neighbors, width), steps,
        batch_size=batch_size, segment_length=config.sampler.segment_length, kernel=kernel,
        refit=False, trace=True, log=log)  # refit=False: compiling refitted capacities costs more than they save
    crystals, energies = sampled.crystals, sampled.energies

    from pymatgen.io.cif import CifWriter

    out_dir = Path(out_dir)
    digits = max(2, len(str(num_samples)))
    rows, first = [], 0
    for name, z_cells in groups:
        cell_dir = out_dir / name
        cell_dir.mkdir(parents=True, exist_ok=True)
        rows_of_cell = range(first, first + len(z_cells) * num_samples)
        first = rows_of_cell.stop
        finite = [i for i in rows_of_cell if math.isfinite(energies[i])
                  and np.isfinite(crystals.positions[i]).all() and np.isfinite(crystals.lattice[i]).all()]
        if len(finite) < len(rows_of_cell):
            log(f"{name}: {len(rows_of_cell) - len(finite)} of {len(rows_of_cell)} samples are not "
                f"finite, left out")
        samples = {i: jax.tree.map(lambda a: a[i], crystals) for i in finite}
        checked = {i: valid_structure(sample) for i, sample in samples.items()}  # None: invalid
        valid = {i: structure is not None for i, structure in checked.items()}
        if not all(valid.values()):
            log(f"{name}: {list(valid.values()).count(False)} invalid samples (collapsed cell or "
                f"overlapping atoms) ranked last")
        group = _groups(samples, checked, config.eval.match_timeout) if ranking == "consensus" else {}
        labels = np.array([group.get(i, 0) if valid[i] else -1 for i in finite], int)
        order = [finite[j] for j in ranked_order(energies[finite], labels, ranking)]
        for rank, i in enumerate(order, start=1):
            structure = checked[i] if valid[i] else to_structure(samples[i])
            path = cell_dir / f"rank{rank:0{digits}d}_E{energies[i]:.4f}.cif"
            CifWriter(structure).write_file(path)
            symmetrised, sym_cif = (symmetrise(structure) if valid[i] else None), ""
            if symmetrised is not None and symmetrised.symprec is not None:
                sym_path = cell_dir / "symmetrised" / path.name
                sym_path.parent.mkdir(exist_ok=True)
                CifWriter(symmetrised.structure, symprec=symmetrised.symprec).write_file(sym_path)
                sym_cif = str(sym_path.relative_to(out_dir))
            rows.append(_summary_row(name, int(units[i]), rank, float(energies[i]), valid[i],
                                     group.get(i, -1), structure, str(path.relative_to(out_dir)),
                                     symmetrised, sym_cif))
            if rank == 1:
                pictures.structure_png(structure, cell_dir / "rank01.png",
                                       f"{name}, rank 1: H = {energies[i]:.4f}, {rows[-1]['space_group']}")
        pictures.chain_energy_png(sampled.trace[rows_of_cell.start:rows_of_cell.stop],
                                  cell_dir / "chains.png", f"{name}: {len(rows_of_cell)} chains")
        log(f"{name}: {len(finite)} CIFs, rank01.png and chains.png in {cell_dir}")
    csv_path, md_path = _write_summary(rows, out_dir, ranking)
    log(f"wrote {csv_path}, {md_path}")
    return rows
