"""Niggli reduction and R(X, L): agreement with pymatgen, invariances, gradients."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from csp_jax.niggli import niggli_reduce, reduce_crystal

NUM_CELLS = 2000


def spec_initial_lattices(rng, count, rho0=0.05):
    """[count, 3, 3] lattices `c G` of SPEC §3's initialisation, n atoms in 1..20."""
    n = rng.integers(1, 21, count)
    c = (n / (2 * math.sqrt(2 / math.pi)) / rho0) ** (1 / 3)
    return c[:, None, None] * rng.standard_normal((count, 3, 3))


def random_unimodular(rng, steps=8, max_multiple=3):
    """[3, 3] int, a product of random elementary integer row operations."""
    transform = np.eye(3, dtype=int)
    for _ in range(steps):
        i, j = rng.choice(3, 2, replace=False)
        elementary = np.eye(3, dtype=int)
        elementary[i, j] = rng.integers(-max_multiple, max_multiple + 1)
        transform = elementary @ transform
    return transform


def symmetric_lattices():
    """Lattices whose Niggli cells sit on tie boundaries of the algorithm."""
    return [
        Lattice.cubic(4.0),
        Lattice.from_parameters(4, 4, 4, 60, 60, 60),  # fcc primitive
        Lattice.from_parameters(4, 4, 4, 109.4712206, 109.4712206, 109.4712206),  # bcc primitive
        Lattice.hexagonal(3.0, 5.0),
        Lattice.tetragonal(3.0, 6.0),
        Lattice.rhombohedral(5.0, 70.0),
        Lattice.orthorhombic(3.0, 4.0, 5.0),
        Lattice.monoclinic(3.0, 4.0, 5.0, 100.0),
    ]


