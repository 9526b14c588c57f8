"""Data parallelism (csp_jax.sampling.devices, csp_jax.training.parallel): two CPU devices give
the results of one, and each device runs its half of the chains."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from helpers import checkout_env

pytestmark = pytest.mark.slow  # subprocesses with one and two devices: about 50 s each

SCRIPT = textwrap.dedent("""
    import functools
    import jax, jax.numpy as jnp, numpy as np
    from csp_jax.config import get_config
    from csp_jax.data.species import expanded_species, swapped_sites
    from csp_jax.training.loop import Batch, Capacities, run_step
    from csp_jax.training.parallel import replicate, shard_batch
    from csp_jax.energy.registry import build_energy
    from csp_jax.training.step import init_train_state, optimizer, update_step
    from csp_jax.geometry.crystal import Crystal
    assert jax.device_count() == 2, jax.devices()
    config = get_config("test")
    rng = np.random.default_rng(0)
    lattice = np.stack([6.0 * np.eye(3) + rng.normal(0, 0.3, (3, 3)) for _ in range(4)])
    species = np.array([[38, 22, 8, 8, 8]] * 4, np.int32)
    data = Crystal(species, rng.uniform(0, 1, (4, 5, 3)) @ lattice, lattice)
    swapped = data.replace(species=swapped_sites(species, rng))
    batch = Batch(data, expanded_species(species, np.array([1, 1, 1, 1]), 5).species, swapped)
    batch = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32) if x.dtype.kind == "f" else jnp.asarray(x), batch)
    state = init_train_state(config, jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    update = functools.partial(update_step, optimizer=optimizer(config.train))
    (one, _), m1, _ = run_step(update, build_energy(config.model), config, state, batch, key, Capacities(config.neighbors, 5))
    sharded = shard_batch(batch)
    assert len(sharded.data.positions.sharding.device_set) == 2
    (two, _), m2, _ = run_step(update, build_energy(config.model), config, replicate(state), sharded, key, Capacities(config.neighbors, 5))
    assert len(two.variables["params"]["out"]["kernel"].sharding.device_set) == 2
    for k in m1:
        np.testing.assert_allclose(np.asarray(m1[k]), np.asarray(m2[k]), rtol=1e-5, atol=1e-6)
    # Adam divides by sqrt(v): gradients that differ in the last bits (the batch
    # means are reduced in another order) move parameters by up to ~1e-5.
    for a, b in zip(jax.tree.leaves(one.variables), jax.tree.leaves(two.variables)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    print("OK", float(m2["loss"]))
""")


def test_training_step_on_two_devices_equals_one():
    env = checkout_env(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


EVALUATION = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from csp_jax.config import get_config, updated
    from csp_jax.data.datasets import load_split
    from csp_jax.energy.registry import build_energy
    from csp_jax.evaluation.evaluate import evaluate
    from csp_jax.sampling import driver

    shards = []  # per batch of chains: the number of chains each device held
    sample = driver.sample

    def spy(*args, **kwargs):
        result = sample(*args, **kwargs)
        shards.append(sorted(s.data.shape[0] for s in result.states.energy.addressable_shards))
        return result

    driver.sample = spy
    data_dir, out = sys.argv[1], sys.argv[2]
    config = updated(get_config("test"), {"eval.num_samples": 4, "eval.limit": 3, "eval.batch_size": 4,
                                          "eval.num_steps": 20, "sampler.segment_length": 10})
    model = build_energy(config.model)
    results = evaluate(config, model, model.init(jax.random.PRNGKey(0)), load_split("perov_5", "test", data_dir),
                       out, workers=1, log=lambda line: None)
    samples = np.load(f"{out}/test_samples.npz")
    print(json.dumps({"devices": jax.local_device_count(), "shards": shards, "outcome": results["outcome"],
                      "energies": samples["energies"].tolist(), "lattice": samples["lattice"].tolist()}))
""")


def test_evaluation_chains_split_over_two_devices_equal_one(data_dir, tmp_path):
    runs = {}
    for devices in (1, 2):
        env = checkout_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
        out = subprocess.run([sys.executable, "-c", EVALUATION, str(data_dir), str(tmp_path / str(devices))],
                             env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[devices] = json.loads(out.stdout.strip().splitlines()[-1])
    one, two = runs[1], runs[2]
    assert (one["devices"], two["devices"]) == (1, 2)
    assert one["shards"] == [[4]] * 3 and two["shards"] == [[2, 2]] * 3  # 12 chains in batches of 4
    # Chain r keeps its key: the same samples, up to float32 rounding (the fused CPU pair
    # convolution runs on one device, XLA's ops on two).
    np.testing.assert_allclose(two["energies"], one["energies"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(two["lattice"], one["lattice"], rtol=1e-3, atol=1e-3)
    assert two["outcome"] == one["outcome"]
