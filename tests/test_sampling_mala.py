"""csp_jax.sampling.mala, the annealed MALA kernel (SPEC §3): random starts, the target
distribution, the Metropolis-Hastings ratio against numpy, segments of one chain, NaN rejection."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csp_jax.geometry.crystal import Crystal
from csp_jax.sampling.mala import annealing_schedule, mala, random_crystal, run_chain
from sampler_stand_ins import NO_OVERFLOW, SPECIES, harmonic_energy, harmonic_energy_fn, identity_reduce


def init_batch(key, init_fn, num_chains, species=SPECIES):
    keys = jax.random.split(key, num_chains)
    return jax.jit(jax.vmap(lambda k: init_fn(random_crystal(k, species, 0.05))))(keys)


def run_chains(keys, states, step_fn, step_sizes, betas):
    """`run_chain` for a batch of chains: (states [B], info [B, K])."""
    run = jax.vmap(lambda k, s: run_chain(k, s, step_fn, step_sizes, betas)[:2])
    return jax.jit(run)(keys, states)


def test_random_crystal_density_and_padding():
    crystals = jax.jit(jax.vmap(lambda k: random_crystal(k, SPECIES, 0.05)))(jax.random.split(jax.random.key(0), 20000))
    assert crystals.positions.shape == (20000, 4, 3) and crystals.lattice.shape == (20000, 3, 3)
    # E|det L| = n / rho0 with n = 3 real atoms; |det G| has a CV of about 1.16.
    mean_volume = float(jnp.mean(crystals.volume))
    assert abs(mean_volume / (3 / 0.05) - 1) < 5 * 1.16 / np.sqrt(20000)
    lattice = np.asarray(crystals.lattice, np.float64)
    frac = np.asarray(crystals.positions, np.float64) @ np.linalg.inv(lattice)
    well_conditioned = np.linalg.cond(lattice) < 1e3  # float32 F L loses the rest
    assert np.mean(well_conditioned) > 0.95
    assert np.all(np.asarray(crystals.positions)[:, 3] == 0)
    assert np.all((frac[well_conditioned, :3] > -1e-3) & (frac[well_conditioned, :3] < 1 + 1e-3))


def test_harmonic_target_mean_and_variance():
    """Fixed alpha, beta: the chain samples exp(-beta E), not the biased Langevin law."""
    num_chains, num_steps, step_size, beta = 512, 200, 0.3, 2.0
    init_fn, step_fn = mala(harmonic_energy_fn, identity_reduce)
    states = init_batch(jax.random.key(1), init_fn, num_chains)
    keys = jax.random.split(jax.random.key(2), num_chains)
    schedule = (jnp.full(num_steps, step_size), jnp.full(num_steps, beta))
    final, info = run_chains(keys, states, step_fn, *schedule)
    assert info.accepted.shape == (num_chains, num_steps)

    variance = 1.0 / beta  # unadjusted Langevin would give 1 / beta * 2 / (2 - alpha beta) = 0.71
    positions = np.asarray(final.crystal.positions)
    lattice_offsets = np.asarray(final.crystal.lattice) - 4.0 * np.eye(3)
    for samples in (positions[:, :3].ravel(), lattice_offsets.ravel()):
        m = samples.size
        assert abs(samples.mean()) < 5 * np.sqrt(variance / m)
        assert abs(samples.var() - variance) < 5 * variance * np.sqrt(2.0 / m)
    assert np.all(positions[:, 3] == 0)  # padding atoms never move
    acceptance = float(jnp.mean(info.acceptance_probability))
    assert 0.3 < acceptance < 0.99  # the Metropolis correction is at work


def sort_and_wrap(positions, lattice):
    """A non-trivial R: lattice rows sorted by length (a permutation, no gradient), then wrap."""
    lattice = lattice[jnp.argsort(jax.lax.stop_gradient(jnp.sum(lattice**2, -1)))]
    frac = jnp.linalg.solve(lattice.T, positions.T).T
    return positions - jnp.floor(frac) @ lattice, lattice, jnp.array(True)


TARGET_GRAM = 16.0 * np.eye(3)
GRAM_WEIGHT = 0.01


def periodic_energy_fn(crystal):
    """sum cos(2 pi F) over real atoms + w |L^T L - 16 I|^2: invariant under R."""
    frac = crystal.frac
    gram = crystal.lattice.T @ crystal.lattice - jnp.asarray(TARGET_GRAM, frac.dtype)
    energy = jnp.sum(jnp.where(crystal.mask[:, None], jnp.cos(2 * np.pi * frac), 0.0))
    return energy + GRAM_WEIGHT * jnp.sum(gram**2), NO_OVERFLOW


def periodic_numpy(x, lattice, mask):
    """Energy and analytic gradients (dE/dX, dE/dL) of `periodic_energy_fn` in float64."""
    inverse = np.linalg.inv(lattice)
    frac = x @ inverse
    gram = lattice.T @ lattice - TARGET_GRAM
    energy = np.sum(mask[:, None] * np.cos(2 * np.pi * frac)) + GRAM_WEIGHT * np.sum(gram**2)
    grad_frac = -2 * np.pi * mask[:, None] * np.sin(2 * np.pi * frac)
    # F = X L^-1: dF = dX L^-1 - F dL L^-1.
    return energy, grad_frac @ inverse.T, -frac.T @ grad_frac @ inverse.T + 4 * GRAM_WEIGHT * lattice @ gram


def test_acceptance_probability_matches_numpy():
    """SPEC §3 step 3, recomputed in numpy from the step's own noise."""
    step_size, beta, num_keys = 0.05, 2.0, 32
    mask = np.asarray(SPECIES > 0, np.float64)
    frac = jnp.array([[0.01, 0.5, 0.99], [0.5, 0.02, 0.3], [0.97, 0.6, 0.01], [0, 0, 0]])  # near faces
    start = Crystal.from_frac(SPECIES, frac, 4.0 * jnp.eye(3) + 0.3 * jax.random.normal(jax.random.key(3), (3, 3)))
    keys = jax.random.split(jax.random.key(4), num_keys)

    # The noise depends on the key only: with H = 0 and no reduction every
    # proposal x + sqrt(2 alpha) xi is accepted, which reveals xi.
    zero_init, zero_step = mala(lambda c: (0.0 * jnp.sum(c.lattice), NO_OVERFLOW), identity_reduce)
    zero_state = jax.jit(zero_init)(start)
    moved, _ = jax.jit(jax.vmap(lambda k: zero_step(k, zero_state, step_size, beta)))(keys)
    noise_x = (np.asarray(moved.crystal.positions, np.float64) - np.asarray(start.positions)) / np.sqrt(2 * step_size)
    noise_l = (np.asarray(moved.crystal.lattice, np.float64) - np.asarray(start.lattice)) / np.sqrt(2 * step_size)

    init_fn, step_fn = mala(periodic_energy_fn, sort_and_wrap)
    state = jax.jit(init_fn)(start)
    new, info = jax.jit(jax.vmap(lambda k: step_fn(k, state, step_size, beta)))(keys)

    x, lattice = np.asarray(state.crystal.positions, np.float64), np.asarray(state.crystal.lattice, np.float64)
    energy, grad_x, grad_l = periodic_numpy(x, lattice, mask)
    expected, reduced_differs = [], []
    for i in range(num_keys):
        x_p = x - step_size * beta * grad_x + np.sqrt(2 * step_size) * noise_x[i]
        l_p = lattice - step_size * beta * grad_l + np.sqrt(2 * step_size) * noise_l[i]
        order = np.argsort(np.sum(l_p**2, -1))
        l_r = l_p[order]
        shifts = np.floor(x_p @ np.linalg.inv(l_r)) * mask[:, None]
        x_r = x_p - shifts @ l_r
        energy_p, grad_x_r, grad_l_r = periodic_numpy(x_r, l_r, mask)
        grad_x_p = grad_x_r  # X_r = X' - n P L': dX_r/dX' = 1, dX_r/dL' = -n P
        grad_l_p = np.zeros_like(l_p)
        grad_l_p[order] = grad_l_r - shifts.T @ grad_x_r  # P^T (...)
        reduced_differs.append(not np.allclose(x_r, x_p) or not np.array_equal(order, np.arange(3)))

        def log_q(u_x, u_l, v_x, v_l, g_x, g_l):
            return -(np.sum(mask[:, None] * (u_x - v_x + step_size * beta * g_x) ** 2)
                     + np.sum((u_l - v_l + step_size * beta * g_l) ** 2)) / (4 * step_size)

        log_a = (beta * (energy - energy_p) + log_q(x, lattice, x_p, l_p, grad_x_p, grad_l_p)
                 - log_q(x_p, l_p, x, lattice, grad_x, grad_l))
        expected.append(min(1.0, np.exp(log_a)))
        if info.accepted[i]:
            np.testing.assert_allclose(new.crystal.positions[i], x_r, atol=1e-4)
            np.testing.assert_allclose(new.crystal.lattice[i], l_r, atol=1e-4)
            np.testing.assert_allclose(new.energy[i], energy_p, atol=1e-4)
        else:
            np.testing.assert_array_equal(new.crystal.positions[i], state.crystal.positions)
    expected = np.array(expected)
    assert np.sum((expected > 0.05) & (expected < 0.95)) >= 5  # the comparison is not trivial
    assert np.sum(reduced_differs) >= 5  # and R moved the proposal
    np.testing.assert_allclose(info.acceptance_probability, expected, atol=2e-3, rtol=2e-3)
    assert np.all(np.asarray(info.accepted)[expected == 0] == False)  # noqa: E712


