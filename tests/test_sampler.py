"""Tests of the annealed MALA sampler (SPEC §3): target distribution, the
Metropolis-Hastings ratio against numpy, reproducibility, NaN rejection and the
chain driver's overflow re-runs and capacity refits."""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csp_jax.geometry import capacity as capacity_module
from csp_jax.geometry.crystal import Crystal
from csp_jax.geometry.niggli import reduce_crystal
from csp_jax.config import SamplerConfig
from csp_jax.energy.base import Aux
from csp_jax.sampling.driver import sample, schedule as config_schedule
from csp_jax.sampling.mala import annealing_schedule, mala, random_crystal, run_chain

SPECIES = jnp.array([8, 8, 8, 0], jnp.int32)  # three real atoms and one padding atom
NO_OVERFLOW = Aux.none()


def identity_reduce(positions, lattice):
    return positions, lattice, jnp.array(True)


def harmonic_energy(crystal, stiffness=1.0, lattice_center=4.0):
    """0.5 k (|X_real|^2 + |L - c I|^2): Gaussian target with variance 1 / (beta k)."""
    positions = jnp.where(crystal.mask[:, None], crystal.positions, 0.0)
    lattice = crystal.lattice - lattice_center * jnp.eye(3)
    return 0.5 * stiffness * (jnp.sum(positions**2) + jnp.sum(lattice**2))


def harmonic_energy_fn(crystal):
    return harmonic_energy(crystal), NO_OVERFLOW


@dataclasses.dataclass(frozen=True)
class FunctionEnergy:
    """An `Energy` (csp_jax.energy.base) made of a function (crystal, capacity) -> (energy, aux)."""

    fn: Callable
    rho0: float = 0.05
    edges_per_chunk: int = 2**21 // 32

    def init(self, key):
        return {"params": {}}

    def energy(self, variables, crystal, capacity):
        return self.fn(crystal, capacity)

    def training_variables(self, variables):
        return variables


HARMONIC = FunctionEnergy(lambda crystal, capacity: harmonic_energy_fn(crystal))


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


def test_annealing_schedule_is_geometric():
    """The config's default schedule is the paper's."""
    step_sizes, betas = config_schedule(SamplerConfig())
    assert step_sizes.shape == betas.shape == (1000,)
    np.testing.assert_allclose([step_sizes[0], step_sizes[-1]], [0.5, 5e-4], rtol=1e-6)
    np.testing.assert_allclose([betas[0], betas[-1]], [1.0, 1e3], rtol=1e-5)
    ratios = np.asarray(step_sizes[1:] / step_sizes[:-1])
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-5)


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


