"""A test double of a universal potential, named by import path as a user names their own:
`relax.potential=fake_potential:calculator` (with this folder on the Python path)."""
import numpy as np
from ase.calculators.calculator import Calculator, all_changes

VOLUME_PER_ATOM = 20.0  # A^3: the minimum


class VolumeSpring(Calculator):
    """E = n (V / n - v0)^2 eV, no forces on atoms: the minimum is every cell of v0 A^3 per atom
    (energy per atom 0), and a cell's energy per atom tells how far its volume is from it."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, volume_per_atom: float = VOLUME_PER_ATOM):
        super().__init__()
        self.v0 = volume_per_atom

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n, volume = len(self.atoms), self.atoms.get_volume()
        x = volume / n - self.v0
        # The stress is dE/d(strain) / V: an isotropic strain e changes V by V tr(e).
        self.results = {"energy": n * x**2, "free_energy": n * x**2, "forces": np.zeros((n, 3)),
                        "stress": np.array([2 * x, 2 * x, 2 * x, 0.0, 0.0, 0.0])}


def calculator():
    return VolumeSpring()


SECOND_VOLUME_PER_ATOM = 12.0  # A^3: the minimum of `second`


def second():
    """A second potential (`relax.refine=fake_potential:second`) whose minimum is another volume."""
    return VolumeSpring(SECOND_VOLUME_PER_ATOM)
