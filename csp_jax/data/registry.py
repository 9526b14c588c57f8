"""The datasets csp_jax knows: one record each, with everything known about it.

A `DatasetInfo` holds a benchmark's display name, its published cell size
(the default padding), its splits with their row counts and checksums, and
the paper's Table 1 numbers on it. Add a dataset by adding a record here.
"""
from __future__ import annotations

from typing import NamedTuple

SPLITS = ("train", "val", "test")


class Checksum(NamedTuple):
    """Expected digests of a decompressed split CSV (`sha256` is None where unknown)."""

    git_blob_sha1: str
    sha256: str | None = None


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
    """

    name: str
    display_name: str
    max_atoms: int
    sizes: dict
    checksums: dict
    paper: dict


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
         "RS (random search)": (2.05, 0.3329)}),
)}


def dataset_info(name: str) -> DatasetInfo:
    """The record of dataset `name`; ValueError naming the known ones otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]