def repulsive_energy_fn(crystal):
    """Gaussian pair repulsion over the 27 nearest images, plus the density penalty."""
    mask = crystal.mask
    images = jnp.array(np.stack(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij"), -1).reshape(-1, 3),
                       crystal.lattice.dtype) @ crystal.lattice  # [27, 3]
    delta = (crystal.positions[None, :, None] + images[:, None, None]
             - crystal.positions[None, None, :])  # [27, N, N, 3]
    pair = mask[:, None] & mask[None, :]
    not_self = ~(jnp.all(images == 0, -1)[:, None, None] & jnp.eye(mask.shape[0], dtype=bool)[None])
    repulsion = jnp.sum(jnp.where(pair[None] & not_self, jnp.exp(-jnp.sum(delta**2, -1) / 2.0), 0.0))
    density = jnp.sum(mask) / crystal.volume
    return repulsion + jnp.log(density / 0.05) ** 2, NO_OVERFLOW


@pytest.mark.slow  # 200 steps with Niggli reduction: about 12 s
def test_annealed_samples_are_finite_reduced_crystals():
    species = jnp.tile(jnp.array([[14, 8, 8, 8, 0]], jnp.int32), (8, 1))
    result = sample(jax.random.split(jax.random.key(5), 8), species,
                    FunctionEnergy(lambda crystal, capacity: repulsive_energy_fn(crystal)), {}, None,
                    config_schedule(SamplerConfig(), 200), reduce_fn=reduce_crystal, segment_length=100)
    crystal = result.states.crystal
    assert crystal.positions.shape == (8, 5, 3) and result.info.energy.shape == (8, 200)
    assert np.all(np.isfinite(crystal.positions)) and np.all(np.isfinite(crystal.lattice))
    assert np.all(np.asarray(crystal.volume) > 1.0)
    assert np.all(result.info.reduce_converged)
    assert result.num_overflow_reruns == 0
    frac = np.asarray(crystal.frac)[:, :4]
    assert np.all((frac > -1e-4) & (frac < 1 + 1e-4))  # wrapped into the reduced cell
    lengths = np.linalg.norm(np.asarray(crystal.lattice), axis=-1)
    assert np.all(lengths[:, 0] <= lengths[:, 1] + 1e-3) and np.all(lengths[:, 1] <= lengths[:, 2] + 1e-3)
    # Annealing lowers the energy: the density penalty is near its minimum at the end.
    assert np.mean(result.info.energy[:, -1]) < np.mean(result.info.energy[:, 0])
    # Most chains reach the density minimum (a chain started in a tiny cell can stay stuck).
    assert abs(np.median(np.asarray(crystal.volume)) / 4 * 0.05 - 1) < 0.5


@pytest.mark.slow  # chain segments compiled: about 7 s
def test_same_key_same_samples_different_keys_differ():
    species = jnp.tile(SPECIES[None], (4, 1))
    run = lambda key: sample(jax.random.split(key, 4), species, HARMONIC, {}, None,
                             config_schedule(SamplerConfig(), 40), reduce_fn=identity_reduce,
                             segment_length=20)
    first, again, other = run(jax.random.key(6)), run(jax.random.key(6)), run(jax.random.key(7))
    np.testing.assert_array_equal(first.states.crystal.positions, again.states.crystal.positions)
    np.testing.assert_array_equal(first.info.accepted, again.info.accepted)
    assert not np.allclose(first.states.crystal.lattice, other.states.crystal.lattice)
    # Chains in one batch have their own keys.
    assert not np.allclose(first.states.crystal.lattice[0], first.states.crystal.lattice[1])


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


@dataclasses.dataclass(frozen=True)
class FakeCapacity:
    size: int

    def grow(self):
        return FakeCapacity(2 * self.size)


def truncating_energy(crystal, capacity):
    """A harmonic well around L = 10 I whose 'neighbour count' is |L|_F: past the
    capacity it flags overflow and returns a wrong (halved) energy."""
    energy = harmonic_energy(crystal, lattice_center=10.0)
    overflow = jnp.sqrt(jnp.sum(crystal.lattice**2)) > capacity.size
    return jnp.where(overflow, 0.5 * energy, energy), Aux(overflow, jnp.zeros((0,), jnp.int32))


@pytest.mark.slow  # chains at three capacities: about 16 s
def test_overflow_reruns_equal_a_large_capacity_run():
    """|L|_F starts between 8 and 16.4 and drifts to about 17.6 (up to 18.8):
    capacity 9 overflows at the start, 18 during the chain, 36 never."""
    species = jnp.tile(SPECIES[None], (6, 1))
    schedule = (jnp.full(60, 0.05), jnp.full(60, 1.0))

    def run(capacity):
        return sample(jax.random.split(jax.random.key(10), 6), species, FunctionEnergy(truncating_energy),
                      {}, capacity, schedule, reduce_fn=identity_reduce, segment_length=20)

    small, large = run(FakeCapacity(9)), run(FakeCapacity(36))
    assert large.num_overflow_reruns == 0 and small.num_overflow_reruns == 2
    assert small.capacity == FakeCapacity(36) and not np.any(small.info.overflow)
    np.testing.assert_array_equal(small.info.accepted, large.info.accepted)
    np.testing.assert_allclose(small.states.crystal.lattice, large.states.crystal.lattice, rtol=1e-6)
    np.testing.assert_allclose(small.states.crystal.positions, large.states.crystal.positions, rtol=1e-6)
    # Capacity 18 is enough to start but overflows mid-chain, where the energy is wrong.
    with pytest.MonkeyPatch.context() as patch, pytest.raises(
            RuntimeError, match="overflows in the segment from step"):
        patch.setattr(capacity_module, "MAX_RERUNS", 0)
        run(FakeCapacity(18))


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


def test_chunked_vmap_equals_vmap():
    """Chunks keep every element's result and order (a size 16 does not divide runs in gcd-sized chunks)."""
    from csp_jax.sampling.driver import chunked_vmap

    def fn(x, y):
        return {"sum": jnp.sum(x) * y, "scaled": x * y}

    for size in (48, 50, 8):
        x = jnp.arange(size * 3, dtype=jnp.float32).reshape(size, 3)
        y = jnp.linspace(0.5, 2.0, size)
        expected = jax.vmap(fn)(x, y)
        got = jax.jit(chunked_vmap(fn, 16))(x, y)
        for key in expected:
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(expected[key]))


