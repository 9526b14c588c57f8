"""Training: the loss of SPEC §4, batches, exact resume, non-finite steps, overflow.

Tests `csp_jax.training.step` (the losses, the update step), `csp_jax.training.loop` (batches,
resume, non-finite steps, overflow, capacities, `init_from`), `csp_jax.training.curves`,
`csp_jax.data.species` (multipliers, swapped sites) and `csp_jax.geometry.crystal.bucket_sizes`.
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csp_jax.models import checkpoint
from csp_jax.energy.registry import build_energy
from csp_jax.training.curves import read_metrics
from csp_jax.data.species import draw_multipliers, expanded_species, swapped_sites
from csp_jax.geometry.crystal import bucket_sizes
from csp_jax.config import get_config, override
from csp_jax.data.datasets import load_split
from csp_jax.training.step import contrastive_loss, init_train_state, ranking_loss
from csp_jax.training import loop as training_loop
from csp_jax.sampling.driver import sample
from csp_jax.training.loop import TrainingDiverged, train


def test_contrastive_loss_formula():
    e_data, e_sample = jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0])
    expected = np.mean([0.5, 3.0]) + 0.1 * (np.mean([1.0, 4.0]) + np.mean([0.25, 1.0]))
    assert float(contrastive_loss(e_data, e_sample, 0.1)) == pytest.approx(expected)


def test_geometric_multipliers_and_cap():
    j = draw_multipliers(np.random.default_rng(0), 200000)
    freq = np.bincount(j)[1:6] / len(j)
    np.testing.assert_allclose(freq, 0.5 ** np.arange(1, 6), atol=0.005)
    # The Perov-5 cap of 35 atoms (j <= 7) changes less than 1% of draws.
    assert np.mean(j > 7) < 0.01
    species = np.array([[38, 22, 8, 8, 8], [8, 8, 8, 38, 22]])
    out = expanded_species(species, np.array([2, 9]), 35)
    assert out.num_capped == 1 and list(out.multipliers) == [2, 7]
    assert out.species.shape == (2, 35) and out.species.shape[1] in bucket_sizes(35)
    assert np.bincount(out.species[1])[8] == 21 and np.count_nonzero(out.species[0]) == 10


@pytest.mark.parametrize("max_atoms", [5, 20, 35, 52, 100])
def test_bucket_sizes_pad_a_cell_by_at_most_half_then_a_fifth(max_atoms):
    """Every cell size fits a bucket no larger than max_atoms; a cell of more than
    16 atoms pads to at most 1.22x its atoms, a smaller one to at most 1.5x."""
    sizes = bucket_sizes(max_atoms)
    assert sizes[-1] == max_atoms and list(sizes) == sorted(set(sizes))
    for n in range(2, max_atoms + 1):
        width = next(s for s in sizes if s >= n)
        assert width <= max_atoms and width / n <= (1.22 if n > 16 else 1.5), (n, width)


@pytest.fixture(scope="module")
def config():
    return get_config("test")


def params_of(run_dir):
    mngr = checkpoint.manager(run_dir)
    state, meta = checkpoint.restore(mngr, init_train_state(get_config("test"), jax.random.PRNGKey(0)))
    return state, meta


@pytest.mark.slow  # the training programs compiled: about 30 s
def test_resume_continues_exactly(tmp_path, data_dir, config):
    """2 epochs of 2 steps in one run equal 2 steps + resume + 2 steps, bit for bit (swapped
    negatives included), validation losses too, even when the first call was stopped
    between its epoch's checkpoint and validation; without resume an existing run is refused."""
    quiet = lambda *_: None  # noqa: E731
    for key, value in [("train.swap_negatives", "1"), ("data.train_limit", "4"), ("train.num_epochs", "2")]:
        config = override(config, key, value)
    one = train(config, tmp_path / "one", data_dir, log=quiet)
    train(config, tmp_path / "two", data_dir, max_steps=2, log=quiet)
    assert checkpoint.manager(tmp_path / "two").latest_step() == 2
    metrics = tmp_path / "two" / "metrics.jsonl"  # as a stop before step 2's validation leaves it
    metrics.write_text("".join(json.dumps(r) + "\n" for r in read_metrics(metrics) if r["kind"] != "val"))
    with pytest.raises(FileExistsError, match="--resume"):  # an existing run continues only if asked
        train(config, tmp_path / "two", data_dir, max_steps=1, log=quiet)
    two = train(config, tmp_path / "two", data_dir, resume=True, log=quiet)
    assert int(one.step) == int(two.step) == 4
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    restored, meta = params_of(tmp_path / "two")
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(two)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    assert all(0 <= r["swaps_above_data"] <= 1 for r in records if r["kind"] == "train")
    validation = [r for r in records if r["kind"] == "val"]
    assert validation == [r for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if r["kind"] == "val"]
    assert [(r["step"], r["epoch"]) for r in validation] == [(2, 1), (4, 2)]
    assert (tmp_path / "two" / "training_curve.png").stat().st_size > 0
    # Parameters changed: training did something.
    fresh = init_train_state(config, jax.random.PRNGKey(config.train.seed))
    assert not np.array_equal(np.asarray(jax.tree.leaves(fresh.variables["params"])[0]),
                              np.asarray(jax.tree.leaves(two.variables["params"])[0]))


