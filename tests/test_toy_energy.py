"""Energies are swappable, and the config is the one source of rho0.

A toy pairwise energy on the same neighbour list (`PairSpringEnergy`, which
implements `csp_jax.energy.Energy` and nothing more) is trained, sampled,
evaluated and used for prediction through the public functions unchanged; `model.rho0` set in the
config reaches the random starts of training, evaluation and prediction chains.

Tests `csp_jax.energy.base` and `csp_jax.energy.registry` (an energy by import path) through
`csp_jax.training`, `csp_jax.evaluation`, `csp_jax.predict` and `csp_jax.cli`; `rho0` in
`csp_jax.sampling.mala.random_crystal`.
"""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from csp_jax import models
from csp_jax.config import SamplerConfig, get_config, override, updated
from csp_jax.data.datasets import load_split
from csp_jax.energy import Energy, EnergyModel
from csp_jax.energy.registry import build_energy
from csp_jax.evaluation.evaluate import evaluate
from csp_jax.geometry.neighbors import NeighborCapacity
from csp_jax.geometry.niggli import reduce_crystal
from csp_jax.models import checkpoint
from csp_jax.predict import predict
from csp_jax.sampling import driver
from csp_jax.sampling.driver import sample, schedule
from csp_jax.sampling.mala import mala
from csp_jax.training import train
from helpers import REPO, checkout_env
from toy_energy import IMPORT_PATH, PairSpringEnergy

SRTIO3 = np.array([38, 22, 8, 8, 8], np.int32)


@pytest.mark.slow  # the command in subprocesses: training, an evaluation and a prediction, about 40 s
def test_toy_energy_named_in_the_config_trains_evaluates_and_predicts_through_the_command(data_dir, tmp_path):
    """`csp-jax train --set model.energy=toy_energy:PairSpringEnergy`, as a user types it, then
    `csp-jax evaluate` and `csp-jax predict` of the run directory: the energy comes from its config."""
    env = checkout_env(PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(REPO)]))
    command = [sys.executable, str(REPO / "experiments" / "run.py")]

    def run(*args):
        done = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    run_dir = tmp_path / "run"
    run("train", "--config", "test", "--out", str(run_dir), "--data-dir", str(data_dir), "--max-steps", "2",
        "--set", f"model.energy={IMPORT_PATH}", "--set", "sampler.num_steps=20", "--set", "sampler.segment_length=10")
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["model"]["energy"] == IMPORT_PATH and recorded["sampler"]["kernel"] == "mala"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records)
    config, energy, variables = models.load(run_dir)  # (the test's own path holds toy_energy)
    assert isinstance(energy, PairSpringEnergy) and float(variables["params"]["r0"]) != 2.5  # trained

    run("evaluate", "--checkpoint", str(run_dir), "--limit", "2", "--num-samples", "2", "--batch-size", "4",
        "--data-dir", str(data_dir), "--out", str(tmp_path / "eval"), "--workers", "1")
    results = json.loads((tmp_path / "eval" / "test_metrics.json").read_text())
    assert results["num_crystals"] == 2 and sum(results["pair_counts"].values()) == 4
    run("predict", "--checkpoint", str(run_dir), "--formula", "SrTiO3", "--num-samples", "4",
        "--out", str(tmp_path / "pred"))
    with open(tmp_path / "pred" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["rank"]) for row in rows] == [1, 2, 3, 4]
    valid = [float(row["energy"]) for row in rows if row["valid"] == "True"]
    assert valid == sorted(valid) and all(math.isfinite(float(row["energy"])) for row in rows)


def test_toy_energy_samples_downhill(data_dir):
    """The toy energy through the chain driver directly: its chains go down in energy."""
    toy = PairSpringEnergy()
    assert isinstance(toy, Energy)
    species = np.tile(SRTIO3, (4, 1))
    result = sample(jax.random.split(jax.random.key(1), 4), species, toy, toy.init(None),
                    NeighborCapacity.for_atoms(5), schedule(SamplerConfig(), 60), segment_length=10)
    energies = result.info.energy
    assert np.all(np.isfinite(energies)) and np.mean(energies[:, -1]) < np.mean(energies[:, 0])


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
    model = build_energy(loaded.model)
    assert model.rho0 == 0.03
    variables = model.init(jax.random.key(0))
    with pytest.raises(ChainStarted) as evaluation:
        evaluate(updated(loaded, {"eval.num_samples": 1, "eval.limit": 1}), model, variables,
                 load_split("perov_5", "test", data_dir, limit=20),  # no whole parse
                 tmp_path / "eval", workers=1, log=lambda _: None)
    with pytest.raises(ChainStarted) as prediction:
        predict(updated(loaded, {"eval.num_samples": 1}), model, variables, ["SrTiO3"], tmp_path / "pred",
                log=lambda _: None)
    stages = {name: raised.value.args[0] for name, raised in
              [("training", training), ("evaluation", evaluation), ("prediction", prediction)]}
    assert stages == {"training": 0.03, "evaluation": 0.03, "prediction": 0.03}