@pytest.mark.slow  # chains of the real energy at several capacities: about 25 s
def test_capacity_refit_between_segments_keeps_the_samples():
    """`sample` shrinks an oversized neighbour capacity to the chains' needs between segments;
    the samples equal those of a run that keeps the large capacity throughout."""
    from csp_jax.config import get_config
    from csp_jax.energy.continuousp import EnergyModel
    from csp_jax.geometry.neighbors import NeighborCapacity

    model = EnergyModel.from_config(get_config("perov5").model)
    variables = model.init(jax.random.key(14))
    species = jnp.tile(jnp.array([[38, 22, 8, 8, 8]], jnp.int32), (4, 1))
    large = NeighborCapacity(max_images=512, max_edges=1024)

    def run(refit):
        schedule = tuple(a[200:260] for a in config_schedule(SamplerConfig()))  # past the hottest steps
        return sample(jax.random.split(jax.random.key(15), 4), species, model, variables, large, schedule,
                      segment_length=20, refit=refit)

    fitted, fixed = run(True), run(False)
    assert fixed.capacity == large and fitted.num_overflow_reruns == 0
    assert fitted.capacity.max_edges < large.max_edges / 2 and fitted.capacity.max_images < large.max_images / 2
    assert fitted.capacity.max_edges >= int(np.max(fitted.info.needs[..., 1]))
    np.testing.assert_array_equal(fitted.info.accepted, fixed.info.accepted)
    # Equal up to float32 summation order (other padded shapes and chunk sizes).
    np.testing.assert_allclose(fitted.states.crystal.positions, fixed.states.crystal.positions, atol=1e-4)
    np.testing.assert_allclose(fitted.states.crystal.lattice, fixed.states.crystal.lattice, atol=1e-4)


@pytest.mark.slow
def test_sample_rows_runs_a_batch_at_its_cells_width_and_pads_back():
    """Rows of 2-atom cells padded to 12 slots run at width 2 (the same chains as rows of
    width 2, up to float32 rounding) and come back with 12 slots, the padding zero."""
    from csp_jax.energy import EnergyModel
    from csp_jax.geometry.neighbors import NeighborCapacity
    from csp_jax.sampling.driver import sample_rows

    model = EnergyModel(32, 3, 2)
    variables = model.init(jax.random.key(0))
    narrow = np.array([[11, 17]] * 3, np.int32)
    wide = np.pad(narrow, ((0, 0), (0, 10)))
    run = lambda species: sample_rows(jax.random.key(1), species, model, variables,  # noqa: E731
                                      NeighborCapacity.for_atoms(2), config_schedule(SamplerConfig(), 20),
                                      batch_size=2, segment_length=10, log=lambda _: None)
    a, b = run(narrow), run(wide)
    assert b.crystals.positions.shape == (3, 12, 3) and not np.any(b.crystals.positions[:, 2:])
    np.testing.assert_array_equal(b.crystals.species, wide)
    np.testing.assert_allclose(b.crystals.positions[:, :2], a.crystals.positions, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.energies, a.energies, rtol=1e-5, atol=1e-6)


def test_compiled_chain_programs_counts_each_new_batch_shape():
    """A batch of a width not run before builds its programs although the capacity is the
    same (one jitted function, a new shape); the same batch again builds none."""
    from csp_jax.energy import EnergyModel
    from csp_jax.geometry.neighbors import NeighborCapacity
    from csp_jax.sampling.driver import compiled_chain_programs, sample_rows

    model = EnergyModel(32, 3, 2)
    variables = model.init(jax.random.key(0))
    usual = NeighborCapacity.for_atoms(4)
    capacity = usual._replace(max_edges=usual.max_edges + 7)  # one no other test compiles
    run = lambda species: sample_rows(jax.random.key(1), np.array(species, np.int32), model,  # noqa: E731
                                      variables, capacity,
                                      config_schedule(SamplerConfig(), 4), batch_size=2, segment_length=4,
                                      refit=False, log=lambda _: None)
    counts = []
    for species in ([[11, 17, 0, 0]] * 2, [[11, 17, 0, 0]] * 2, [[11, 11, 17, 17]] * 2):
        before = compiled_chain_programs()
        run(species)
        counts.append(compiled_chain_programs() - before)
    assert counts[0] >= 2 and counts[1] == 0 and counts[2] >= 2  # init and segment per width
