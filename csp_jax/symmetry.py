"""Space groups of predicted structures, and their symmetrised versions.

A sample of an annealed chain is never exactly symmetric: cubic SrTiO3 comes
out of the sampler as a cell a few hundredths of an Angstrom from Pm-3m, which
spglib calls P1 at a tight tolerance. `space_groups` reports the group at each
of SYMPRECS; `symmetrise` returns pymatgen's refined structure at the
tolerance that finds the highest symmetry while moving the atoms little (the
refined structure matches the sample with StructureMatcher's normalised RMS
displacement at most MAX_RMS).
"""
from __future__ import annotations

from typing import NamedTuple

SYMPRECS = (0.01, 0.1, 0.5)  # Angstrom
ANGLE_TOLERANCE = 5.0  # degrees
MAX_RMS = 0.1  # largest RMS displacement (normalised by (V / n)^(1/3)) a symmetrisation may cost


def _analyzer(structure, symprec: float):
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=ANGLE_TOLERANCE)


def space_group(structure, symprec: float) -> str:
    """International symbol and number at `symprec`, e.g. `Pm-3m (221)`; `n/a` where spglib
    cannot determine the symmetry (e.g. atoms almost on top of each other)."""
    try:
        analyzer = _analyzer(structure, symprec)
        return f"{analyzer.get_space_group_symbol()} ({analyzer.get_space_group_number()})"
    except (RuntimeError, ValueError, TypeError):  # spglib: "Unable to determine symmetry"
        return "n/a"


def space_groups(structure) -> dict[float, str]:
    """{symprec: `space_group`} for every tolerance of SYMPRECS."""
    return {symprec: space_group(structure, symprec) for symprec in SYMPRECS}


class Symmetrised(NamedTuple):
    """structure: the refined structure (the sample itself when nothing better was found);
    symprec: the tolerance it was refined at (None: not refined); space_group: its group;
    rms: the RMS displacement from the sample (normalised; 0 when not refined)."""

    structure: object
    symprec: float | None
    space_group: str
    rms: float


def symmetrise(structure) -> Symmetrised:
    """The refined structure of highest space-group number over SYMPRECS whose RMS
    displacement from `structure` is at most MAX_RMS (ties: the smaller tolerance)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    best = Symmetrised(structure, None, space_group(structure, SYMPRECS[0]), 0.0)
    best_number = 0
    for symprec in SYMPRECS:
        try:
            analyzer = _analyzer(structure, symprec)
            number = analyzer.get_space_group_number()
            refined = analyzer.get_refined_structure()
        except (RuntimeError, ValueError, TypeError):
            continue
        if number <= best_number:
            continue
        rms = StructureMatcher(primitive_cell=True, scale=False).get_rms_dist(structure, refined)
        if rms is not None and rms[0] <= MAX_RMS:
            best_number = number
            best = Symmetrised(refined, symprec, space_group(refined, symprec), float(rms[0]))
    return best
