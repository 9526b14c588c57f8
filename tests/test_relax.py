"""Relaxing candidates with an interatomic potential: a spring model whose minimum is known,
CHGNet on rock salt, the potential's name resolution and its errors, failing potentials.

Tests `csp_jax.candidates.relax`.
"""
import math
import sys

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_stress
from ase.neighborlist import neighbor_list
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from csp_jax.candidates import relax as relax_module
from csp_jax.candidates.relax import POTENTIALS, Relaxed, calculator, relax

STIFFNESS, REST, CUTOFF = 1.0, 2.5, 3.0  # eV/A^2, A, A
FCC_A = math.sqrt(2) * REST  # the springs' fcc minimum: every nearest-neighbour spring at rest


class Springs(Calculator):
    """Harmonic springs (STIFFNESS, REST) between atoms closer than CUTOFF: fcc with lattice
    constant FCC_A has energy 0, no forces and no stress (its second neighbours, at FCC_A,
    lie beyond the cutoff)."""

    implemented_properties = ["energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        i, d, vectors = neighbor_list("idD", self.atoms, CUTOFF)  # every pair twice
        tension = STIFFNESS * (d - REST)  # [pairs] eV/A
        pull = (tension / d)[:, None] * vectors  # [pairs, 3], on atom i towards its neighbour
        forces = np.zeros((len(self.atoms), 3))
        np.add.at(forces, i, pull)
        stress = 0.5 * pull.T @ vectors / self.atoms.get_volume()  # [3, 3] eV/A^3
        self.results = {"energy": 0.25 * STIFFNESS * np.sum((d - REST) ** 2), "forces": forces,
                        "stress": stress.flat[[0, 4, 8, 5, 2, 1]]}


class Raises(Calculator):
    implemented_properties = ["energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        raise RuntimeError("the potential cannot evaluate this\nsecond line")


class NotFinite(Springs):
    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] = math.nan


def fcc(a: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Cu"], [[0, 0, 0]])


def strained(structure: Structure, seed: int = 0, cell: float = 0.05, positions: float = 0.1):
    """`structure` with its volume 10% larger, its cell strained by ~`cell` and its atoms
    moved by ~`positions` A."""
    rng = np.random.default_rng(seed)
    lattice = structure.lattice.matrix @ (np.eye(3) + cell * rng.uniform(-1, 1, (3, 3)))
    lattice *= (1.1 * structure.volume / abs(np.linalg.det(lattice))) ** (1 / 3)
    moved = structure.cart_coords + positions * rng.standard_normal((len(structure), 3))
    fractional = np.linalg.solve(structure.lattice.matrix.T, moved.T).T
    return Structure(lattice, structure.species, fractional)


def test_the_springs_stress_is_the_derivative_of_their_energy():
    atoms = AseAtomsAdaptor.get_atoms(strained(fcc(FCC_A)))
    atoms.calc = Springs()
    np.testing.assert_allclose(atoms.get_stress(),
                               calculate_numerical_stress(atoms, force_consistent=False), atol=1e-6)


def test_a_strained_crystal_relaxes_to_the_known_minimum():
    start = strained(fcc(FCC_A))
    result = relax(start, Springs(), fmax=0.01, max_steps=500)
    assert isinstance(result, Relaxed)
    assert result.converged and result.steps > 0 and result.message == ""
    assert abs(result.energy_per_atom) < 1e-3  # eV/atom; the minimum is 0
    assert result.structure.volume == pytest.approx(FCC_A ** 3, rel=0.01)
    assert StructureMatcher().fit(result.structure, fcc(FCC_A))
    assert getattr(result.structure, "calc", None) is None  # the calculator stays behind
    assert result.seconds > 0


def test_one_step_is_not_enough():
    result = relax(strained(fcc(FCC_A)), Springs(), fmax=0.01, max_steps=1)
    assert (result.converged, result.steps) == (False, 1)
    assert math.isfinite(result.energy_per_atom) and result.energy_per_atom > 0


@pytest.mark.parametrize("calc, reason", [
    (Raises(), "RuntimeError: the potential cannot evaluate this"),
    (NotFinite(), "the energy is nan"),
])
def test_a_failing_potential_gives_a_nan_energy_not_an_exception(calc, reason):
    start = strained(fcc(FCC_A))
    result = relax(start, calc, fmax=0.01, max_steps=2)
    assert math.isnan(result.energy_per_atom) and not result.converged
    assert result.message == reason
    assert result.structure is start


def test_a_calculator_passes_through_and_an_import_path_is_built_once():
    springs = Springs()
    assert calculator(springs) is springs
    built = calculator("ase.calculators.emt:EMT")
    assert isinstance(built, EMT) and calculator("ase.calculators.emt:EMT") is built


@pytest.mark.parametrize("potential",
                         ["mace", "ase.calculators.emt:NoSuchFactory", "no_such_package.x:f"])
def test_an_unknown_potential_is_one_line(potential):
    with pytest.raises(ValueError) as error:
        calculator(potential)
    assert "\n" not in str(error.value) and repr(potential) in str(error.value)
    if ":" not in potential:
        assert all(name in str(error.value) for name in POTENTIALS)


@pytest.mark.parametrize("potential, modules, install", [
    ("sevennet", ["sevenn"], "pip install sevenn"),
    ("chgnet", ["chgnet", "chgnet.model", "chgnet.model.dynamics"], 'pip install "csp_jax[relax]"'),
])
def test_a_missing_potential_names_what_to_install(monkeypatch, potential, modules, install):
    relax_module._built.cache_clear()
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError) as error:
        calculator(potential)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"potential {potential!r} is not installed")
    assert message.endswith(install)


@pytest.mark.slow  # CHGNet loaded (torch) and a relaxation: 4 s on a quiet 2-core CPU, 40 s on a busy one
def test_chgnet_relaxes_stretched_rock_salt_back():
    pytest.importorskip("chgnet", reason="chgnet is not installed (pip install \"csp_jax[relax]\")")
    chgnet = calculator("chgnet")
    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                          [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    stretched = rock_salt.copy()
    stretched.scale_lattice(1.1 * rock_salt.volume)
    reference = relax(rock_salt, chgnet, fmax=0.01, max_steps=150)
    result = relax(stretched, chgnet, fmax=0.01, max_steps=150)
    assert reference.converged and result.converged and result.steps > 0
    assert StructureMatcher().fit(result.structure, rock_salt)
    # the cube root of the primitive cell's volume is proportional to the lattice constant
    assert result.structure.volume ** (1 / 3) == pytest.approx(
        reference.structure.volume ** (1 / 3), rel=0.02)
    start = relax(stretched, chgnet, fmax=0.01, max_steps=0)
    assert result.energy_per_atom < start.energy_per_atom
