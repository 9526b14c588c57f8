"""Several processes under `jax.distributed` (csp_jax.distributed, the evaluation's share of work):
two local processes evaluate as one does, each sampling its own batches, the first writing the report;
killed part way, they resume in any number of processes to the same result."""
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from csp_jax.config import get_config, updated
from csp_jax.models import checkpoint
from helpers import REPO, checkout_env
from toy_energy import IMPORT_PATH


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def toy_model(folder: Path) -> Path:
    """A model folder of the toy energy (config `test`, rest length 2.7 A)."""
    checkpoint.write_config(folder, updated(get_config("test"), {"model.energy": IMPORT_PATH}))
    checkpoint.save_variables(folder / checkpoint.VARIABLES_FILE, {"params": {"r0": jnp.array(2.7)}})
    return folder


def evaluate_command(model: Path, out: Path, data_dir, *extra) -> list[str]:
    return [sys.executable, str(REPO / "experiments" / "run.py"), "evaluate", "--checkpoint", str(model),
            "--limit", "3", "--num-samples", "2", "--batch-size", "2", "--workers", "1",
            "--set", "eval.num_steps=20", "--set", "sampler.segment_length=10",
            "--data-dir", str(data_dir), "--out", str(out), *extra]


@pytest.mark.slow  # five evaluation processes: about 90 s alone, several minutes on a busy machine
def test_two_processes_evaluate_as_one(data_dir, tmp_path):
    model = toy_model(tmp_path / "model")
    tests = str(Path(__file__).parent)
    env = checkout_env(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([tests, str(REPO)]))
    one = subprocess.run(evaluate_command(model, tmp_path / "one", data_dir), env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    address = f"localhost:{free_port()}"
    processes = [subprocess.Popen(evaluate_command(model, tmp_path / "two", data_dir, "--distributed"),
                                  env={**env, "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2",
                                       "JAX_PROCESS_ID": str(i)},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]

    # Three batches of two chains: the first process samples the rows from 0 and 4, the second from 2.
    shares = [re.search(r"process (\d) of 2: sampling the batches from rows (.*)", out).groups() for out in outputs]
    assert shares == [("0", "0, 4"), ("1", "2")]
    assert "wrote " in outputs[0] and "wrote " not in outputs[1]  # the report is the first process's
    first = json.loads((tmp_path / "one" / "test_metrics.json").read_text())
    second = json.loads((tmp_path / "two" / "test_metrics.json").read_text())
    assert second["outcome"] == first["outcome"] and second["labels"] == first["labels"]
    assert second["num_crystals"] == 3 and second["pair_counts"] == first["pair_counts"]
    samples = [np.load(tmp_path / run / "test_samples.npz") for run in ("one", "two")]
    np.testing.assert_allclose(samples[1]["energies"], samples[0]["energies"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(samples[1]["lattice"], samples[0]["lattice"], rtol=1e-5, atol=1e-5)
    assert not (tmp_path / "two" / "test_parts").exists() and not (tmp_path / "two" / "test_scored").exists()

    # Two processes killed once the first batch is saved, then resumed by one: the same result.
    address = f"localhost:{free_port()}"
    cut = tmp_path / "cut"
    processes = [subprocess.Popen(evaluate_command(model, cut, data_dir, "--distributed"),
                                  env={**env, "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2",
                                       "JAX_PROCESS_ID": str(i)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
    while not list((cut / "test_parts").glob("rows_*.npz")) and all(p.poll() is None for p in processes):
        time.sleep(0.05)
    for p in processes:
        p.kill()
        p.wait()
    saved = sorted(path.name for path in (cut / "test_parts").glob("rows_*.npz"))
    assert 1 <= len(saved) < 3, saved  # stopped part way
    resumed = subprocess.run(evaluate_command(model, cut, data_dir, "--resume"), env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming: {len(saved)} batches" in resumed.stdout
    third = json.loads((cut / "test_metrics.json").read_text())
    assert third["outcome"] == first["outcome"] and third["labels"] == first["labels"]
    np.testing.assert_allclose(np.load(cut / "test_samples.npz")["energies"], samples[0]["energies"],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variable", ["SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"])
def test_a_launch_of_several_tasks_starts_the_runtime_and_refuses_training(variable, monkeypatch, capsys):
    from csp_jax import cli, distributed

    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert distributed.initialize() is False and not calls  # one process: nothing to start
    monkeypatch.setenv(variable, "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert distributed.initialize() is True
    assert calls == [{"num_processes": None, "process_id": 1}]  # the rest from the environment
    assert cli.main(["train", "--config", "test", "--out", "never"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: training in several processes is not supported yet") and error.count("\n") == 1
