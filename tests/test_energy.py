"""The energy H of SPEC §2: exact size, invariances, continuity, finite gradients.

Tests `csp_jax.energy.continuousp` and `csp_jax.energy.network` (spectral normalisation), with
`csp_jax.geometry.niggli`.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import special_ortho_group

from csp_jax.config import get_config
from csp_jax.geometry.crystal import Crystal
from csp_jax.energy.continuousp import EnergyModel, density_penalty, num_parameters
from csp_jax.geometry.neighbors import NeighborCapacity, cutoff_radius
from helpers import perovskite, random_crystal

CAP = NeighborCapacity(max_images=729, max_edges=6000)

pytestmark = pytest.mark.usefixtures("x64")  # float64 throughout


@pytest.fixture(scope="module")
def model():
    return EnergyModel.from_config(get_config("perov5").model)


@pytest.fixture(scope="module")
def variables64(model):
    variables = model.init(jax.random.key(3))
    return jax.tree.map(lambda x: np.asarray(x, np.float64), variables)


@functools.partial(jax.jit, static_argnums=(0, 3))
def jit_energy(model, variables, crystal, capacity):
    return model.energy(variables, crystal, capacity)


def energy(model, variables, crystal, capacity=CAP):
    e, nbrs = jit_energy(model, variables, jax.tree.map(jnp.asarray, crystal), capacity)
    assert not bool(nbrs.overflow)
    return float(e)


@pytest.mark.parametrize("name,count", [("perov5", 23297), ("mp20", 168705), ("mpts52", 168705),
                                        ("mp20_cpu", 23297), ("mpts52_cpu", 23297)])
def test_parameter_count(name, count):
    model = EnergyModel.from_config(get_config(name).model)
    assert num_parameters(model.init(jax.random.key(0))) == count


def test_density_penalty_value():
    c = perovskite(3.9)
    rho = 5 / 3.9**3
    assert float(density_penalty(c, 0.05, 1.0)) == pytest.approx(np.log(rho / 0.05) ** 2)


def make_supercell(crystal, reps):
    n = int(np.sum(crystal.species > 0))
    species, x, lattice = crystal.species[:n], crystal.positions[:n], crystal.lattice
    shifts = np.array([(a, b, c) for a in range(reps[0]) for b in range(reps[1]) for c in range(reps[2])])
    pos = np.concatenate([x + s @ lattice for s in shifts])
    return Crystal(np.tile(species, len(shifts)), pos, np.diag(reps) @ lattice)


def transformations(rng):
    """Name -> function mapping a crystal to an equivalent description of it."""
    rot = special_ortho_group.rvs(3, random_state=1)
    refl = np.diag([1.0, -1.0, 1.0]) @ rot
    unimodular = np.array([[1, 2, 0], [0, 1, 0], [-1, -1, 1]], np.float64)  # det 1
    flip = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], np.float64)  # det -1

    def perm(c):
        n = int(np.sum(c.species > 0))
        p = np.concatenate([rng.permutation(n), np.arange(n, len(c.species))])
        return Crystal(c.species[p], c.positions[p], c.lattice)

    def rewrap(c, t):
        lattice = t @ c.lattice
        frac = np.linalg.solve(lattice.T, c.positions.T).T
        return Crystal(c.species, (frac % 1.0) @ lattice, lattice)

    return {
        "translation": lambda c: c.replace(positions=c.positions + np.array([0.3, -1.7, 2.2])),
        "rotation": lambda c: Crystal(c.species, c.positions @ rot, c.lattice @ rot),
        "reflection": lambda c: Crystal(c.species, c.positions @ refl, c.lattice @ refl),
        "permutation": perm,
        "basis_change": lambda c: c.replace(lattice=unimodular @ c.lattice),
        "basis_change_rewrapped": lambda c: rewrap(c, unimodular),
        "basis_flip": lambda c: rewrap(c, flip),
        "lattice_translation": lambda c: c.replace(
            positions=c.positions + rng.integers(-2, 3, c.positions.shape) @ c.lattice),
        "supercell_2x1x1": lambda c: make_supercell(c, (2, 1, 1)),
        "supercell_1x2x2": lambda c: make_supercell(c, (1, 2, 2)),
    }


def invariance_cases():
    """Every transformation; the supercells (new shapes to compile) in the slow lane."""
    return [pytest.param(name, marks=pytest.mark.slow) if name.startswith("supercell") else name
            for name in transformations(np.random.default_rng(0))]


@pytest.mark.parametrize("name", invariance_cases())
def test_invariance(model, variables64, name):
    rng = np.random.default_rng(7)
    transform = transformations(rng)[name]
    for crystal in (perovskite(), random_crystal(rng, 4, skew=0.2), random_crystal(rng, 3)):
        e0 = energy(model, variables64, crystal)
        e1 = energy(model, variables64, transform(crystal), NeighborCapacity(2197, 12000))
        assert abs(e1 - e0) <= 1e-5 * max(1.0, abs(e0)), (name, e0, e1)


def test_energy_depends_on_structure(model, variables64):
    """The invariance tests are not vacuous: a real change moves the energy."""
    crystal = perovskite()
    moved = crystal.replace(positions=crystal.positions + np.array([[0.2, 0, 0]] + [[0, 0, 0]] * 4))
    assert abs(energy(model, variables64, moved) - energy(model, variables64, crystal)) > 1e-6


def pair_beyond_cutoff(crystal):
    """(i, j, shift, distance) of the closest pair image just beyond the cutoff."""
    cutoff = float(cutoff_radius(crystal))
    x, lattice = crystal.positions, crystal.lattice
    best = None
    r = range(-4, 5)
    for i in range(len(x)):
        for j in range(len(x)):
            if i == j:
                continue
            for s in [(a, b, c) for a in r for b in r for c in r]:
                d = np.linalg.norm(x[j] + np.array(s) @ lattice - x[i])
                if d > cutoff and (best is None or d < best[3]):
                    best = (i, j, np.array(s, float), d)
    return best, cutoff


def test_continuous_when_pair_crosses_cutoff(model, variables64):
    """Moving atom j across the cutoff of pair (i, j): the energy change vanishes with the move."""
    rng = np.random.default_rng(11)
    crystal = random_crystal(rng, 3, skew=0.1)
    (i, j, s, d), cutoff = pair_beyond_cutoff(crystal)
    direction = crystal.positions[j] + s @ crystal.lattice - crystal.positions[i]
    direction /= np.linalg.norm(direction)
    jumps = []
    for delta in (1e-2, 1e-3, 1e-4, 1e-5):
        energies = []
        for target in (cutoff - delta, cutoff + delta):
            x = crystal.positions.copy()
            x[j] += (target - d) * direction
            energies.append(energy(model, variables64, crystal.replace(positions=x)))
        jumps.append(abs(energies[1] - energies[0]))
    # Continuity: the jump shrinks at least linearly with the crossing distance.
    assert jumps[-1] < 1e-6
    assert all(b < 0.2 * a for a, b in zip(jumps, jumps[1:])), jumps


@pytest.mark.slow  # its own program compiled: about 7 s
def test_gradients_match_finite_differences(model, variables64):
    rng = np.random.default_rng(5)
    crystal = jax.tree.map(jnp.asarray, random_crystal(rng, 4, max_atoms=6, skew=0.2))

    @jax.jit
    def h(x, lattice):
        return model.energy(variables64, crystal.replace(positions=x, lattice=lattice), CAP)[0]

    gx, gl = jax.grad(h, argnums=(0, 1))(crystal.positions, crystal.lattice)
    assert np.all(gx[4:] == 0)  # padding atoms do not enter the energy
    eps = 1e-6
    for arr_index, grad, indices in ((0, gx, [(0, 0), (1, 2), (3, 1)]), (1, gl, [(0, 0), (1, 2), (2, 1)])):
        for idx in indices:
            args = [np.array(crystal.positions), np.array(crystal.lattice)]
            args[arr_index][idx] += eps
            plus = float(h(*args))
            args[arr_index][idx] -= 2 * eps
            minus = float(h(*args))
            assert float(grad[idx]) == pytest.approx((plus - minus) / (2 * eps), rel=1e-5, abs=1e-7)


def test_gradients_finite_with_coincident_atoms(model, variables64):
    rng = np.random.default_rng(2)
    crystal = random_crystal(rng, 4, max_atoms=5)
    x = crystal.positions.copy()
    x[1] = x[0]  # coincident pair: no edge, finite gradient
    x[2] = x[0] + 1e-3  # closer than 0.01 A
    crystal = jax.tree.map(jnp.asarray, crystal.replace(positions=x))
    gx, gl = jax.jit(jax.grad(lambda x, lattice: model.energy(
        variables64, crystal.replace(positions=x, lattice=lattice), CAP)[0], argnums=(0, 1)))(
            crystal.positions, crystal.lattice)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gl))


def test_float32_matches_float64(model, variables64):
    rng = np.random.default_rng(9)
    crystal = random_crystal(rng, 5)
    e64 = energy(model, variables64, crystal)
    with jax.enable_x64(False):
        v32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), variables64)
        e32, _ = jit_energy(model, v32, jax.tree.map(lambda x: jnp.asarray(x) if x.dtype.kind == "i"
                                                      else jnp.asarray(x, jnp.float32), crystal), CAP)
    assert float(e32) == pytest.approx(e64, rel=1e-4, abs=1e-5)


def test_power_iteration_changes_only_spectral_state(model):
    variables = model.init(jax.random.key(0))
    updated = model.training_variables(variables)
    assert jax.tree.structure(updated) == jax.tree.structure(variables)
    assert updated["params"] is variables["params"]
    u0 = variables["spectral"]["SpectralLinear_0"]["uv"]["u"]
    u1 = updated["spectral"]["SpectralLinear_0"]["uv"]["u"]
    assert np.linalg.norm(np.asarray(u1)) == pytest.approx(1.0, rel=1e-5)
    assert np.all(np.isfinite(u1)) and u0.shape == u1.shape


def test_continuous_through_niggli_basis_change(model, variables64):
    """H(R(x(t))) is continuous where the Niggli-reduced basis of L(t) jumps."""
    from csp_jax.geometry.niggli import niggli_reduce, reduce_crystal

    rng = np.random.default_rng(4)
    base = random_crystal(rng, 3, skew=0.0)
    frac = np.asarray(base.frac)

    def described(t):
        # a, b with b . a / |a|^2 = t: the reduced basis switches from b to b - a at t = 1/2.
        lattice = np.array([[4.0, 0.0, 0.0], [4.0 * t, 4.5, 0.0], [0.3, 0.2, 5.0]])
        x, lat, converged = reduce_crystal(jnp.asarray(frac @ lattice), jnp.asarray(lattice))
        assert bool(converged)
        return Crystal(base.species, np.asarray(x), np.asarray(lat)), lattice

    transforms = [np.asarray(niggli_reduce(jnp.asarray(described(t)[1])).transform) for t in (0.49, 0.51)]
    assert not np.array_equal(*transforms)  # the basis really changes
    jumps = []
    for delta in (1e-2, 1e-3, 1e-4):
        below, above = (energy(model, variables64, described(0.5 + s * delta)[0]) for s in (-1, 1))
        jumps.append(abs(above - below))
    assert jumps[-1] < 1e-4 and jumps[2] < 0.2 * jumps[0], jumps
