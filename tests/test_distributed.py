"""Several processes under `jax.distributed` (csp_jax.distributed): two local processes evaluate as
one does, each sampling its own batches, the first writing the report; killed part way, they resume
in any number of processes to the same result. Two processes train as one does, the first alone
writing the metrics, and a checkpoint of either resumes in the other number of processes."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from csp_jax.config import get_config, updated
from csp_jax import models
from csp_jax.models import checkpoint
from csp_jax.training.curves import read_metrics
from helpers import REPO, checkout_env
from toy_energy import IMPORT_PATH


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_processes(command: list[str], env: dict, output=subprocess.PIPE) -> list[subprocess.Popen]:
    """`command --distributed` started as processes 0 and 1 of one local `jax.distributed` job
    (stdout and stderr together to `output`)."""
    address = f"localhost:{free_port()}"
    return [subprocess.Popen(command + ["--distributed"], stdout=output, stderr=subprocess.STDOUT, text=True,
                             env={**env, "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2",
                                  "JAX_PROCESS_ID": str(i)}) for i in range(2)]


def finished(processes: list[subprocess.Popen]) -> list[str]:
    """The outputs of `processes`, once every one has exited with status 0."""
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * len(processes), "".join(o[-2000:] for o in outputs)
    return outputs


def toy_env() -> dict:
    """The environment of a command that finds the toy energy (tests/ on the path), on the CPU."""
    return checkout_env(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(REPO)]))


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


@pytest.mark.slow  # eight evaluation processes: about 2 minutes alone, several on a busy machine
def test_two_processes_evaluate_as_one(data_dir, tmp_path):
    model = toy_model(tmp_path / "model")
    env = toy_env()
    one = subprocess.run(evaluate_command(model, tmp_path / "one", data_dir), env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    outputs = finished(two_processes(evaluate_command(model, tmp_path / "two", data_dir), env))

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

    # One process killed once the first batch is saved, the other then stopped (as a launcher stops
    # a job whose task died); resumed by both, and (a copy) by one alone: the same result.
    cut = tmp_path / "cut"
    processes = two_processes(evaluate_command(model, cut, data_dir), env, output=subprocess.DEVNULL)
    while not list((cut / "test_parts").glob("rows_*.npz")) and all(p.poll() is None for p in processes):
        time.sleep(0.05)
    for p in processes[::-1]:
        p.kill()
        p.wait()
    saved = sorted(path.name for path in (cut / "test_parts").glob("rows_*.npz"))
    assert 1 <= len(saved) < 3, saved  # stopped part way
    shutil.copytree(cut, tmp_path / "cut_alone")
    both = finished(two_processes(evaluate_command(model, cut, data_dir, "--resume"), env))
    alone = subprocess.run(evaluate_command(model, tmp_path / "cut_alone", data_dir, "--resume"), env=env,
                           capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr[-3000:]
    for output, run in ((both[0], cut), (alone.stdout, tmp_path / "cut_alone")):
        assert f"resuming: {len(saved)} batches" in output
        third = json.loads((run / "test_metrics.json").read_text())
        assert third["outcome"] == first["outcome"] and third["labels"] == first["labels"]
        np.testing.assert_allclose(np.load(run / "test_samples.npz")["energies"], samples[0]["energies"],
                                   rtol=1e-5, atol=1e-6)

def train_command(out: Path, data_dir, steps: int, *extra) -> list[str]:
    """`steps` training steps of the toy energy (config `test`: batches of 2, 10 MALA steps) into `out`."""
    return [sys.executable, str(REPO / "experiments" / "run.py"), "train", "--config", "test",
            "--set", f"model.energy={IMPORT_PATH}", "--data-dir", str(data_dir), "--out", str(out),
            "--max-steps", str(steps), *extra]


def assert_same_training(first: Path, second: Path) -> None:
    """Two runs' metrics per step (those of the chains' samples included) and parameters agree."""
    records = [read_metrics(run / "metrics.jsonl") for run in (first, second)]
    assert [r["step"] for r in records[1]] == [r["step"] for r in records[0]]
    for a, b in zip(*records):
        for key in ("loss", "e_data", "e_sample", "acceptance"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=f"step {a['step']} {key}")
    params = [models.load(run).variables["params"] for run in (first, second)]
    np.testing.assert_allclose(params[1]["r0"], params[0]["r0"], rtol=1e-6)


@pytest.mark.slow  # a run in one process and one in two, each resumed in the other: about 70 s
def test_two_processes_train_as_one_and_resume_in_either_number(data_dir, tmp_path):
    env = toy_env()
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.Popen(train_command(one, data_dir, 2), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    outputs = finished([single, *two_processes(train_command(two, data_dir, 2), env)])
    assert [r["step"] for r in read_metrics(two / "metrics.jsonl")] == [1, 2]  # one line per step
    assert "trained steps 0..2" in outputs[1] and "training" not in outputs[2]  # the first process logs
    assert_same_training(one, two)

    # Each checkpoint resumes in the other number of processes for one step more: again the same.
    finished([*two_processes(train_command(one, data_dir, 1, "--resume"), env),
              subprocess.Popen(train_command(two, data_dir, 1, "--resume"), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)])
    assert [r["step"] for r in read_metrics(one / "metrics.jsonl")] == [1, 2, 3]
    assert_same_training(one, two)


@pytest.mark.parametrize("variable", ["SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"])
def test_a_launch_of_several_tasks_starts_the_runtime(variable, monkeypatch):
    from csp_jax import distributed

    calls = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert distributed.initialize() is False and not calls  # one process: nothing to start
    monkeypatch.setenv(variable, "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert distributed.initialize() is True
    assert calls == [{"num_processes": None, "process_id": 1}]  # the rest from the environment


def test_train_distributed_starts_the_runtime_before_training(monkeypatch, tmp_path):
    from csp_jax import cli, distributed
    from csp_jax.training import loop

    events = []
    monkeypatch.setattr(distributed, "initialize", lambda asked=False: events.append(("initialize", asked)))
    monkeypatch.setattr(loop, "train", lambda config, out, *args, **kwargs: events.append(("train", out)))
    assert cli.main(["train", "--config", "test", "--out", str(tmp_path / "run"), "--distributed"]) == 0
    assert events == [("initialize", True), ("train", tmp_path / "run")]
