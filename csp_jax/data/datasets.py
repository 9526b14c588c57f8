"""Benchmark datasets: locating, downloading, parsing and caching the CSV splits.

The CDVAE/DiffCSP splits (`perov_5`, `mp_20`, `mpts_52`; `train`, `val`, `test`)
and `mp_20_biternary` (`val`, `test`: MP-20's binary and ternary rows) are CSV
files with one P1 CIF per row (column `cif`). Loading a split (SPEC §4):

1. find `<data_dir>/<dataset>/<split>.csv` or `.csv.gz` (data dir from the
   argument, else `$CSP_JAX_DATA`), else a copy downloaded earlier into
   `<cache_dir>/data/`; when none exists and `download=True`, fetch the file from
   the dataset's source (`DatasetInfo.source`, a repository at a pinned commit)
   and verify its checksums;
2. parse every CIF with pymatgen, Niggli-reduce it (`get_reduced_structure()`,
   which also wraps atoms into the cell) and pad it into a `Crystal`;
3. save the arrays as `.npz` in the cache dir (`$CSP_JAX_CACHE`, default
   `~/.cache/csp_jax`), keyed by the SHA-256 of the CSV text and the options that
   change the result, so that later loads skip parsing.

Rows that cannot be used (unparseable CIF, non-finite lattice or coordinates,
disordered sites, more atoms than `max_atoms`) are skipped with one warning per
file, or raise one `ValueError` naming file and row with `on_bad_row="error"`.
Row numbers count data records from 0, header excluded (the CSV's index column).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import http.client
import io
import math
import os
import sys
import urllib.error
import urllib.request
import warnings
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

import numpy as np

from csp_jax.config import DataConfig
from csp_jax.data.registry import DATASETS, Checksum
from csp_jax.errors import one_line
from csp_jax.files import cache_dir as cache_root, write_atomic
from csp_jax.geometry.crystal import MAX_Z, Crystal, from_structure, pad, stack, to_structure
from csp_jax.geometry.validity import MIN_DISTANCE  # closer atoms (own images included): a bad row


# Bump when parsing or the cache layout changes, so stale caches are not reused.
DOWNLOAD_ATTEMPTS = 3
DOWNLOAD_TIMEOUT_S = 120.0  # seconds without data before an attempt is abandoned
CACHE_FORMAT = 2  # 2: rows with overlapping atoms or implausible volumes are bad rows
VOLUME_PER_ATOM = (1.0, 1000.0)  # Angstrom^3: a cell outside this range is a bad row
# Files with fewer rows are parsed in-process: starting workers costs more.
_MIN_ROWS_FOR_POOL = 256

# Every split's checksums, by (dataset, split): an index of the registry's records.
CHECKSUMS = {(d.name, split): c for d in DATASETS.values() for split, c in d.checksums.items()}


class MissingDataError(FileNotFoundError):
    """No data directory was given, or a split file is absent and download is off."""


class ChecksumError(ValueError):
    """A downloaded file does not match the expected checksum (it is not kept)."""


def known_splits() -> dict[str, tuple[str, ...]]:
    """The datasets this module knows, each with its split names."""
    return {dataset: tuple(info.sizes) for dataset, info in DATASETS.items()}


def _check_known(dataset: str, split: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets {sorted(DATASETS)}")
    if split not in DATASETS[dataset].sizes:
        raise ValueError(f"unknown split {dataset}/{split}; {dataset} has the splits "
                         f"{', '.join(DATASETS[dataset].sizes)}")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: `data_dir` if given, else `$CSP_JAX_DATA`; raises if neither."""
    chosen = data_dir if data_dir is not None else os.environ.get("CSP_JAX_DATA")
    if not chosen:
        raise MissingDataError(
            "no data directory: pass data_dir (--data-dir) or set CSP_JAX_DATA "
            "to a folder holding <dataset>/<split>.csv[.gz]")
    return Path(chosen).expanduser()


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of `data` (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _ensure_writable_dir(path: Path) -> bool:
    """Create `path` if absent; True when it is a directory this process can write."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _csv_sha256(data: bytes, suffix: str) -> str:
    """SHA-256 of the CSV text of a file's bytes (gunzipped for ".gz"; "" when damaged)."""
    if suffix.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (EOFError, gzip.BadGzipFile, zlib.error):
            return ""
    return hashlib.sha256(data).hexdigest()


def download_split(dataset: str, split: str, dest_dir: str | os.PathLike,
                   base_url: str | None = None) -> Path:
    """Download `<base_url>/<dataset>/<split><suffix>` into `dest_dir/<dataset>/`.

    `base_url` defaults to `$CSP_JAX_DATA_URL`, else the dataset's `source` (the
    DiffCSP data folder at a pinned commit for the CDVAE/DiffCSP splits); the
    suffix is the dataset's (".csv" or ".csv.gz"). The file must match CHECKSUMS
    (git blob SHA-1 of the bytes served, SHA-256 of the CSV text where known),
    else ChecksumError and nothing is written. The file is written
    to a temporary name and renamed, so a partial download is never visible. A
    transfer that times out, is cut short or fails its checksum is tried again,
    DOWNLOAD_ATTEMPTS times in all.
    """
    _check_known(dataset, split)
    info = DATASETS[dataset]
    base_url = base_url or os.environ.get("CSP_JAX_DATA_URL") or info.source
    url = f"{base_url.rstrip('/')}/{dataset}/{split}{info.suffix}"
    expected = CHECKSUMS[(dataset, split)]
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                data = response.read()
        except urllib.error.HTTPError as error:  # the server answered: trying again won't help
            raise MissingDataError(f"{url}: download failed: {error}") from None
        except (OSError, http.client.HTTPException) as error:  # timed out, cut short, refused
            failure = MissingDataError(f"{url}: download failed after {attempt} attempts: "
                                       f"{type(error).__name__}: {error}")
            continue
        got = Checksum(git_blob_sha1(data), _csv_sha256(data, info.suffix) if expected.sha256 else None)
        if got == expected:
            break
        failure = ChecksumError(
            f"{url}: checksum mismatch after {attempt} attempts ({len(data)} bytes, git blob "
            f"{got.git_blob_sha1}, expected {expected.git_blob_sha1}); file not kept")
    else:
        raise failure
    target = Path(dest_dir) / dataset / f"{split}{info.suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, data)
    return target


def split_path(dataset: str, split: str, data_dir: str | os.PathLike | None = None, *,
               download: bool = False, base_url: str | None = None,
               cache_dir: str | os.PathLike | None = None) -> Path:
    """The CSV file of a split, downloading it when absent and `download` is set.

    Looks in `<data_dir>/<dataset>/` for `<split>.csv` then `<split>.csv.gz`, then
    in `<cache_dir>/data/<dataset>/` (earlier downloads). Downloads go into the
    data dir when it is (or can be created as) a writable directory, else into
    `<cache_dir>/data`. The
    data dir may be unset (no argument, no env var) when the file was downloaded
    before or `download` is set; otherwise MissingDataError says what to set.
    """
    _check_known(dataset, split)
    root, no_root = None, None
    try:
        root = resolve_data_dir(data_dir)
    except MissingDataError as error:
        no_root = error
    fallback = cache_root(cache_dir) / "data"
    roots = [r for r in (root, fallback) if r is not None]
    candidates = [r / dataset / f"{split}{ext}" for r in roots for ext in (".csv", ".csv.gz")]
    for path in candidates:
        if path.is_file():
            return path
    if not download:
        if no_root is not None:
            raise no_root
        raise MissingDataError(
            f"{dataset}/{split} not found (looked for {', '.join(map(str, candidates))}); "
            "set CSP_JAX_DATA (--data-dir) to a folder holding it, or enable download")
    dest = root if root is not None and _ensure_writable_dir(root) else fallback
    try:
        return download_split(dataset, split, dest, base_url)
    except MissingDataError as error:
        raise MissingDataError(
            f"{dataset}/{split} not found in {', '.join(map(str, roots))} and the download "
            f"failed ({error}); set CSP_JAX_DATA (--data-dir) to a folder holding it") from None


@dataclass(frozen=True)
class CrystalDataset:
    """Padded crystals of one CSV file.

    species:      [M, N] int32, atomic numbers, 0 for padding.
    positions:    [M, N, 3] float32, Cartesian (Angstrom), Niggli-reduced cell.
    lattice:      [M, 3, 3] float32, rows are the lattice vectors.
    material_ids: [M] str, the CSV's `material_id`.
    rows:         [M] int64, record number of each crystal in the CSV (from 0).
    source:       the CSV file the crystals came from.
    """

    species: np.ndarray
    positions: np.ndarray
    lattice: np.ndarray
    material_ids: np.ndarray
    rows: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.species)

    @property
    def max_atoms(self) -> int:
        """N, the padded number of atom slots."""
        return self.species.shape[1]

    @property
    def num_atoms(self) -> np.ndarray:
        """[M] int32, real atoms per crystal."""
        return np.sum(self.species > 0, axis=1).astype(np.int32)

    @property
    def crystals(self) -> Crystal:
        """All crystals as one batched `Crystal` ([M, N] species)."""
        return Crystal(self.species, self.positions, self.lattice)

    def subset(self, indices) -> "CrystalDataset":
        """The crystals at `indices` (int array, slice or bool mask), padding unchanged."""
        return CrystalDataset(self.species[indices], self.positions[indices],
                              self.lattice[indices], self.material_ids[indices],
                              self.rows[indices], self.source)

    def structure(self, i: int):
        """Crystal `i` as a `pymatgen.core.Structure`."""
        return to_structure(Crystal(self.species[i], self.positions[i], self.lattice[i]))

    def select(self, *, most_atoms: int | None = None, exclude_ids=()) -> "CrystalDataset":
        """The crystals of at most `most_atoms` atoms (None: any) whose material_id is not in
        `exclude_ids` (e.g. the crystals a model was trained on), in their order."""
        keep = ~np.isin(self.material_ids.astype(str), np.asarray(list(exclude_ids), str))
        if most_atoms is not None:
            keep &= self.num_atoms <= most_atoms
        return self.subset(np.flatnonzero(keep))


