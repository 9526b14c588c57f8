"""Niggli reduction and R(X, L): agreement with pymatgen, invariances, gradients.

Tests `csp_jax.geometry.niggli`.
"""
import math
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from csp_jax.geometry.niggli import niggli_reduce, reduce_crystal

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


def centred_lattice(rng):
    """[3, 3] a primitive basis of a random C-, I- or F-centred orthorhombic or monoclinic lattice.

    Their Niggli cells lie on the boundaries of steps A5-A8 (e.g. 2 b.c = b.b),
    where the algorithm's tie rules pick the cell.
    """
    a, b, c = rng.uniform(3, 8, 3)
    beta = 90.0 if rng.uniform() < 0.5 else rng.uniform(95, 115)
    conventional = Lattice.monoclinic(a, b, c, beta).matrix
    centring = [
        [[0.5, 0.5, 0], [-0.5, 0.5, 0], [0, 0, 1]],  # C
        [[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]],  # I
        [[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]],  # F
    ][rng.integers(3)]
    return np.array(centring) @ conventional


def boundary_lattice(rng):
    """[3, 3] a lattice whose Niggli cell has one equality of the reduced-cell conditions.

    A random reduced Gram matrix gets one of A = B, B = C, |E| = B, |N| = A,
    |Y| = A or A + B + E + N + Y = 0 imposed, so that the tie rules of
    Grosse-Kunstleve et al. decide the answer; the lattice is its Cholesky factor.
    """
    while True:
        base = Lattice.from_parameters(*rng.uniform(3, 8, 3), *rng.uniform(60, 120, 3))
        g = gram(base.get_niggli_reduced_lattice().matrix)
        A, B = g[0, 0], g[1, 1]
        E, N, Y = 2 * g[1, 2], 2 * g[0, 2], 2 * g[0, 1]
        which = rng.integers(6)
        if which == 0:
            g[1, 1] = A
        elif which == 1:
            g[2, 2] = B
        elif which == 2:
            g[1, 2] = g[2, 1] = np.copysign(B, E) / 2
        elif which == 3:
            g[0, 2] = g[2, 0] = np.copysign(A, N) / 2
        elif which == 4:
            g[0, 1] = g[1, 0] = np.copysign(A, Y) / 2
        else:
            g[1, 2] = g[2, 1] = -(A + B + N + Y) / 2
        if np.linalg.eigvalsh(g).min() > 0.5:
            return np.linalg.cholesky(g)


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
    """[NUM_CELLS, 3, 3] float64 skewed cells: Gaussian (2/5), generic (1/5), on ties (2/5).

    The tie cells are mostly `boundary_lattice`s, the rest symmetric and centred ones.
    """
    gaussian = spec_initial_lattices(rng, 2 * NUM_CELLS // 5)
    generic = [
        Lattice.from_parameters(*rng.uniform(2, 10, 3), *rng.uniform(70, 110, 3)).matrix
        for _ in range(NUM_CELLS // 5)
    ]
    symmetric = [lattice.matrix for lattice in symmetric_lattices()]
    tied = (
        [symmetric[i % len(symmetric)] for i in range(NUM_CELLS // 20)]
        + [centred_lattice(rng) for _ in range(NUM_CELLS // 20)]
        + [boundary_lattice(rng) for _ in range(3 * NUM_CELLS // 10)]
    )
    skewed = [random_unimodular(rng) @ cell for cell in generic + tied]
    return np.concatenate([gaussian, np.array(skewed)])


def gram(lattices):
    """[..., 3, 3] Gram matrices of row-vector lattices."""
    return lattices @ np.swapaxes(lattices, -1, -2)


class _Found(Exception):
    """Carries the Niggli cell pymatgen found, out of `get_niggli_reduced_lattice`."""


def _raise_found(self, other_lattice, *args, **kwargs):
    raise _Found(other_lattice)


def pymatgen_niggli_gram(lattices):
    """[B, 3, 3] Gram matrices of pymatgen's Niggli cells.

    Taken where `get_niggli_reduced_lattice` hands its reduced parameters to
    `find_mapping`: that last step only looks for vectors of the input that
    match them to within 1 degree, so on a tie boundary the matrix it returns
    can be a different cell with the same lengths.
    """
    found = []
    with mock.patch.object(Lattice, "find_mapping", _raise_found):
        for matrix in lattices:
            try:
                Lattice(matrix).get_niggli_reduced_lattice()
            except _Found as cell:
                found.append(gram(cell.args[0].matrix))
    return np.array(found)


def gram_distance(a, b, lattices):
    """[B] max |Gram difference| relative to |det|^(2/3) of the input cells.

    a: [B, 3, 3] lattices; b: [B, 3, 3] Gram matrices.
    """
    scale = np.abs(np.linalg.det(lattices)) ** (2 / 3)
    return np.abs(gram(a) - b).max(axis=(-1, -2)) / scale


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


def check_against_pymatgen(inputs, reduced, rel_tol, min_agreement):
    """Assert that a fraction >= min_agreement of our cells have pymatgen's Niggli Gram matrix
    and that the rest are ties.

    A tie is an equivalent cell: the same sorted lengths and volume as
    pymatgen's, and (checked by the callers for every cell) the Niggli conditions.
    """
    expected = pymatgen_niggli_gram(inputs)
    agree = gram_distance(reduced, expected, inputs) < rel_tol
    assert agree.mean() >= min_agreement, f"agreement {agree.mean():.4f}; differing cells {np.flatnonzero(~agree)}"
    ours, theirs = gram(reduced[~agree]), expected[~agree]
    scale = np.abs(np.linalg.det(inputs[~agree])) ** (2 / 3)
    lengths_gap = np.abs(np.sort(np.diagonal(ours, 0, 1, 2)) - np.sort(np.diagonal(theirs, 0, 1, 2)))
    assert np.all(lengths_gap.max(-1, initial=0) < rel_tol * scale)
    np.testing.assert_allclose(np.linalg.det(ours), np.linalg.det(theirs), rtol=rel_tol)


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
    # Same tolerance tests as pymatgen in float64: every cell must agree, the
    # tie-boundary cells included (their tie rules pick one of equal-length cells).
    check_against_pymatgen(inputs, lattice, rel_tol=1e-6, min_agreement=1.0)
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
    cells = make_cells(np.random.default_rng(1))
    result = jax.jit(jax.vmap(niggli_reduce))(jnp.asarray(cells, jnp.float32))
    assert result.lattice.dtype == jnp.float32 and result.converged.all()
    # Ordinary cells: about 1% of Gaussian draws are nearly flat bases, for
    # which float32 `T @ L` cancels (|T| ~ 1e3) and the reduced cell keeps few
    # digits; they converge (above) but are left out of the comparison.
    ordinary = orthogonality(cells) > 0.01
    reduced = np.asarray(result.lattice, np.float64)[ordinary]
    # float32 rounding may decide a tie the other way.
    check_against_pymatgen(cells[ordinary], reduced, rel_tol=1e-4, min_agreement=0.99)
    assert satisfies_niggli_conditions(reduced, rel_tol=1e-4).all()


def test_failures_are_flagged():
    reduce = jax.jit(niggli_reduce, static_argnames="max_iter")
    skewed = jnp.array([[1.0, 0, 0], [37.0, 1.0, 0], [-52.0, 81.0, 1.0]])
    assert reduce(skewed).converged
    assert not reduce(skewed, max_iter=2).converged
    singular = jnp.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0]])
    assert not reduce(singular).converged
    assert not reduce(jnp.full((3, 3), jnp.nan)).converged
    positions = jnp.zeros((4, 3)).at[0].set(jnp.array([0.3, 0.2, 0.1]))
    positions_red, _, converged = jax.jit(reduce_crystal)(positions, singular)
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

        # Central differences, all perturbed copies in one vmapped call.
        h = 1e-6
        steps_x = h * np.eye(15).reshape(15, 5, 3)
        steps_l = h * np.eye(9).reshape(9, 3, 3)
        moved_x = np.concatenate([x0 + steps_x, x0 - steps_x, np.broadcast_to(x0, (18, 5, 3))])
        moved_l = np.concatenate([np.broadcast_to(l0, (30, 3, 3)), l0 + steps_l, l0 - steps_l])
        values = jax.jit(jax.vmap(objective))(moved_x, moved_l)
        transforms = jax.jit(jax.vmap(niggli_reduce))(jnp.asarray(moved_l)).transform
        assert np.all(transforms == transform)  # no basis change within +-h
        numeric_x = (values[:15] - values[15:30]) / (2 * h)
        numeric_l = (values[30:39] - values[39:]) / (2 * h)
        np.testing.assert_allclose(grad_x, numeric_x.reshape(5, 3), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(grad_l, numeric_l.reshape(3, 3), rtol=1e-6, atol=1e-6)

        # dX_red/dX is the identity; dL_red/dL is T.
        (_, vjp) = jax.vjp(lambda x, lat: reduce_crystal(x, lat)[:2], x0, l0)
        cot_x, cot_l = jnp.asarray(weights_x), jnp.asarray(weights_l)
        back_x, back_l = vjp((cot_x, jnp.zeros((3, 3))))
        np.testing.assert_allclose(back_x, cot_x, atol=1e-12)
        back_x, back_l = vjp((jnp.zeros((5, 3)), cot_l))
        np.testing.assert_allclose(back_x, 0, atol=1e-12)
        np.testing.assert_allclose(back_l, transform.T.astype(jnp.float64) @ cot_l, atol=1e-12)