@pytest.mark.slow  # the training programs compiled, when alone: about 25 s
def test_non_finite_steps_are_skipped_then_stop(tmp_path, data_dir, config, monkeypatch):
    config = override(config, "train.max_bad_steps", "2")
    real_step = training_loop.update_step

    def poisoned(state, data, samples, regularization, **kw):
        new_state, metrics = real_step(state, data, samples, regularization, **kw)
        if int(state.step) >= 2:
            metrics = dict(metrics, loss=jnp.float32(np.nan))
        return new_state, metrics

    monkeypatch.setattr(training_loop, "update_step", poisoned)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(config, tmp_path, data_dir, log=lambda *_: None)
    assert checkpoint.manager(tmp_path).latest_step() == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records if r["kind"] == "train"] == [False, False, True, True]


@pytest.mark.slow  # the negatives' chains compiled: about 15 s
def test_overflow_repeats_step_with_grown_capacity(config, data_dir):
    """A step whose neighbour lists overflow is repeated with grown capacities until none does."""
    train_set = load_split("perov_5", "train", data_dir, limit=2)
    capacities = training_loop.Capacities(config.neighbors, data_atoms=5)
    batch, _ = training_loop.make_batch(config, train_set, np.arange(2), np.random.default_rng(0))
    state = init_train_state(config, jax.random.PRNGKey(0))
    seen = []

    def step(state, data, samples, regularization, *, data_capacity, sample_capacity, **_):
        seen.append((data_capacity, sample_capacity))
        overflow = data_capacity.max_edges < 5000
        return None, {"loss": np.float32(1.0), "overflow": np.bool_(overflow),
                      "data_needs": np.array([100, 5000]), "sample_needs": np.array([10, 10])}

    _, metrics, reruns = training_loop.run_step(step, build_energy(config.model), config, state, batch,
                                                jax.random.PRNGKey(1), capacities)
    assert not metrics["overflow"] and len(seen) == 2 and reruns >= 1  # grown to the need at once
    assert seen[1][0].max_edges >= 5000 > seen[0][0].max_edges
    assert seen[0][1] == seen[1][1]  # the samples' capacity held what they needed
    assert 0.0 < metrics["acceptance"] <= 1.0
    # The grown capacities are kept (and saved with checkpoints).
    restored = training_loop.Capacities(config.neighbors, 5, capacities.to_json())
    assert restored.data == capacities.data and restored.data.max_edges >= 5000
    assert restored.chains == capacities.chains and capacities.chains
    assert restored.update == capacities.update is not None


@pytest.mark.slow  # the update step compiled twice: 10-12 s
def test_update_step_reports_overflow_of_a_small_capacity(config):
    """The jitted step flags (never hides) crystals whose neighbour lists do not fit."""
    from csp_jax.geometry.crystal import Crystal
    from csp_jax.geometry.neighbors import NeighborCapacity
    from csp_jax.training.step import optimizer, update_step

    rng = np.random.default_rng(0)
    lattice = np.stack([6.0 * np.eye(3)] * 2).astype(np.float32)
    species = np.array([[38, 22, 8, 8, 8]] * 2, np.int32)
    data = Crystal(species, (rng.uniform(0, 1, (2, 5, 3)) @ lattice).astype(np.float32), lattice)
    swapped = data.replace(species=swapped_sites(species, rng))
    state = init_train_state(config, jax.random.PRNGKey(0))
    step = functools.partial(update_step, state, data, data, config.train.regularization,
                             swapped=swapped, swap_margin=0.1, energy=build_energy(config.model),
                             optimizer=optimizer(config.train), data_capacity=NeighborCapacity.for_atoms(5))
    _, metrics = step(sample_capacity=NeighborCapacity(max_images=8, max_edges=64))
    assert bool(metrics["overflow"]) and np.any(np.asarray(metrics["sample_needs"]) > np.array([8, 64]))
    _, metrics = step(sample_capacity=NeighborCapacity.for_atoms(5))
    assert not bool(metrics["overflow"])
    assert float(metrics["swaps_above_data"]) in (0.0, 0.5, 1.0) and np.isfinite(metrics["e_swap"])