def make_cells(rng):
    """[NUM_CELLS, 3, 3] float64: Gaussian, skewed generic and skewed symmetric cells."""
    gaussian = spec_initial_lattices(rng, NUM_CELLS // 2)
    generic = [
        random_unimodular(rng)
        @ Lattice.from_parameters(*rng.uniform(2, 10, 3), *rng.uniform(70, 110, 3)).matrix
        for _ in range(3 * NUM_CELLS // 10)
    ]
    symmetric = symmetric_lattices()
    tied = [
        random_unimodular(rng) @ symmetric[i % len(symmetric)].matrix
        for i in range(NUM_CELLS - len(gaussian) - len(generic))
    ]
    return np.concatenate([gaussian, np.array(generic), np.array(tied)])


def gram(lattices):
    """[..., 3, 3] Gram matrices of row-vector lattices."""
    return lattices @ np.swapaxes(lattices, -1, -2)


def pymatgen_niggli(lattices):
    """[B, 3, 3] pymatgen's Niggli-reduced matrices of the given lattices.

    pymatgen is handed the LLL basis of each lattice (the same lattice, so the
    same Niggli cell): its final `find_mapping` step can take a minute on a
    skewed input basis.
    """
    return np.array([Lattice(Lattice(m).lll_matrix).get_niggli_reduced_lattice().matrix for m in lattices])


def gram_distance(a, b, lattices):
    """[B] max |Gram difference| relative to |det|^(2/3) of the input cells."""
    scale = np.abs(np.linalg.det(lattices)) ** (2 / 3)
    return np.abs(gram(a) - gram(b)).max(axis=(-1, -2)) / scale


def gram_distance_up_to_signs(a, b, lattices):
    """[B] `gram_distance` minimised over sign changes of a's basis vectors."""
    signs = np.array([[1, 1, 1], [-1, 1, 1], [1, -1, 1], [1, 1, -1]])
    return np.min([gram_distance(a * s[:, None], b, lattices) for s in signs], axis=0)


def satisfies_niggli_conditions(lattices, rel_tol):
    """[B] bool, the main Niggli conditions (Krivy & Gruber 1976) up to a tolerance.

    A <= B <= C, |E| <= B, |N| <= A, |Y| <= A, E + N + Y + A + B >= 0, and the
    three off-diagonal terms E, N, Y all positive or all non-positive.
    """
    g = gram(lattices)
    tol = rel_tol * np.abs(np.linalg.det(lattices)) ** (2 / 3)
    A, B, C = g[:, 0, 0], g[:, 1, 1], g[:, 2, 2]
    E, N, Y = 2 * g[:, 1, 2], 2 * g[:, 0, 2], 2 * g[:, 0, 1]
    off_diagonal = np.stack([E, N, Y], 1)
    sign_pattern = np.all(off_diagonal > -tol[:, None], 1) | np.all(off_diagonal < tol[:, None], 1)
    return (
        (A <= B + tol) & (B <= C + tol)
        & (np.abs(E) <= B + tol) & (np.abs(N) <= A + tol) & (np.abs(Y) <= A + tol)
        & (E + N + Y + A + B >= -tol) & sign_pattern
    )


def check_against_pymatgen(inputs, reduced, rel_tol):
    """Assert >= 99% Gram agreement with pymatgen and that every miss is a tie.

    A miss is accepted as a tie between equivalent cells when our cell has the
    same sorted lengths and volume as pymatgen's and equals pymatgen's, or
    pymatgen's reduction of it, up to the signs of its vectors (pymatgen's
    final `find_mapping` matches angles only to within 1 degree, so it may
    return 90 + d for 90 - d).
    """
    expected = pymatgen_niggli(inputs)
    agree = gram_distance(reduced, expected, inputs) < rel_tol
    assert agree.mean() >= 0.99, f"agreement {agree.mean():.4f}"
    misses = np.flatnonzero(~agree)
    if misses.size:
        ours, theirs, cells = reduced[misses], expected[misses], inputs[misses]
        rereduced = pymatgen_niggli(ours)
        equivalent = (gram_distance_up_to_signs(ours, theirs, cells) < rel_tol) | (
            gram_distance_up_to_signs(rereduced, theirs, cells) < rel_tol
        )
        assert equivalent.all(), f"cells {misses[~equivalent]} differ from pymatgen's"
        lengths = np.sort(np.linalg.norm(ours, axis=-1), -1)
        np.testing.assert_allclose(lengths, np.sort(np.linalg.norm(theirs, axis=-1), -1), rtol=math.sqrt(rel_tol))
        np.testing.assert_allclose(
            np.abs(np.linalg.det(ours)), np.abs(np.linalg.det(theirs)), rtol=math.sqrt(rel_tol)
        )


@pytest.fixture(scope="module")
def reduced64():
    """(inputs [B,3,3], lattice [B,3,3], transform [B,3,3], converged [B]) in float64."""
    inputs = make_cells(np.random.default_rng(0))
    with jax.enable_x64(True):
        result = jax.jit(jax.vmap(niggli_reduce))(jnp.asarray(inputs))
        result = jax.tree.map(np.asarray, result)
    return inputs, result.lattice, result.transform, result.converged


def test_niggli_agrees_with_pymatgen(reduced64):
    inputs, lattice, _, converged = reduced64
    assert lattice.shape == (NUM_CELLS, 3, 3) and lattice.dtype == np.float64
    assert converged.all()
    check_against_pymatgen(inputs, lattice, rel_tol=1e-6)
    assert satisfies_niggli_conditions(lattice, rel_tol=1e-6).all()


def test_transform_is_unimodular_and_gives_the_lattice(reduced64):
    inputs, lattice, transform, _ = reduced64
    assert transform.dtype == np.int32 and transform.shape == (NUM_CELLS, 3, 3)
    np.testing.assert_array_equal(np.abs(np.round(np.linalg.det(transform))), 1)
    scale = np.abs(inputs).max(axis=(1, 2), keepdims=True) * np.abs(transform).sum(-1).max(-1)[:, None, None]
    assert np.all(np.abs(transform @ inputs - lattice) <= 1e-12 * scale)
    # Right-handed output: det T carries the input's handedness.
    assert np.all(np.linalg.det(lattice) > 0)
    np.testing.assert_array_equal(np.round(np.linalg.det(transform)), np.sign(np.linalg.det(inputs)))


def test_reduction_is_idempotent(reduced64):
    _, lattice, _, _ = reduced64
    with jax.enable_x64(True):
        again = jax.tree.map(np.asarray, jax.jit(jax.vmap(niggli_reduce))(jnp.asarray(lattice)))
    assert again.converged.all()
    np.testing.assert_allclose(again.lattice, lattice, rtol=0, atol=1e-10 * np.abs(lattice).max())


def orthogonality(lattices):
    """[B] |det L| / product of row lengths, in (0, 1]; small for nearly flat bases."""
    return np.abs(np.linalg.det(lattices)) / np.prod(np.linalg.norm(lattices, axis=-1), -1)


def test_niggli_float32_on_ordinary_cells():
    rng = np.random.default_rng(1)
    gaussian = spec_initial_lattices(rng, 600)
    flagged = jax.jit(jax.vmap(niggli_reduce))(jnp.asarray(gaussian, jnp.float32)).converged
    assert flagged.all()
    # Ordinary cells: about 1% of Gaussian draws are nearly flat, and for those
    # float32 `T @ L` cancels (|T| ~ 1e3) so the reduced cell keeps few digits.
    inputs = gaussian[orthogonality(gaussian) > 0.01][:500]
    near_reduced = [
        random_unimodular(rng, steps=2, max_multiple=1)
        @ Lattice.from_parameters(*rng.uniform(2, 10, 3), *rng.uniform(70, 110, 3)).matrix
        for _ in range(500)
    ]
    inputs = np.concatenate([inputs, np.array(near_reduced)]).astype(np.float32)
    result = jax.jit(jax.vmap(niggli_reduce))(jnp.asarray(inputs))
    assert result.lattice.dtype == jnp.float32 and result.converged.all()
    reduced = np.asarray(result.lattice, np.float64)
    inputs = inputs.astype(np.float64)
    check_against_pymatgen(inputs, reduced, rel_tol=1e-4)
    assert satisfies_niggli_conditions(reduced, rel_tol=1e-4).all()


def test_failures_are_flagged():
    skewed = np.array([[1.0, 0, 0], [37.0, 1.0, 0], [-52.0, 81.0, 1.0]], np.float32)
    assert niggli_reduce(jnp.asarray(skewed)).converged
    assert not niggli_reduce(jnp.asarray(skewed), max_iter=2).converged
    singular = jnp.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0]])
    assert not niggli_reduce(singular).converged
    assert not niggli_reduce(jnp.full((3, 3), jnp.nan)).converged
    positions = jnp.zeros((4, 3)).at[0].set(jnp.array([0.3, 0.2, 0.1]))
    positions_red, _, converged = reduce_crystal(positions, singular)
    assert not converged and jnp.all(jnp.isfinite(positions_red))


