"""Niggli reduction of a lattice and the reduction R(X, L) of a crystal (SPEC §3).

`niggli_reduce` finds the integer unimodular T with `T @ L` Niggli-reduced, by
the Krivy-Gruber algorithm with the tolerance tests of Grosse-Kunstleve, Sauter
& Adams (2004), as in pymatgen's `Lattice.get_niggli_reduced_lattice`. It is
written for one lattice (`[3, 3]`, rows are the vectors a, b, c) and is jit-able
and vmappable: a bounded `lax.while_loop` applies one step per iteration and
reports `converged` as data.

Two deliberate differences from the textbook loop, neither of which changes the
reduced cell (the Niggli cell is unique; the loop stops only once every
condition holds):
- Steps A5-A7 subtract the nearest integer multiple of a vector rather than
  one copy of it (at least one, so the tie cases are unchanged). Skewed cells,
  such as SPEC §3's Gaussian initial lattices, then reduce in a few dozen
  iterations with no separate LLL pass.
- The Gram matrix is recomputed from `T @ L` each iteration instead of being
  updated in place, so rounding errors do not accumulate in float32; and the
  tolerance is raised to the rounding error of those entries where that is
  larger (skewed float32 inputs only), so that tie tests cannot contradict one
  another and cycle.

Handedness: every Krivy-Gruber step has det +1, and the returned cell is made
right-handed (`det(T @ L) > 0`) by negating T when needed, as pymatgen does. So
`det T = sign(det L)`; for the sampler only `|det T| = 1` matters.

T is computed from `stop_gradient(L)` and applied as `T @ L`, so gradients flow
to L through the matrix product only.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_MAX_ITER = 200
RELATIVE_TOL = 1e-5
MAX_MULTIPLE = 2**20  # bound on one A5-A7 step's multiple, keeps T in int32

# Transposed step matrices M^T of pymatgen's `G <- M^T G M`; here `T <- M^T T`.
# NumPy constants, so that importing this module creates no device arrays.
_A1 = np.array([[0, -1, 0], [-1, 0, 0], [0, 0, -1]], np.int32)  # swap a, b
_A2 = np.array([[-1, 0, 0], [0, 0, -1], [0, -1, 0]], np.int32)  # swap b, c
_A8 = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1]], np.int32)  # c <- a + b + c
_EYE = np.eye(3, dtype=np.int32)


class NiggliResult(NamedTuple):
    """Output of `niggli_reduce` for one lattice.

    lattice:   [3, 3] float, the reduced lattice `T @ L` (rows a, b, c),
               differentiable in L.
    transform: [3, 3] int32, T, integer with det +-1 (no gradient).
    converged: [] bool, the loop finished within `max_iter`, the result is
               finite with nonzero volume, and det T = +-1.
    """

    lattice: jax.Array
    transform: jax.Array
    converged: jax.Array


def _sign_flip(l, m, n):
    """Steps A3/A4: diag(i, j, k) making the three off-diagonal signs all + or all -.

    l, m, n: [] int32 in {-1, 0, 1}, signs of E, N, Y (0 within tolerance).
    Returns [3, 3] int32, a diagonal matrix with det +1.
    """
    all_positive = l * m * n == 1
    i = jnp.where(all_positive, jnp.where(l == -1, -1, 1), jnp.where(l == 1, -1, 1))
    j = jnp.where(all_positive, jnp.where(m == -1, -1, 1), jnp.where(m == 1, -1, 1))
    k = jnp.where(all_positive, jnp.where(n == -1, -1, 1), jnp.where(n == 1, -1, 1))
    odd = i * j * k == -1  # only possible when some sign is 0: flip that one
    flip_k = odd & (n == 0)
    flip_j = odd & ~flip_k & (m == 0)
    flip_i = odd & ~flip_k & ~flip_j & (l == 0)
    k = jnp.where(flip_k, -1, k)
    j = jnp.where(flip_j, -1, j)
    i = jnp.where(flip_i, -1, i)
    return jnp.diag(jnp.stack([i, j, k]).astype(jnp.int32))


def _subtract_multiple(target: int, source: int, twice_dot, norm_sq):
    """Steps A5-A7: row `target` <- row `target` - k row `source`.

    twice_dot: [] float, 2 v_source . v_target; norm_sq: [] float, |v_source|^2.
    k = sign(twice_dot) * max(1, round(|twice_dot| / (2 norm_sq))).
    Returns [3, 3] int32, the unimodular step matrix.
    """
    multiple = jnp.maximum(1.0, jnp.round(jnp.abs(twice_dot) / (2.0 * norm_sq)))
    multiple = jnp.minimum(multiple, MAX_MULTIPLE).astype(jnp.int32)
    k = jnp.where(twice_dot > 0, multiple, -multiple)
    return jnp.asarray(_EYE).at[target, source].set(-k)


def _step(gram, eps):
    """One Krivy-Gruber step from the Gram matrix of the current basis.

    gram: [3, 3] float; eps: [] float tolerance.
    Returns (step [3, 3] int32 with `T <- step @ T`, done [] bool: no step applies).
    """
    A, B, C = gram[0, 0], gram[1, 1], gram[2, 2]
    E, N, Y = 2 * gram[1, 2], 2 * gram[0, 2], 2 * gram[0, 1]

    def sign(x):
        return jnp.where(jnp.abs(x) < eps, 0, jnp.where(x > 0, 1, -1)).astype(jnp.int32)

    flip = _sign_flip(sign(E), sign(N), sign(Y))
    s = E + N + Y + A + B
    conditions = jnp.stack([
        (B + eps < A) | ((jnp.abs(A - B) < eps) & (jnp.abs(E) > jnp.abs(N) + eps)),
        (C + eps < B) | ((jnp.abs(B - C) < eps) & (jnp.abs(N) > jnp.abs(Y) + eps)),
        jnp.any(flip != _EYE),
        (jnp.abs(E) > B + eps)
        | ((jnp.abs(E - B) < eps) & (Y - eps > 2 * N))
        | ((jnp.abs(E + B) < eps) & (-eps > Y)),
        (jnp.abs(N) > A + eps)
        | ((jnp.abs(A - N) < eps) & (Y - eps > 2 * E))
        | ((jnp.abs(A + N) < eps) & (-eps > Y)),
        (jnp.abs(Y) > A + eps)
        | ((jnp.abs(A - Y) < eps) & (N - eps > 2 * E))
        | ((jnp.abs(A + Y) < eps) & (-eps > N)),
        (-eps > s) | ((jnp.abs(s) < eps) & (eps < Y + 2 * (A + N))),
    ])
    steps = jnp.stack([
        _A1,
        _A2,
        flip,
        _subtract_multiple(2, 1, E, B),
        _subtract_multiple(2, 0, N, A),
        _subtract_multiple(1, 0, Y, A),
        _A8,
    ])
    done = ~jnp.any(conditions)
    return jnp.where(done, _EYE, steps[jnp.argmax(conditions)]), done


def niggli_reduce(lattice: jax.Array, eps=None, max_iter: int = DEFAULT_MAX_ITER) -> NiggliResult:
    """Niggli-reduce one lattice.

    lattice:  [3, 3] float, rows are the lattice vectors (any handedness).
    eps:      tolerance on Gram-matrix entries (Angstrom^2 scale, as in
              pymatgen); default `1e-5 * |det L|^(1/3)` (SPEC §3).
    max_iter: cap on loop iterations; hitting it leaves `converged` False.
    Returns a `NiggliResult` (lattice [3, 3], transform [3, 3] int32,
    converged [] bool); the reduced lattice is right-handed.
    """
    fixed = jax.lax.stop_gradient(lattice)
    dtype = fixed.dtype
    volume = jnp.abs(jnp.linalg.det(fixed))
    if eps is None:
        eps = RELATIVE_TOL * jnp.cbrt(volume)
    eps = jnp.asarray(eps, dtype)

    row_norms = jnp.linalg.norm(fixed, axis=1)
    rounding = 4 * jnp.finfo(dtype).eps

    def keep_going(state):
        iteration, _, done = state
        return ~done & (iteration < max_iter)

    def body(state):
        iteration, transform, _ = state
        vectors = transform.astype(dtype) @ fixed
        # Gram entries carry a rounding error of about rounding * bound * |v|;
        # tests finer than that would contradict each other and cycle.
        bound = jnp.abs(transform).astype(dtype) @ row_norms
        noise = rounding * jnp.max(bound) * jnp.max(jnp.linalg.norm(vectors, axis=1))
        step, done = _step(vectors @ vectors.T, jnp.maximum(eps, noise))
        return iteration + 1, step @ transform, done

    init = (jnp.zeros((), jnp.int32), _EYE, jnp.zeros((), bool))
    _, transform, done = jax.lax.while_loop(keep_going, body, init)
    transform = jnp.where(jnp.linalg.det(transform.astype(dtype) @ fixed) < 0, -transform, transform)
    transform = jax.lax.stop_gradient(transform)
    reduced = transform.astype(dtype) @ lattice
    unimodular = jnp.abs(jnp.round(jnp.linalg.det(transform.astype(dtype)))) == 1
    converged = done & unimodular & (volume > 0) & jnp.all(jnp.isfinite(reduced))
    return NiggliResult(reduced, transform, converged)


def reduce_crystal(positions: jax.Array, lattice: jax.Array, max_iter: int = DEFAULT_MAX_ITER):
    """R(X, L) of SPEC §3: Niggli-reduce L, then wrap X into the reduced cell.

    positions: [N, 3] float, Cartesian (padding rows allowed; they stay finite).
    lattice:   [3, 3] float, rows are the lattice vectors.
    Returns (positions_red [N, 3], lattice_red [3, 3], converged [] bool).

    `X_red = X - floor(F) L_red` with `F = X L_red^-1`, which equals
    `(F - floor F) L_red`; the floor and T carry no gradient, so
    dX_red/dX is the identity and L enters only through `T @ L`. Where F is not
    finite (a singular lattice, flagged by `converged`) nothing is shifted.
    """
    result = niggli_reduce(lattice, max_iter=max_iter)
    frac = jnp.linalg.solve(result.lattice.T, positions.T).T
    shift = jax.lax.stop_gradient(jnp.floor(frac))
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    return positions - shift @ result.lattice, result.lattice, result.converged
