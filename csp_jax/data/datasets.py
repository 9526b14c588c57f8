"""Benchmark datasets: the public entry points and the split policy.

Loading a split (SPEC §4): `load_split` finds the split's CSV file, downloading
it when asked (`sources`), and `load_csv` parses it (`parse`: Niggli-reduced
crystals, the bad-row policy), pads the crystals into a `CrystalDataset`
(`dataset`) and keeps the arrays in the parsed-array cache (`cache`).
Which crystals of a split are used: `splits_at_hand` (every split found
locally), `training_splits` (a config's training and validation crystals) and
`subset_indices` (the first N of a fixed shuffle, as evaluations take them).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from csp_jax.config import DataConfig, EvalConfig
from csp_jax.data.cache import cache_path, load_cached, save_cached
from csp_jax.data.dataset import CrystalDataset
from csp_jax.data.parse import apply_bad_row_policy, parse_rows
from csp_jax.data.registry import DATASETS
from csp_jax.data.sources import MissingDataError, known_splits, read_csv_text, split_path
from csp_jax.files import cache_dir as cache_root
from csp_jax.geometry.crystal import pad, stack


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
    data = read_csv_text(path)
    cache_file = cache_path(cache_root(cache_dir), path,
                            hashlib.sha256(data).hexdigest(), max_atoms, limit)
    if cache and cache_file.is_file():
        cached = load_cached(cache_file, path, on_bad_row)
        if cached is not None:
            return cached
    crystals, ids, rows, bad, total = parse_rows(
        str(path), data, max_atoms, workers or os.cpu_count() or 1, limit)
    apply_bad_row_policy(str(path), bad, total, on_bad_row)
    if not crystals:
        raise ValueError(f"{path}: no usable rows")
    width = max_atoms if max_atoms is not None else max(len(c.species) for c in crystals)
    batch = stack([pad(c, width) for c in crystals])
    dataset = CrystalDataset(
        batch.species.astype(np.int32), batch.positions.astype(np.float32),
        batch.lattice.astype(np.float32), np.asarray(ids, dtype=str),
        np.asarray(rows, np.int64), str(path))
    if cache:
        save_cached(cache_file, dataset, bad, total)
    return dataset


def load_split(dataset: str, split: str, data_dir: str | os.PathLike | None = None, *,
               max_atoms: int | None = None, on_bad_row: str = "skip",
               download: bool = False, base_url: str | None = None, cache: bool = True,
               cache_dir: str | os.PathLike | None = None,
               workers: int | None = None, limit: int | None = None) -> CrystalDataset:
    """Load a benchmark split, e.g. `load_split("perov_5", "train")`.

    max_atoms defaults to the dataset's published cell size (`DatasetInfo.max_atoms`),
    so every split of a dataset has the same padding. Other arguments: see
    `sources.split_path` (finding and downloading) and `load_csv` (parsing and caching).
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


SUBSET_SEED = 0  # the fixed shuffle that an evaluation's `limit` takes the first N of


def subset_indices(num_crystals: int, limit: int, skip: int = EvalConfig.skip) -> np.ndarray:
    """The first `limit` of a fixed-seed permutation of range(num_crystals) less its first `skip`,
    sorted; all (less the first `skip`) when limit <= 0.

    So `skip=100, limit=200` gives the crystals that `limit=200` adds to `limit=100`.
    ValueError (one line) when skip leaves none.
    """
    end = num_crystals if limit <= 0 else min(limit, num_crystals)
    if skip >= end:
        raise ValueError(f"eval.skip={skip} leaves none of the first {end} crystals of the shuffle "
                         f"(eval.limit={limit})")
    if skip == 0 and end == num_crystals:
        return np.arange(num_crystals)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(num_crystals)[skip:end])
