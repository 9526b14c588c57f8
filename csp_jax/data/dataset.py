"""`CrystalDataset`: the padded crystals of one CSV file, as numpy arrays."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csp_jax.geometry.crystal import Crystal, to_structure


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
