"""Energies are swappable, and the config is the one source of rho0.

A toy pairwise energy on the same neighbour list (`PairSpringEnergy`, which
implements `csp_jax.energy.Energy` and nothing more) is trained, sampled,
evaluated and used for prediction through the public functions unchanged; `model.rho0` set in the
config reaches the random starts of training, evaluation and prediction chains.
"""
import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csp_jax.config import SamplerConfig, get_config, override
from csp_jax.data.datasets import load_split
from csp_jax.energy import Energy, EnergyModel, density_penalty
from csp_jax.evaluation.evaluate import evaluate
from csp_jax.geometry.neighbors import (NeighborCapacity, cutoff_radius, edge_vectors, neighbor_list,
                                        safe_norm)
from csp_jax.geometry.niggli import reduce_crystal
from csp_jax.predict import predict
from csp_jax.sampling import driver
from csp_jax.sampling.driver import sample, schedule
from csp_jax.sampling.mala import mala
from csp_jax.training import checkpoint, train
from csp_jax.training.step import config_energy

SRTIO3 = np.array([38, 22, 8, 8, 8], np.int32)


@dataclasses.dataclass(frozen=True)
class PairSpringEnergy:
    """Springs of rest length r0 between neighbours, weighted like ContinuouSP's edges, per atom,
    plus the density penalty: 0.01 sum_edges w(d) (d - r0)^2 / n + log(rho / rho0)^2."""

    rho0: float = 0.05
    edges_per_chunk: int = 2**18

    def init(self, key):
        return {"params": {"r0": jnp.array(2.5)}}

    def energy(self, variables, crystal, capacity):
        nbrs = neighbor_list(crystal, capacity)
        d = safe_norm(edge_vectors(crystal, nbrs), nbrs.edge_mask)
        w = 1.0 + jnp.cos(jnp.pi * d / cutoff_radius(crystal))
        springs = jnp.sum(jnp.where(nbrs.edge_mask, w * (d - variables["params"]["r0"]) ** 2, 0.0))
        energy = 0.01 * springs / crystal.num_atoms + density_penalty(crystal, self.rho0, 1.0)
        return jnp.where(nbrs.valid, energy, jnp.nan), nbrs

    def training_variables(self, variables):
        return variables


@pytest.mark.slow  # training, chains, an evaluation and a prediction
def test_toy_energy_trains_evaluates_and_predicts_through_the_public_functions(data_dir, tmp_path):
    toy = PairSpringEnergy()
    assert isinstance(toy, Energy)
    config = override(override(get_config("test"), "sampler.num_steps", "20"), "sampler.segment_length", "10")
    state = train(config, tmp_path / "run", data_dir, energy=toy, max_steps=2, log=lambda *_: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2] and int(state.step) == 2
    assert all(math.isfinite(r["loss"]) for r in records)
    variables = jax.device_get(state.variables)
    assert float(variables["params"]["r0"]) != 2.5  # two Adam steps moved the spring's rest length
    species = np.tile(SRTIO3, (4, 1))
    result = sample(jax.random.split(jax.random.key(1), 4), species, toy, variables,
                    NeighborCapacity.for_atoms(5), schedule(SamplerConfig(), 60), segment_length=10)
    energies = result.info.energy
    assert np.all(np.isfinite(energies)) and np.mean(energies[:, -1]) < np.mean(energies[:, 0])

    dataset = load_split("perov_5", "test", data_dir)
    results = evaluate(config, toy, variables, dataset, tmp_path / "eval", num_samples=2, limit=2,
                       batch_size=4, timeout_s=60, workers=1, log=lambda _: None)
    assert results["num_crystals"] == 2 and sum(results["pair_counts"].values()) == 4
    rows = predict(config, toy, variables, ["SrTiO3"], tmp_path / "pred", num_samples=4, log=lambda _: None)
    assert [row["rank"] for row in rows] == [1, 2, 3, 4]  # four chains: the shapes sampled above
    assert [row["energy"] for row in rows if row["valid"]] == sorted(row["energy"] for row in rows if row["valid"])
    assert all(math.isfinite(row["energy"]) for row in rows)


@pytest.mark.slow  # two models' chain starts compiled: 11-16 s
def test_random_starts_scale_with_rho0_exactly():
    """Same keys, rho0 0.05 and 0.03: every start cell is larger by exactly 5/3 in volume."""
    keys = jax.random.split(jax.random.key(2), 8)
    species = np.tile(SRTIO3, (8, 1))
    volumes = {}
    for rho0 in (0.05, 0.03):
        model = EnergyModel(32, 3, 2, rho0=rho0)
        init = driver.compiled_init(model, mala, reduce_crystal, NeighborCapacity.for_atoms(5, 512, 3.0))
        states = init(model.init(jax.random.key(0)), keys, species)
        volumes[rho0] = np.asarray(states.crystal.volume)
    np.testing.assert_allclose(volumes[0.03] / volumes[0.05], 5 / 3, rtol=1e-4)


class ChainStarted(Exception):
    """Raised by the spy below where a chain's random start is traced: nothing is compiled."""


def test_config_rho0_reaches_training_evaluation_and_prediction_chains(data_dir, tmp_path, monkeypatch):
    """`--set model.rho0=0.03` reaches the random starts of all three kinds of chains alike
    (each stage is stopped where its first chain start is traced)."""

    def spy(key, species, rho0):
        raise ChainStarted(rho0)

    monkeypatch.setattr(driver, "random_crystal", spy)
    config = override(get_config("test"), "model.rho0", "0.03")
    with pytest.raises(ChainStarted) as training:
        train(config, tmp_path / "run", data_dir, max_steps=1, log=lambda *_: None)
    loaded = checkpoint.read_config(tmp_path / "run")  # what the run directory keeps
    model = config_energy(loaded)
    assert model.rho0 == 0.03
    variables = model.init(jax.random.key(0))
    with pytest.raises(ChainStarted) as evaluation:
        evaluate(loaded, model, variables, load_split("perov_5", "test", data_dir, limit=20),  # no whole parse
                 tmp_path / "eval", num_samples=1, limit=1, timeout_s=60, workers=1, log=lambda _: None)
    with pytest.raises(ChainStarted) as prediction:
        predict(loaded, model, variables, ["SrTiO3"], tmp_path / "pred", num_samples=1, log=lambda _: None)
    stages = {name: raised.value.args[0] for name, raised in
              [("training", training), ("evaluation", evaluation), ("prediction", prediction)]}
    assert stages == {"training": 0.03, "evaluation": 0.03, "prediction": 0.03}
