"""csp_jax.sampling.driver, chains in batches (`sample`, `sample_rows`, SPEC §3): the config's
schedule, reproducible keys, overflow re-runs, capacity refits between segments, chunked vmap,
the programs each batch width compiles."""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csp_jax.geometry import capacity as capacity_module
from csp_jax.geometry.niggli import reduce_crystal
from csp_jax.config import SamplerConfig
from csp_jax.energy.base import Aux
from csp_jax.sampling.driver import sample, schedule as config_schedule
from sampler_stand_ins import NO_OVERFLOW, SPECIES, harmonic_energy, harmonic_energy_fn, identity_reduce


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


def test_annealing_schedule_is_geometric():
    """The config's default schedule is the paper's."""
    step_sizes, betas = config_schedule(SamplerConfig())
    assert step_sizes.shape == betas.shape == (1000,)
    np.testing.assert_allclose([step_sizes[0], step_sizes[-1]], [0.5, 5e-4], rtol=1e-6)
    np.testing.assert_allclose([betas[0], betas[-1]], [1.0, 1e3], rtol=1e-5)
    ratios = np.asarray(step_sizes[1:] / step_sizes[:-1])
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-5)


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
