"""Chains that go wrong, with the real energy: overflow, NaN energies, a matcher that hangs.

- Neighbour-capacity overflow forced on thin and sheared cells, in sampling
  chains and in a training step: re-run with a grown capacity, counted, and the
  result equals a run that had the grown (large) capacity from the start.
- NaN energies injected into the chains of an evaluation: every such proposal
  is rejected, the count reaches the evaluation's metrics file.
- A matcher pair that hangs in that evaluation: timed out, counted, and the
  evaluation finishes.

The energy is the `test` config's ContinuouSP model (random weights).

Tests `csp_jax.sampling.driver` and `csp_jax.geometry.capacity` (overflow re-runs),
`csp_jax.training.loop.run_step`, `csp_jax.sampling.mala` (NaN rejection),
`csp_jax.evaluation.evaluate` and `csp_jax.candidates.matching` (time-outs).
"""
import functools
import importlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csp_jax.config import get_config, updated
from csp_jax.data.datasets import load_split
from csp_jax.candidates import matching
from csp_jax.evaluation import metrics
from csp_jax.geometry.neighbors import NeighborCapacity
from csp_jax.sampling.driver import sample, schedule
from csp_jax.sampling.mala import mala
from csp_jax.training import loop
from csp_jax.energy.registry import build_energy
from csp_jax.training.step import init_train_state, optimizer, update_step

pytestmark = pytest.mark.slow  # real-energy chains, training and evaluation: 20-35 s each

evaluation = importlib.import_module("csp_jax.evaluation.evaluate")  # the module, not the function
CONFIG = get_config("test")
UPDATE = functools.partial(update_step, optimizer=optimizer(CONFIG.train))
SMALL = NeighborCapacity(max_images=48, max_edges=160)  # too small for these 5-atom cells
# Affine deformations of the random starts (row vectors: x -> x D, for atoms and cell vectors alike).
THIN = np.diag([0.3, 1.8, 1.8]).astype(np.float32)  # a slab: one cell vector 0.3x, volume 0.97x
SHEARED = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.2, 0.8, 1.0]], np.float32)  # z shears x, y


def thin_and_sheared_starts(energy_fn, reduce_fn):
    """MALA whose chains start from the random start deformed: SrTiO3 chains into a thin slab,
    BaZrO3 chains by a shear (a `kernel` for the chain driver)."""
    init_fn, step_fn = mala(energy_fn, reduce_fn)

    def init(crystal):
        deform = jnp.where(crystal.species[-1] == 38, THIN, SHEARED)  # species sorted: Sr or Ba last
        return init_fn(crystal.replace(positions=crystal.positions @ deform, lattice=crystal.lattice @ deform))

    return init, step_fn


