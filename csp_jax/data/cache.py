"""The parsed-array cache: a CSV file's crystals and bad rows, so that later loads skip parsing.

Each entry is an `.npz` in the cache dir (`$CSP_JAX_CACHE`, default
`~/.cache/csp_jax`), keyed by the SHA-256 of the CSV text and the options that
change the result (SPEC §4, step 3).
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from csp_jax.data.dataset import CrystalDataset
from csp_jax.data.parse import BadRow, apply_bad_row_policy
from csp_jax.files import write_atomic

# Bump when parsing or the cache layout changes, so stale caches are not reused.
CACHE_FORMAT = 2  # 2: rows with overlapping atoms or implausible volumes are bad rows


def cache_path(cache_dir: Path, path: Path, csv_sha256: str, max_atoms: int | None,
               limit: int | None) -> Path:
    """The entry of CSV file `path`: `<cache_dir>/<dataset>-<split>-<key>.npz`."""
    from pymatgen.core import __version__ as pymatgen_version

    key = f"{csv_sha256}|max_atoms={max_atoms}|format={CACHE_FORMAT}|pymatgen={pymatgen_version}"
    if limit is not None:
        key += f"|limit={limit}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    stem = path.name.split(".")[0]
    return cache_dir / f"{path.parent.name}-{stem}-{digest}.npz"


def save_cached(cache_file: Path, dataset: CrystalDataset, bad: list[BadRow], total: int) -> None:
    """Write an entry: the dataset's arrays, its file's bad rows and the number of rows read."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, species=dataset.species, positions=dataset.positions,
             lattice=dataset.lattice, material_ids=dataset.material_ids, rows=dataset.rows,
             bad_rows=np.asarray([b.row for b in bad], np.int64),
             bad_reasons=np.asarray([b.reason for b in bad], dtype=str),
             bad_details=np.asarray([b.detail for b in bad], dtype=str),
             total=np.int64(total))
    write_atomic(cache_file, buffer.getvalue())


def load_cached(cache_file: Path, path: Path, on_bad_row: str) -> CrystalDataset | None:
    """Read a cache entry (None when it is damaged: the caller parses again and rewrites it);
    its recorded bad rows get the same warning or error as a parse."""
    try:
        with np.load(cache_file) as z:
            bad = [BadRow(int(r), str(reason), str(detail))
                   for r, reason, detail in zip(z["bad_rows"], z["bad_reasons"], z["bad_details"])]
            dataset = CrystalDataset(z["species"], z["positions"], z["lattice"],
                                     z["material_ids"], z["rows"], str(path))
            total = int(z["total"])
    except Exception:  # numpy raises zipfile, EOF, key and value errors for a damaged file
        return None
    apply_bad_row_policy(str(path), bad, total, on_bad_row)
    return dataset
