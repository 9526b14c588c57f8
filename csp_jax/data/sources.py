"""The benchmark splits' files: which exist, where they are, how they are downloaded and checked.

The CDVAE/DiffCSP splits (`perov_5`, `mp_20`, `mpts_52`; `train`, `val`, `test`)
and `mp_20_biternary` (`val`, `test`: MP-20's binary and ternary rows) are CSV
files with one P1 CIF per row (column `cif`). A split's file (SPEC §4, step 1)
is `<data_dir>/<dataset>/<split>.csv` or `.csv.gz` (data dir from the argument,
else `$CSP_JAX_DATA`), else a copy downloaded earlier into `<cache_dir>/data/`;
when none exists and `download=True`, the file is fetched from the dataset's
source (`DatasetInfo.source`, a repository at a pinned commit) and its
checksums are verified.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from csp_jax.data.registry import DATASETS, Checksum
from csp_jax.files import cache_dir as cache_root, write_atomic

DOWNLOAD_ATTEMPTS = 3
DOWNLOAD_TIMEOUT_S = 120.0  # seconds without data before an attempt is abandoned

# Every split's checksums, by (dataset, split): an index of the registry's records.
CHECKSUMS = {(d.name, split): c for d in DATASETS.values() for split, c in d.checksums.items()}


class MissingDataError(FileNotFoundError):
    """No data directory was given, or a split file is absent and download is off."""


class ChecksumError(ValueError):
    """A downloaded file does not match the expected checksum (it is not kept)."""


def known_splits() -> dict[str, tuple[str, ...]]:
    """The datasets the registry knows, each with its split names."""
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


def read_csv_text(path: Path) -> bytes:
    """The file's bytes (gunzipped for `.gz`); ValueError naming it when it cannot be read."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"{path}: damaged gzip file ({err})") from None
