"""The evaluation's sample file: the sampled crystals of one split in one `.npz`.

Padded arrays (see `save_samples`), so the metrics can be recomputed without
sampling again; `sample_at` takes one sample out of the `[T, K, N]` batch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from csp_jax.geometry.crystal import Crystal


def save_samples(path, samples: Crystal, energies, material_ids: Sequence[str]) -> None:
    """Store the samples of one split in a compressed `.npz`.

    samples: `Crystal` with species [T, K, N], positions [T, K, N, 3], lattice [T, K, 3, 3]
             (T test crystals, K samples each); energies: [T, K]; material_ids: [T].
    """
    species = np.asarray(samples.species, np.int32)
    energies = np.asarray(energies)
    material_ids = np.asarray(material_ids, dtype=str)
    if species.ndim != 3 or energies.shape != species.shape[:2] or material_ids.shape != species.shape[:1]:
        raise ValueError(f"inconsistent shapes: species {species.shape}, energies {energies.shape}, "
                         f"material_ids {material_ids.shape}; expected [T, K, N], [T, K], [T]")
    np.savez_compressed(path, species=species, positions=np.asarray(samples.positions),
                        lattice=np.asarray(samples.lattice), energies=energies,
                        material_ids=material_ids)


def load_samples(path) -> tuple[Crystal, np.ndarray, np.ndarray]:
    """Read a file of `save_samples`: (samples [T, K, N], energies [T, K], material_ids [T]).

    One sample as a pymatgen Structure: `crystal.to_structure(sample_at(samples, t, k))`.
    """
    with np.load(path) as f:
        return Crystal(f["species"], f["positions"], f["lattice"]), f["energies"], f["material_ids"]


def sample_at(samples: Crystal, t: int, k: int) -> Crystal:
    """Sample k of test crystal t from a `[T, K, N]` batch, as numpy arrays."""
    return Crystal(*(np.asarray(x)[t, k] for x in (samples.species, samples.positions, samples.lattice)))