class _BadRow(NamedTuple):
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


def _describe(bad_row: _BadRow) -> str:
    detail = f" ({bad_row.detail})" if bad_row.detail else ""
    return f"row {bad_row.row}: {bad_row.reason}{detail}"


def _apply_bad_row_policy(source: str, bad: list[_BadRow], total: int, on_bad_row: str) -> None:
    """Raise a one-line ValueError for the first bad row ("error"), or warn once ("skip")."""
    if not bad:
        return
    if on_bad_row == "error":
        raise ValueError(one_line(f"{source}: {_describe(bad[0])}", limit=400))
    reasons = ", ".join(f"{n} {r}" for r, n in Counter(b.reason for b in bad).most_common())
    warnings.warn(one_line(f"{source}: skipped {len(bad)} of {total} rows (reasons: {reasons}; "
                            f"first: {_describe(bad[0])})", limit=400), stacklevel=3)


def _read_csv_text(path: Path) -> bytes:
    """The file's bytes (gunzipped for `.gz`); ValueError naming it when it cannot be read."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"{path}: damaged gzip file ({err})") from None


def _parse_jobs(jobs: list[tuple[str, int | None]], workers: int) -> list:
    if workers > 1 and len(jobs) >= _MIN_ROWS_FOR_POOL:
        # spawn: forking a process that has started JAX threads is unsafe.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            return list(pool.map(_parse_cif, jobs,
                                 chunksize=max(1, math.ceil(len(jobs) / (8 * workers)))))
    return [_parse_cif(job) for job in jobs]


def _parse_rows(source: str, data: bytes, max_atoms: int | None, workers: int,
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
                bad.append(_BadRow(row, *result))
        read = end
    return crystals, ids, rows, bad, read


def _cache_file(cache_dir: Path, path: Path, csv_sha256: str, max_atoms: int | None,
                limit: int | None) -> Path:
    from pymatgen.core import __version__ as pymatgen_version

    key = f"{csv_sha256}|max_atoms={max_atoms}|format={CACHE_FORMAT}|pymatgen={pymatgen_version}"
    if limit is not None:
        key += f"|limit={limit}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    stem = path.name.split(".")[0]
    return cache_dir / f"{path.parent.name}-{stem}-{digest}.npz"


def load_csv(path: str | os.PathLike, *, max_atoms: int | None = None,
             on_bad_row: str = "skip", cache: bool = True,
             cache_dir: str | os.PathLike | None = None,
             workers: int | None = None, limit: int | None = None) -> CrystalDataset:
    """Load one CDVAE/DiffCSP CSV (`.csv` or `.csv.gz`) into a `CrystalDataset`.

    max_atoms:  cap on atoms per crystal and the padded size N; larger crystals
                are bad rows. None: no cap, N is the largest crystal in the file.
    on_bad_row: "skip" (one warning for the file) or "error" (ValueError naming
                the first bad row).
    cache:      read/write `<cache_dir>/<dataset>-<split>-<key>.npz`.
    workers:    parsing processes (default: the number of CPUs).
    limit:      keep only the first `limit` usable crystals, parsing no row
                after them (None: all); bad rows are counted among those read.
    """
    if on_bad_row not in ("skip", "error"):
        raise ValueError(f"on_bad_row must be 'skip' or 'error', not {on_bad_row!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of crystals, not {limit}")
    path = Path(path)
    data = _read_csv_text(path)
    cache_file = _cache_file(cache_root(cache_dir), path,
                             hashlib.sha256(data).hexdigest(), max_atoms, limit)
    if cache and cache_file.is_file():
        cached = _load_cached(cache_file, path, on_bad_row)
        if cached is not None:
            return cached
    crystals, ids, rows, bad, total = _parse_rows(
        str(path), data, max_atoms, workers or os.cpu_count() or 1, limit)
    _apply_bad_row_policy(str(path), bad, total, on_bad_row)
    if not crystals:
        raise ValueError(f"{path}: no usable rows")
    width = max_atoms if max_atoms is not None else max(len(c.species) for c in crystals)
    batch = stack([pad(c, width) for c in crystals])
    dataset = CrystalDataset(
        batch.species.astype(np.int32), batch.positions.astype(np.float32),
        batch.lattice.astype(np.float32), np.asarray(ids, dtype=str),
        np.asarray(rows, np.int64), str(path))
    if cache:
        _save_cached(cache_file, dataset, bad, total)
    return dataset


def _save_cached(cache_file: Path, dataset: CrystalDataset, bad: list[_BadRow], total: int) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, species=dataset.species, positions=dataset.positions,
             lattice=dataset.lattice, material_ids=dataset.material_ids, rows=dataset.rows,
             bad_rows=np.asarray([b.row for b in bad], np.int64),
             bad_reasons=np.asarray([b.reason for b in bad], dtype=str),
             bad_details=np.asarray([b.detail for b in bad], dtype=str),
             total=np.int64(total))
    write_atomic(cache_file, buffer.getvalue())


def _load_cached(cache_file: Path, path: Path, on_bad_row: str) -> CrystalDataset | None:
    """Read a cache entry (None when it is damaged: the caller parses again and rewrites it);
    its recorded bad rows get the same warning or error as a parse."""
    try:
        with np.load(cache_file) as z:
            bad = [_BadRow(int(r), str(reason), str(detail))
                   for r, reason, detail in zip(z["bad_rows"], z["bad_reasons"], z["bad_details"])]
            dataset = CrystalDataset(z["species"], z["positions"], z["lattice"],
                                     z["material_ids"], z["rows"], str(path))
            total = int(z["total"])
    except Exception:  # numpy raises zipfile, EOF, key and value errors for a damaged file
        return None
    _apply_bad_row_policy(str(path), bad, total, on_bad_row)
    return dataset


def load_split(dataset: str, split: str, data_dir: str | os.PathLike | None = None, *,
               max_atoms: int | None = None, on_bad_row: str = "skip",
               download: bool = False, base_url: str | None = None, cache: bool = True,
               cache_dir: str | os.PathLike | None = None,
               workers: int | None = None, limit: int | None = None) -> CrystalDataset:
    """Load a benchmark split, e.g. `load_split("perov_5", "train")`.

    max_atoms defaults to the dataset's published cell size (`DatasetInfo.max_atoms`),
    so every split of a dataset has the same padding. Other arguments: see
    `split_path` (finding and downloading) and `load_csv` (parsing and caching).
    """
    path = split_path(dataset, split, data_dir, download=download, base_url=base_url,
                      cache_dir=cache_dir)
    return load_csv(path, max_atoms=max_atoms or DATASETS[dataset].max_atoms,
                    on_bad_row=on_bad_row, cache=cache, cache_dir=cache_dir, workers=workers,
                    limit=limit)


def splits_at_hand(dataset: str, data_dir: str | os.PathLike | None = None, *,
                   cache_dir: str | os.PathLike | None = None) -> tuple[list[CrystalDataset], list[str]]:
    """(every split of `dataset` found locally, in registry order; the names of those not found)."""
    found, missing = [], []
    for split in known_splits()[dataset]:
        try:
            found.append(load_split(dataset, split, data_dir, cache_dir=cache_dir))
        except MissingDataError:
            missing.append(split)
    return found, missing


HOLDOUT_SEED = 0  # the fixed shuffle a validation hold-out is taken from


def training_splits(data: DataConfig, data_dir: str | os.PathLike | None = None):
    """(training crystals, validation crystals) of a config's `data` section.

    The training crystals are `data.train_split`; the validation crystals are
    `data.val_split`, or, when that is "", the last `data.val_holdout` of a
    fixed shuffle (HOLDOUT_SEED) of the training split, which training then
    does without. `train_limit` / `val_limit` keep the first N of each (the
    training split is then parsed no further, unless a hold-out needs it whole).
    """
    def load(split, limit):
        return load_split(data.dataset, split, data_dir, download=True, limit=limit or None)

    if data.val_split:
        return load(data.train_split, data.train_limit), load(data.val_split, data.val_limit)
    if data.val_holdout < 1:
        raise ValueError("data.val_split is empty: set data.val_holdout to the number of "
                         "training crystals held out for validation")
    whole = load(data.train_split, 0)
    if data.val_holdout >= len(whole):
        raise ValueError(f"data.val_holdout={data.val_holdout} leaves no training crystals of "
                         f"the {len(whole)} in {data.dataset}/{data.train_split}")
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(whole))
    train, val = np.sort(order[:-data.val_holdout]), np.sort(order[-data.val_holdout:])
    if data.train_limit:
        train = train[:data.train_limit]
    if data.val_limit:
        val = val[:data.val_limit]
    return whole.subset(train), whole.subset(val)