@pytest.mark.slow  # three chain lengths compiled: about 7 s
def test_segments_and_recording_equal_one_scan():
    init_fn, step_fn = mala(harmonic_energy_fn, identity_reduce)
    state = jax.jit(init_fn)(random_crystal(jax.random.key(8), SPECIES, 0.05))
    key = jax.random.key(9)
    step_sizes, betas = annealing_schedule(30, (0.5, 5e-4), (1.0, 1e-3))
    whole, info, trajectory = run_chain(key, state, step_fn, step_sizes, betas, record_every=10)
    half, _, none = run_chain(key, state, step_fn, step_sizes[:20], betas[:20])
    rest, _, _ = run_chain(key, half, step_fn, step_sizes[20:], betas[20:], first_step=20)
    assert none is None and info.accepted.shape == (30,)
    assert trajectory.crystal.positions.shape == (3, 4, 3)
    np.testing.assert_allclose(rest.crystal.positions, whole.crystal.positions, rtol=1e-6)
    np.testing.assert_allclose(trajectory.crystal.lattice[1], half.crystal.lattice, rtol=1e-6)
    np.testing.assert_allclose(trajectory.crystal.lattice[-1], whole.crystal.lattice, rtol=1e-6)


@pytest.mark.parametrize("poison", ["energy", "gradient"])
def test_non_finite_proposals_are_rejected(poison):
    start = init_batch(jax.random.key(12), mala(harmonic_energy_fn, identity_reduce)[0], 1)
    start_positions = jax.tree.map(lambda a: a[0], start).crystal.positions

    def energy_fn(crystal):
        energy = harmonic_energy(crystal)
        at_start = jnp.all(crystal.positions == start_positions)
        if poison == "energy":
            return jnp.where(at_start, energy, jnp.nan), NO_OVERFLOW
        tiny = jnp.where(at_start, 1.0, 0.0) * crystal.positions[0, 0]  # sqrt'(0) = inf
        return energy + 0.0 * jnp.sqrt(jnp.abs(tiny)), NO_OVERFLOW

    init_fn, step_fn = mala(energy_fn, identity_reduce)
    state = jax.jit(init_fn)(Crystal(SPECIES, start_positions, start.crystal.lattice[0]))
    assert np.isfinite(state.energy) and np.all(np.isfinite(state.grad_positions))
    final, info, _ = run_chain(jax.random.key(13), state, step_fn, jnp.full(20, 0.1), jnp.full(20, 1.0))
    assert not np.any(info.accepted)
    np.testing.assert_array_equal(info.acceptance_probability, 0.0)
    np.testing.assert_array_equal(final.crystal.positions, state.crystal.positions)
    assert np.isfinite(final.energy)
