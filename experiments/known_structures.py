"""Does `predict`'s top-ranked structure match the known ground state? For well-known compounds.

    python experiments/known_structures.py --predictions predictions

Reads `<predictions>/summary.csv` (written by `csp-jax predict`, with or without
`--relax`) and matches the rank-1 CIF of every formula it knows (KNOWN: the
experimental structures, built from their space group and Wyckoff positions)
against those structures with the evaluation's StructureMatcher tolerances
and its strict ones; prints a Markdown table: formula, the rank-1 structure's
space group, the known structures and which of them it matches (at the strict
tolerances too), and the rank of the first candidate that matches one.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from csp_jax.candidates.matching import MATCHER_KWARGS, STRICT_MATCHER_KWARGS

# formula -> [(name, space group, lattice, species, fractional coordinates of the Wyckoff positions)]
KNOWN = {
    "NaCl": [("rock salt", "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])],
    "GaAs": [("zincblende", "F-43m", Lattice.cubic(5.653), ["Ga", "As"], [[0, 0, 0], [0.25, 0.25, 0.25]])],
    "TiO2": [("rutile", "P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
              [[0, 0, 0], [0.3049, 0.3049, 0]]),
             ("anatase", "I4_1/amd", Lattice.tetragonal(3.785, 9.514), ["Ti", "O"],
              [[0, 0, 0], [0, 0, 0.2083]])],
    "LiCoO2": [("layered", "R-3m", Lattice.hexagonal(2.816, 14.05), ["Li", "Co", "O"],
                [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.2396]])],
}


def known_structures(formula: str) -> list[tuple[str, Structure]]:
    """(name with space group, structure) of every known structure of `formula`."""
    return [(f"{name} {group}", Structure.from_spacegroup(group, lattice, species, coords))
            for name, group, lattice, species, coords in KNOWN.get(formula, [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", required=True, type=Path, help="the output folder of predict")
    args = parser.parse_args()
    with open(args.predictions / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    usual, strict = StructureMatcher(**MATCHER_KWARGS), StructureMatcher(**STRICT_MATCHER_KWARGS)
    print("| formula | rank-1 space group | known structures | rank 1 matches | at strict tolerances | "
          "first rank that matches |")
    print("|---|---|---|---|---|---|")
    for formula in dict.fromkeys(row["formula"] for row in rows):
        known = known_structures(formula)
        if not known:
            continue
        ranked = sorted((r for r in rows if r["formula"] == formula), key=lambda r: int(r["rank"]))

        def matches(row, matcher=usual) -> list[str]:
            if row["valid"] != "True":
                return []
            candidate = Structure.from_file(args.predictions / row["cif"])
            return [name for name, structure in known if matcher.fit(structure, candidate)]

        first = next((int(r["rank"]) for r in ranked if matches(r)), None)
        print(f"| {formula} | {ranked[0]['space_group']} | {', '.join(n for n, _ in known)} | "
              f"{', '.join(matches(ranked[0])) or 'no'} | {', '.join(matches(ranked[0], strict)) or 'no'} | "
              f"{first or 'none'} |")


if __name__ == "__main__":
    main()
