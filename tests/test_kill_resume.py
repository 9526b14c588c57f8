"""Killed runs resume exactly: SIGKILL at random moments, `--resume`, same final result.

Training (the `test` config, 16 steps, a checkpoint every step) is killed five
times: at four random moments just after the second step each process ran and
once while a checkpoint is being written, so that each kill leaves progress
and steps to resume. Each time it is resumed with `--resume`; the final
parameters must equal, bit for bit, those of an uninterrupted run. Before the
last resume the newest checkpoint gets a damaged copy one step ahead: it is
skipped, named in the log, and never loaded. An evaluation killed after its
first batch and resumed gives the same samples as one left alone.

Tests `csp_jax.training.loop` and `csp_jax.models.checkpoint` (resume),
`csp_jax.evaluation.evaluate` (resume) and `csp_jax.files` (atomic writes), through the command.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from csp_jax import models
from helpers import REPO, checkout_env

pytestmark = pytest.mark.slow  # the command in subprocesses, killed and resumed

RUN = str(REPO / "experiments" / "run.py")
TRAIN = ["--config", "test", "--set", "train.num_epochs=4", "--set", "train.checkpoint_every=1"]
STEPS = 16  # 4 epochs of 4 steps
KILL_DELAY = 0.3  # s after a step's line: at most one more step runs on a fast machine
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax writes a checkpoint there, then renames it


def command(args, env):
    return subprocess.Popen([sys.executable, RUN, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


def kill_when(proc, ready, delay: float, count: int = 1) -> str:
    """Read `proc`'s output until `count` lines have satisfied `ready`, wait `delay` s, SIGKILL it."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        count -= bool(ready(line))
        if count == 0:
            time.sleep(delay)
            break
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=60)
    return "".join(lines) + rest


def kill_during_checkpoint_write(proc, checkpoints) -> bool:
    """SIGKILL `proc` as soon as an orbax temporary checkpoint folder appears; True if it did."""
    seen = threading.Event()

    def watch():
        while proc.poll() is None:
            if checkpoints.is_dir() and any(TMP_SUFFIX in p.name for p in checkpoints.iterdir()):
                proc.send_signal(signal.SIGKILL)
                seen.set()
                return
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    proc.communicate(timeout=600)
    watcher.join()
    return seen.is_set()


def variables_of(run_dir):
    return models.load(run_dir).variables


def same_tree(a, b) -> bool:
    import jax

    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture
def env(data_dir, tmp_path):
    return checkout_env(CSP_JAX_DATA=str(data_dir), PYTHONUNBUFFERED="1",
                        CSP_JAX_CACHE=os.environ.get("CSP_JAX_CACHE", str(tmp_path / "cache")))


def kill_five_times(run, env, rng):
    """Start training into `run` and kill it five times (resuming it after each kill); returns
    the kinds of kill, or None when the checkpoint-write kill missed its
    moment (a loaded machine can finish a write between two looks): that run then ran to its end."""
    kills, logs = [], []  # logs: the killed processes' output, for a failure's message
    proc = command([*TRAIN, "--out", str(run)], env)
    while True:
        # After a second step's line, so that the first step's checkpoint is written (a save
        # finishes before the next step starts): every kill leaves progress, however slow the machine.
        logs.append(kill_when(proc, lambda line: "training:" in line, rng.uniform(0.0, KILL_DELAY), count=2))
        kills.append("random")
        assert "trained steps" not in logs[-1], "the run ended before its kill:\n" + "".join(logs)
        if len(kills) == 5:
            return kills
        proc = command([*TRAIN, "--out", str(run), "--resume"], env)
        if len(kills) == 2:  # the third kill: while a checkpoint is written
            if not kill_during_checkpoint_write(proc, run / "checkpoints"):
                return None
            kills.append("checkpoint write")
            proc = command([*TRAIN, "--out", str(run), "--resume"], env)


def test_training_killed_five_times_resumes_to_identical_parameters(tmp_path, env, capsys):
    reference = tmp_path / "reference"
    finish(command([*TRAIN, "--out", str(reference)], env))

    rng = random.Random(0)
    for attempt in range(3):
        run = tmp_path / f"killed_{attempt}"
        if (kills := kill_five_times(run, env, rng)) is not None:
            break
    else:
        pytest.fail("three runs wrote their checkpoints too fast to be killed during a write")
    newest = damage_a_copy_of_the_newest_checkpoint(run / "checkpoints")
    final = finish(command([*TRAIN, "--out", str(run), "--resume"], env))
    identical = same_tree(variables_of(run), variables_of(reference))
    with capsys.disabled():
        print(f"\ntraining kills: {len(kills)} ({', '.join(kills)}); damaged checkpoint "
              f"{newest + 1} skipped: {f'skipping checkpoint {newest + 1}' in final}; final "
              f"parameters identical to an uninterrupted run: {identical}")
    assert f"skipping checkpoint {newest + 1}" in final and f"resumed from step {newest}" in final
    assert identical
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train"]
    assert steps == list(range(1, STEPS + 1))  # one record per step, none lost or repeated


def damage_a_copy_of_the_newest_checkpoint(checkpoints) -> int:
    """Copy the newest checkpoint one step ahead with its files cut in half; return its step."""
    newest = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    damaged = checkpoints / str(newest + 1)
    shutil.copytree(checkpoints / str(newest), damaged)
    for path in (damaged / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 100:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return newest


def test_evaluation_killed_after_a_batch_resumes_to_the_same_samples(tmp_path, env):
    model = tmp_path / "model"
    shutil.copytree(REPO / "csp_jax" / "pretrained" / "perov5", model)
    config = json.loads((model / "config.json").read_text())
    config["eval"]["num_steps"] = 20  # short chains: the test is about files, not quality
    (model / "config.json").write_text(json.dumps(config))
    args = ["evaluate", "--checkpoint", str(model), "--limit", "2", "--num-samples", "2",
            "--batch-size", "2"]
    finish(command([*args, "--out", str(tmp_path / "whole")], env))
    proc = command([*args, "--out", str(tmp_path / "killed")], env)
    parts = tmp_path / "killed" / "test_parts"
    while proc.poll() is None and not list(parts.glob("rows_*.npz")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert list(parts.glob("rows_*.npz")), "the evaluation ended before its first batch was saved"
    finish(command([*args, "--out", str(tmp_path / "killed"), "--resume"], env))
    with np.load(tmp_path / "whole" / "test_samples.npz") as a, \
            np.load(tmp_path / "killed" / "test_samples.npz") as b:
        assert set(a.files) == set(b.files)
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])
    whole = json.loads((tmp_path / "whole" / "test_metrics.json").read_text())
    killed = json.loads((tmp_path / "killed" / "test_metrics.json").read_text())
    assert whole["match_rate"] == killed["match_rate"] and whole["rmse"] == killed["rmse"]
