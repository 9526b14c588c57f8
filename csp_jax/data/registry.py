"""The datasets csp_jax knows: one record each, with everything known about it.

A `DatasetInfo` holds a benchmark's display name, its published cell size
(the default padding), its splits with their row counts and checksums, where
they are downloaded from, and the paper's Table 1 numbers on it (with a note
where those were measured on other data). Add a dataset by adding a record here.
"""
from __future__ import annotations

from typing import NamedTuple



class Checksum(NamedTuple):
    """Expected digests of a split: the git blob id of the file as served (a `.csv`, or a
    `.csv.gz` for a gzip source) and the SHA-256 of the CSV text (None where unknown)."""

    git_blob_sha1: str
    sha256: str | None = None


DIFFCSP_COMMIT = "7121d159826efa2ba9500bf299250d96da37f146"
DIFFCSP_DATA = f"https://raw.githubusercontent.com/jiaor17/DiffCSP/{DIFFCSP_COMMIT}/data"
WYCKOFF_COMMIT = "507e8f147a0e87905c2574ebfbbfc9fa21c2fb09"
WYCKOFF_DATA = f"https://raw.githubusercontent.com/SymmetryAdvantage/WyckoffTransformer/{WYCKOFF_COMMIT}/data"


class DatasetInfo(NamedTuple):
    """One benchmark dataset.

    name:         the folder name, e.g. "perov_5".
    display_name: as papers print it, e.g. "Perov-5".
    max_atoms:    the largest cell of the dataset (padding of `load_split`).
    sizes:        rows of each split's CSV.
    checksums:    each split's digests: the DiffCSP tree at DIFFCSP_COMMIT
                  (git blob ids) and SHA-256 where a copy was checked.
    paper:        Table 1 of the ContinuouSP paper on this dataset, 20 samples:
                  method -> (match rate %, RMSE).
    source:       the folder the splits are downloaded from (`<source>/<name>/<split><suffix>`).
    suffix:       ".csv", or ".csv.gz" for a gzip-compressed source.
    note:         what a reader of `paper` must know (e.g. it was measured on other data).
    """

    name: str
    display_name: str
    max_atoms: int
    sizes: dict
    checksums: dict
    paper: dict
    source: str = DIFFCSP_DATA
    suffix: str = ".csv"
    note: str = ""


DATASETS = {d.name: d for d in (
    DatasetInfo(
        "perov_5", "Perov-5", 5, {"train": 11356, "val": 3787, "test": 3785},
        {"train": Checksum("62ce91686595d45d484d026bbfd14c2518b66abd",
                           "6144a97ead4828a781a1c269c56fedc34b65945977c6433a055a720c47bf77f6"),
         "val": Checksum("872fc814e6a513024cb923a0576d723fca25969c",
                         "efb9c832756439747f093e03a35daf073fcc9a5fc43a8a5292addee2f3d7ce90"),
         "test": Checksum("cb97501bed31c8cdcb603f9b9c3a59842828c9d8",
                          "2511340f0e08b25699e9386e100ae0b30cd9b9c8a5b29622c3533644e04c95fa")},
        {"ContinuouSP (paper)": (99.16, 0.0893), "DiffCSP": (98.60, 0.0128), "CDVAE": (88.51, 0.0464),
         "RS (random search)": (29.22, 0.2924)}),
    DatasetInfo(
        "mp_20", "MP-20", 20, {"train": 27136, "val": 9047, "test": 9046},
        {"train": Checksum("206f82f8dd4d5ddf4d6e33ae2b2928dbba8a011a"),
         "val": Checksum("6070ef70053415f6436eddc30f2f4137fcac19eb"),
         "test": Checksum("133f5697e1d3fd94f9bf0ab6a3b6c5054d325955")},
        {"ContinuouSP (paper)": (44.21, 0.1757), "DiffCSP": (77.93, 0.0492), "CDVAE": (66.95, 0.1026),
         "RS (random search)": (8.73, 0.2501)}),
    DatasetInfo(
        "mpts_52", "MPTS-52", 52, {"train": 27380, "val": 5000, "test": 8096},
        {"train": Checksum("28c53b0a0fd3f32fb8078aca8e5b484e372790c6"),
         "val": Checksum("a377ba0ca7bee37ee69d9f50f8362eaa35d9f690",
                         "b5d9f7a8ff72f3a1f24d6bb97e11ad201be40d10be7b27924234da06af04baba"),
         "test": Checksum("2e8af159618f63be346b6527f155514323964423",
                          "4d6e76c4726fb12fb2a7e5bb23594f9b82dbd9bf67b7bfd4866e9c74a8f49038")},
        {"ContinuouSP (paper)": (11.77, 0.2647), "DiffCSP": (34.02, 0.1749), "CDVAE": (20.79, 0.2085),
         "RS (random search)": (2.05, 0.3329)},
        # The split is by year of first publication: val after train's years, test the latest.
        # Without train, a model trains on val (less a hold-out) and is tested on test.
        note="published numbers were trained on the 27,380-crystal train split; a model trained "
             "on val alone (5,000 crystals, published after train's years) sees 5.5x fewer"),
    DatasetInfo(
        # Every binary and ternary row of MP-20's val and test splits (79% of each), with
        # MP-20's columns; no train split: a model trains on val (less a hold-out) and is
        # tested on test. 680 val and 689 test material_ids also occur in MPTS-52 val + test.
        "mp_20_biternary", "MP-20 (binary + ternary)", 20, {"val": 7140, "test": 7118},
        {"val": Checksum("ea97fada8ab0bf4c9e2761a6ca62e3d10537aaa1",
                         "8f14dfefa9beb88739e5e21d75c797265f51b754105613a20aee9d1478e01e86"),
         "test": Checksum("220c041da79efde30db5b49ca639c21efa1cff4d",
                          "f8fe51d9eacfc3ec4f7614399b79383a8e158ddd3c54137eb182027d1a866276")},
        {"ContinuouSP (paper)": (44.21, 0.1757), "DiffCSP": (77.93, 0.0492), "CDVAE": (66.95, 0.1026),
         "RS (random search)": (8.73, 0.2501)},
        source=WYCKOFF_DATA, suffix=".csv.gz",
        note="published numbers are on all of MP-20 (27,136 training crystals, all element "
             "counts), not on this subset"),
)}


def dataset_info(name: str) -> DatasetInfo:
    """The record of dataset `name`; ValueError naming the known ones otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]
