"""Parsing a split's CSV text into crystals, and the bad-row policy.

Every row's CIF (column `cif`) is parsed with pymatgen and Niggli-reduced
(`get_reduced_structure()`, which also wraps atoms into the cell) into an
unpadded `Crystal` (SPEC §4, step 2); large files are parsed by worker processes.

Rows that cannot be used (unparseable CIF, non-finite lattice or coordinates,
disordered sites, more atoms than `max_atoms`) are skipped with one warning per
file, or raise one `ValueError` naming file and row with `on_bad_row="error"`.
Row numbers count data records from 0, header excluded (the CSV's index column).
"""
from __future__ import annotations

import csv
import io
import math
import sys
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import NamedTuple

import numpy as np

from csp_jax.errors import one_line
from csp_jax.geometry.crystal import MAX_Z, Crystal, from_structure
from csp_jax.geometry.validity import MIN_DISTANCE  # closer atoms (own images included): a bad row

VOLUME_PER_ATOM = (1.0, 1000.0)  # Angstrom^3: a cell outside this range is a bad row
# Files with fewer rows are parsed in-process: starting workers costs more.
_MIN_ROWS_FOR_POOL = 256


class BadRow(NamedTuple):
    """A row that cannot be used: its record number, the reason (one of a few phrases) and a
    detail ("" when none)."""

    row: int
    reason: str
    detail: str


def _parse_cif(args: tuple[str, int | None]) -> Crystal | tuple[str, str]:
    """Parse and Niggli-reduce one CIF into an unpadded `Crystal`, or return (reason, detail)."""
    from pymatgen.core import Element, Structure

    cif, max_atoms = args
    # pymatgen warns about routine coordinate rounding, and explains failures in
    # warnings too: keep them quiet, and quote the last one when parsing fails.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structure = Structure.from_str(cif, fmt="cif")
        except Exception as error:  # pymatgen raises many types for malformed CIF text
            cause = f"; {caught[-1].message}" if caught else ""
            return "unparseable CIF", f"{type(error).__name__}: {error}{cause}"
    if not (np.all(np.isfinite(structure.lattice.matrix))
            and np.all(np.isfinite(structure.frac_coords))):
        return "non-finite lattice or coordinates", ""
    if max_atoms is not None and len(structure) > max_atoms:
        return "more than max_atoms atoms", f"{len(structure)} atoms > {max_atoms}"
    if not structure.is_ordered:
        return "disordered sites", ""
    unknown = sorted({str(s) for s in structure.species
                      if not isinstance(getattr(s, "element", s), Element) or s.Z > MAX_Z})
    if unknown:
        return "unknown element", f"{', '.join(unknown)}; the model knows Z = 1..{MAX_Z}"
    volume = abs(float(np.linalg.det(structure.lattice.matrix))) / len(structure)
    if not VOLUME_PER_ATOM[0] <= volume <= VOLUME_PER_ATOM[1]:
        return "implausible cell volume", (f"{volume:.3g} A^3 per atom, outside "
                                           f"{VOLUME_PER_ATOM[0]:g}-{VOLUME_PER_ATOM[1]:g}")
    try:
        reduced = structure.get_reduced_structure()
    except Exception as error:  # Niggli reduction of a degenerate cell
        return "Niggli reduction failed", f"{type(error).__name__}: {error}"
    # In the Niggli cell the shortest lattice vector is a basis vector (an atom's
    # nearest own image) and minimum-image distances are exact.
    distances = reduced.lattice.get_all_distances(reduced.frac_coords, reduced.frac_coords)
    closest = min(float(np.min(distances + np.diag(np.full(len(reduced), np.inf)))),
                  float(min(reduced.lattice.abc)))
    if closest < MIN_DISTANCE:
        return "overlapping atoms", f"{closest:.3f} A apart, under {MIN_DISTANCE} A"
    return from_structure(reduced, dtype=np.float64)


def _describe(bad_row: BadRow) -> str:
    detail = f" ({bad_row.detail})" if bad_row.detail else ""
    return f"row {bad_row.row}: {bad_row.reason}{detail}"


def apply_bad_row_policy(source: str, bad: list[BadRow], total: int, on_bad_row: str) -> None:
    """Raise a one-line ValueError for the first bad row ("error"), or warn once ("skip")."""
    if not bad:
        return
    if on_bad_row == "error":
        raise ValueError(one_line(f"{source}: {_describe(bad[0])}", limit=400))
    reasons = ", ".join(f"{n} {r}" for r, n in Counter(b.reason for b in bad).most_common())
    warnings.warn(one_line(f"{source}: skipped {len(bad)} of {total} rows (reasons: {reasons}; "
                            f"first: {_describe(bad[0])})", limit=400), stacklevel=3)


def _parse_jobs(jobs: list[tuple[str, int | None]], workers: int) -> list:
    if workers > 1 and len(jobs) >= _MIN_ROWS_FOR_POOL:
        # spawn: forking a process that has started JAX threads is unsafe.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            return list(pool.map(_parse_cif, jobs,
                                 chunksize=max(1, math.ceil(len(jobs) / (8 * workers)))))
    return [_parse_cif(job) for job in jobs]


def parse_rows(source: str, data: bytes, max_atoms: int | None, workers: int,
               limit: int | None = None):
    """Parse rows in file order: (crystals [unpadded], material_ids, rows, bad rows, rows read).

    limit: stop once this many usable crystals are found (None: read every row).
    """
    csv.field_size_limit(sys.maxsize)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{source}: not a UTF-8 text CSV ({err})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if "cif" not in (reader.fieldnames or ()):
        raise ValueError(f"{source}: no 'cif' column (header: {reader.fieldnames})")
    records = list(reader)
    crystals, ids, rows, bad = [], [], [], []
    read = 0
    while read < len(records) and (limit is None or len(crystals) < limit):
        end = len(records) if limit is None else min(len(records), read + limit - len(crystals))
        jobs = [(rec["cif"] or "", max_atoms) for rec in records[read:end]]
        for row, result in enumerate(_parse_jobs(jobs, workers), start=read):
            if isinstance(result, Crystal):
                crystals.append(result)
                ids.append(records[row].get("material_id", str(row)))
                rows.append(row)
            else:
                bad.append(BadRow(row, *result))
        read = end
    return crystals, ids, rows, bad, read
