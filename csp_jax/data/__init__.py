"""Datasets and the species of training negatives.

- `datasets`: the CDVAE/DiffCSP CSV splits (Perov-5, MP-20, MPTS-52): paths,
  checked downloads, parsing, caching, `CrystalDataset`;
- `species`: `Expand(Reduce(A), j)` with j ~ Geometric for the chains of a
  training batch (SPEC §3, last bullet).
"""
from csp_jax.data.datasets import CrystalDataset, download_split, load_csv, load_split
from csp_jax.data.species import draw_multipliers, expanded_species

__all__ = ["CrystalDataset", "download_split", "draw_multipliers", "expanded_species", "load_csv",
           "load_split"]
