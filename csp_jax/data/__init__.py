"""Datasets and the species of training negatives.

- `datasets`: the entry points (`load_split`, `load_csv`) and the split policy
  (`splits_at_hand`, `training_splits`, `subset_indices`) for the CDVAE/DiffCSP
  CSV splits (Perov-5, MP-20, MPTS-52);
- `sources`: the split files: data dir, checked downloads (git blob / SHA-256);
- `parse`: CSV/CIF rows into Niggli-reduced crystals, worker processes, bad rows;
- `cache`: the parsed arrays as `.npz`, keyed by the CSV text and the options;
- `dataset`: `CrystalDataset`, the padded crystals of one CSV file;
- `registry`: one `DatasetInfo` record per dataset;
- `species`: `Expand(Reduce(A), j)` with j ~ Geometric for the chains of a
  training batch (SPEC §3, last bullet).
"""
from csp_jax.data.dataset import CrystalDataset
from csp_jax.data.datasets import load_csv, load_split
from csp_jax.data.sources import download_split
from csp_jax.data.species import draw_multipliers, expanded_species

__all__ = ["CrystalDataset", "download_split", "draw_multipliers", "expanded_species", "load_csv",
           "load_split"]