@pytest.mark.slow  # 12 training steps of chains in 5 segments: about 20 s
def test_chain_capacities_only_grow_so_steps_reuse_their_programs(tmp_path, data_dir, config, monkeypatch):
    """Each chain width keeps a capacity per segment that only grows (the driver's `floors`),
    although every segment refits to the chains as they settle: a step whose chains fit
    the capacities kept builds no program, and only a need never met before grows one."""
    config = override(override(config, "sampler.segment_length", "2"), "train.num_epochs", "3")
    runs = []  # the capacities of each training step's chains (one width)

    def recording(*args, **kwargs):
        result = sample(*args, **kwargs)
        runs.append((kwargs["floors"], result.capacities))
        return result

    monkeypatch.setattr(training_loop, "sample", recording)
    train(config, tmp_path, data_dir, log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    built = [r["new_programs"] for r in records if r["kind"] == "train"]
    # One chain batch per record: 4 training steps, then one validation batch, per epoch.
    steps = [run for run, r in zip(runs, records) if r["kind"] == "train"]
    assert len(steps) == len(built) == 12
    for floors, used in steps:
        assert all(np.all(np.array(u) >= np.array(f)) for u, f in zip(used, floors))  # never below a floor
    for (floors, used), n in list(zip(steps, built))[1:]:
        if tuple(used) == tuple(floors):
            assert n == 0  # the capacities kept: every program reused
    assert sum(built[1:]) < len(built) - 1  # most steps after the first build nothing
    _, meta = params_of(tmp_path)  # kept in the checkpoint: one capacity per segment
    [kept] = meta["capacities"]["samples"].values()  # one width (6 slots for 5 atoms)
    assert [tuple(c) for c in kept] == [tuple(c) for c in steps[-1][1]]


def test_ranking_loss_is_a_hinge_at_the_margin():
    e_data, e_swapped = jnp.array([0.0, 1.0]), jnp.array([[0.05, 2.0], [0.5, 1.2]])
    # max(0, 0.1 + E_data - E_swapped): 0.05, 0, 0.6, 0 (copies 0.1 above their crystal cost nothing)
    assert float(ranking_loss(e_data, e_swapped, 0.1)) == pytest.approx(0.65 / 4)


def test_swapped_sites_keep_composition_and_exchange_two_different_species():
    rng = np.random.default_rng(0)
    species = np.array([[38, 22, 8, 8, 8, 0], [8, 8, 8, 38, 22, 0], [6, 6, 6, 0, 0, 0]] * 200)
    out = swapped_sites(species, rng)
    for before, after in zip(species, out):
        assert sorted(before) == sorted(after)  # same composition, padding in place
        np.testing.assert_array_equal(before == 0, after == 0)
        changed = np.flatnonzero(before != after)
        if len(set(before[before > 0])) == 1:
            assert len(changed) == 0
        else:
            i, j = changed
            assert before[i] == after[j] and before[j] == after[i] and before[i] != before[j]
    # Pairs of species are drawn uniformly: the cation swap of ABX3 is a third of the draws.
    cations = [set(b[b != a]) == {38, 22} for b, a in zip(species[:, :5], out[:, :5]) if 22 in b]
    assert abs(np.mean(cations) - 1 / 3) < 0.05
    # "cations": never the most electronegative element (O) when two others are left.
    only = swapped_sites(species, rng, "cations")
    assert all(set(b[b != a]) == {38, 22} for b, a in zip(species, only) if 22 in b)
    with pytest.raises(ValueError, match="pairs"):
        swapped_sites(species, rng, "anions")


def test_batches_carry_swapped_copies_of_their_data_crystals(config, data_dir):
    """`train.swap_negatives` = k copies of each data crystal in turn, geometry kept, two
    sites of different species exchanged."""
    config = override(config, "train.swap_negatives", "2")
    train_set = load_split("perov_5", "train", data_dir, limit=3)
    batch, _ = training_loop.make_batch(config, train_set, np.arange(3), np.random.default_rng(0))
    data, swapped = jax.device_get((batch.data, batch.swapped))
    assert swapped.species.shape == (6, 5)
    np.testing.assert_array_equal(swapped.positions, np.repeat(data.positions, 2, axis=0))
    assert np.all(np.sum(swapped.species != np.repeat(data.species, 2, axis=0), axis=1) == 2)
    none, _ = training_loop.make_batch(get_config("test"), train_set, np.arange(3), np.random.default_rng(0))
    assert none.swapped.species.shape == (0, 5)


def test_init_from_starts_at_a_trained_models_variables(config):
    from csp_jax import models

    state = init_train_state(config, jax.random.PRNGKey(0))
    started = training_loop._start_from(state, config, "perov5")
    for a, b in zip(jax.tree.leaves(started.variables), jax.tree.leaves(models.load("perov5")[2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="other size"):
        training_loop._start_from(state, override(config, "model.features", "16"), "perov5")