def random_crystals(rng, count, num_atoms):
    """(positions [count, N, 3], lattices [count, 3, 3]) float64, positions spread over several cells."""
    lattices = np.array([
        random_unimodular(rng)
        @ Lattice.from_parameters(*rng.uniform(3, 8, 3), *rng.uniform(70, 110, 3)).matrix
        for _ in range(count)
    ])
    frac = rng.uniform(-2, 3, (count, num_atoms, 3))
    return frac @ lattices, lattices


def test_reduce_crystal_only_redescribes_the_crystal():
    rng = np.random.default_rng(2)
    positions, lattices = random_crystals(rng, count=20, num_atoms=6)
    with jax.enable_x64(True):
        out = jax.jit(jax.vmap(reduce_crystal))(jnp.asarray(positions), jnp.asarray(lattices))
        positions_red, lattices_red, converged = jax.tree.map(np.asarray, out)
    assert positions_red.shape == positions.shape and converged.all()
    frac_red = np.linalg.solve(np.swapaxes(lattices_red, 1, 2), np.swapaxes(positions_red, 1, 2))
    assert np.all(frac_red > -1e-9) and np.all(frac_red < 1 + 1e-9)
    shifts = np.linalg.solve(np.swapaxes(lattices_red, 1, 2), np.swapaxes(positions_red - positions, 1, 2))
    np.testing.assert_allclose(shifts, np.round(shifts), atol=1e-8)
    np.testing.assert_allclose(np.abs(np.linalg.det(lattices_red)), np.abs(np.linalg.det(lattices)), rtol=1e-10)
    for x, lat, x_red, lat_red in zip(positions, lattices, positions_red, lattices_red):
        before = Structure(Lattice(lat), ["Si"] * len(x), x, coords_are_cartesian=True)
        after = Structure(Lattice(lat_red), ["Si"] * len(x), x_red, coords_are_cartesian=True)
        np.testing.assert_allclose(after.distance_matrix, before.distance_matrix, atol=1e-8)


def test_reduce_crystal_gradients():
    rng = np.random.default_rng(3)
    positions, lattices = random_crystals(rng, count=1, num_atoms=5)
    weights_x = rng.standard_normal((5, 3))
    weights_l = rng.standard_normal((3, 3))

    def objective(x, lat):
        x_red, lat_red, _ = reduce_crystal(x, lat)
        return jnp.sum(jnp.sin(x_red * weights_x)) + jnp.sum(jnp.sin(lat_red) * weights_l) + jnp.sum(
            (x_red @ lat_red.T) ** 2
        ) / 100

    with jax.enable_x64(True):
        x0, l0 = jnp.asarray(positions[0]), jnp.asarray(lattices[0])
        grad_x, grad_l = jax.jit(jax.grad(objective, argnums=(0, 1)))(x0, l0)
        assert np.all(np.isfinite(grad_x)) and np.all(np.isfinite(grad_l))
        transform = niggli_reduce(l0).transform
        assert not np.array_equal(transform, np.eye(3))  # a real basis change
        h = 1e-6
        for arg, grad in ((0, grad_x), (1, grad_l)):
            base = (x0, l0)[arg]
            numeric = np.zeros(base.shape)
            for index in np.ndindex(base.shape):
                values = []
                for sign in (1, -1):
                    moved = base.at[index].add(sign * h)
                    args = (moved, l0) if arg == 0 else (x0, moved)
                    assert np.array_equal(niggli_reduce(args[1]).transform, transform)
                    values.append(objective(*args))
                numeric[index] = (values[0] - values[1]) / (2 * h)
            np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-6)

        # dX_red/dX is the identity; dL_red/dL is T.
        (_, vjp) = jax.vjp(lambda x, lat: reduce_crystal(x, lat)[:2], x0, l0)
        cot_x, cot_l = jnp.asarray(weights_x), jnp.asarray(weights_l)
        back_x, back_l = vjp((cot_x, jnp.zeros((3, 3))))
        np.testing.assert_allclose(back_x, cot_x, atol=1e-12)
        back_x, back_l = vjp((jnp.zeros((5, 3)), cot_l))
        np.testing.assert_allclose(back_x, 0, atol=1e-12)
        np.testing.assert_allclose(back_l, transform.T.astype(jnp.float64) @ cot_l, atol=1e-12)