def test_overflow_on_thin_and_sheared_cells_reruns_to_the_large_capacity_result(capsys):
    model = build_energy(CONFIG.model)
    variables = model.init(jax.random.key(0))
    species = np.array([[8, 8, 8, 22, 38]] * 2 + [[8, 8, 8, 40, 56]] * 2, np.int32)
    keys = jax.random.split(jax.random.key(1), 4)
    run = functools.partial(sample, keys, species, model, variables, annealing=schedule(CONFIG.sampler, 20),
                            segment_length=20, kernel=thin_and_sheared_starts)
    small = run(capacity=SMALL)
    large = run(capacity=small.capacity)  # one segment: no refit, the capacity it grew to from the start
    with capsys.disabled():
        print(f"\nsampling, thin and sheared starts: capacity {tuple(SMALL)} re-ran "
              f"{small.num_overflow_reruns} times to {tuple(small.capacity)}; that capacity from the "
              f"start: {large.num_overflow_reruns} re-runs")
    assert small.num_overflow_reruns >= 1 and large.num_overflow_reruns == 0
    assert not np.any(small.info.overflow) and not np.any(large.info.overflow)
    np.testing.assert_array_equal(small.info.accepted, large.info.accepted)
    for a, b in [(small.states.crystal.lattice, large.states.crystal.lattice),
                 (small.states.crystal.positions, large.states.crystal.positions),
                 (small.states.energy, large.states.energy)]:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_overflow_in_a_training_step_on_sheared_data_reruns_to_the_large_capacity_result(data_dir, capsys):
    """The data crystals in a sheared basis (a + 2b, b, c + b: the same crystals) and a data
    capacity far too small for them."""
    train_set = load_split("perov_5", "train", data_dir, limit=2)
    batch, _ = loop.make_batch(CONFIG, train_set, np.arange(2), np.random.default_rng(0))
    basis = jnp.array([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # unimodular
    batch = batch._replace(data=batch.data.replace(lattice=basis @ batch.data.lattice))
    state = init_train_state(CONFIG, jax.random.PRNGKey(0))
    results = {}
    for name in ("small", "large"):
        capacities = loop.Capacities(CONFIG.neighbors, data_atoms=5)
        capacities.data = SMALL if name == "small" else results["small"][3]
        (new_state, _), step_metrics, reruns = loop.run_step(UPDATE, build_energy(CONFIG.model), CONFIG, state, batch,
                                                             jax.random.PRNGKey(1), capacities)
        results[name] = new_state, step_metrics, reruns, capacities.data
    with capsys.disabled():
        print(f"\ntraining step, sheared data: data capacity {tuple(SMALL)} re-ran {results['small'][2]} "
              f"times to {tuple(results['small'][3])}; that capacity from the start: "
              f"{results['large'][2]} re-runs")
    assert results["small"][2] >= 1 and results["large"][2] == 0
    assert not results["small"][1]["overflow"] and not results["large"][1]["overflow"]
    for key in ("loss", "e_data", "e_sample"):
        np.testing.assert_allclose(results["small"][1][key], results["large"][1][key], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(results["small"][0].variables),
                    jax.tree.leaves(results["large"][0].variables)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    unsheared = loop.make_batch(CONFIG, train_set, np.arange(2), np.random.default_rng(0))[0]
    capacities = loop.Capacities(CONFIG.neighbors, data_atoms=5)
    capacities.data = results["small"][3]
    (_, _), plain, _ = loop.run_step(UPDATE, build_energy(CONFIG.model), CONFIG, state, unsheared, jax.random.PRNGKey(1), capacities)
    np.testing.assert_allclose(plain["e_data"], results["small"][1]["e_data"], rtol=1e-4)  # same crystals


def poisoned_mala(energy_fn, reduce_fn):
    """MALA whose proposals have a NaN energy about one time in four (by a hash of the
    positions); the random starts are evaluated with the real energy."""
    init_fn, _ = mala(energy_fn, reduce_fn)

    def poisoned(crystal):
        energy, aux = energy_fn(crystal)
        hashed = jnp.abs(jnp.sin(1e4 * jnp.sum(crystal.positions)))
        return jnp.where(hashed < 0.25, jnp.nan, energy), aux

    return init_fn, mala(poisoned, reduce_fn)[1]


HANG_MARKER = "CSP_JAX_TEST_HANG_MARKER"


def hang_once(ground_truth, sample):
    """The matcher, except that the first pair any worker receives hangs (a marker file says
    it was taken)."""
    try:
        os.close(os.open(os.environ[HANG_MARKER], os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return matching.match_pair(ground_truth, sample)
    time.sleep(3600)


def test_evaluation_rejects_and_counts_nan_energies_and_times_out_a_hanging_pair(
        data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(HANG_MARKER, str(tmp_path / "hung"))
    monkeypatch.setattr(metrics, "match_pairs", lambda pairs, timeout_s, workers, match_fn:
                        matching.match_pairs(pairs, timeout_s, workers, hang_once))
    config = updated(CONFIG, {"sampler.num_steps": 20, "sampler.kernel": "test_chains_go_wrong:poisoned_mala",
                              "eval.num_samples": 1, "eval.limit": 2, "eval.match_timeout": 3})
    model = build_energy(config.model)
    log = []
    start = time.monotonic()
    results = evaluation.evaluate(config, model, model.init(jax.random.key(0)),
                                  load_split("perov_5", "test", data_dir), tmp_path / "eval", workers=1,
                                  log=log.append)
    seconds = time.monotonic() - start
    written = json.loads((tmp_path / "eval" / "test_metrics.json").read_text())
    non_finite = written["sampling"]["non_finite_proposals"]
    samples = np.load(tmp_path / "eval" / "test_samples.npz")
    with capsys.disabled():
        print(f"\nevaluation with NaN energies injected: {non_finite} of {2 * 20} proposals non-finite, "
              f"rejected; pairs {written['pair_counts']}; finished in {seconds:.0f} s")
    assert non_finite > 0 and f"non-finite proposals rejected: {non_finite}" in "\n".join(log)
    assert np.all(np.isfinite(samples["energies"]))  # no NaN state was ever accepted
    assert written["pair_counts"] == results["pair_counts"]
    assert written["pair_counts"]["timeout"] == 1 and sum(written["pair_counts"].values()) == 2
