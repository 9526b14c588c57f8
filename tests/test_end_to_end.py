"""The run command end to end on the `test` config: train, resume, evaluate.

Tests `csp_jax.cli` (the `run` and `evaluate` sub-commands), `experiments/run.py` and the `csp-jax`
script.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from csp_jax import cli as run
from csp_jax.config import available_configs
from helpers import REPO, checkout_env


@pytest.mark.slow  # training and an evaluation through the command: about 20 s
def test_train_resume_evaluate(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    common = ["--config", "test", "--out", str(out), "--data-dir", str(data_dir)]
    assert run.main(common + ["--max-steps", "2"]) == 0
    assert "training:  50% 2/4 [" in capsys.readouterr().out
    assert run.main(common) == 1  # the run exists: resume must be asked for
    assert "--resume" in capsys.readouterr().err
    assert run.main(common + ["--resume", "--set", "train.checkpoint_every=4"]) == 0
    printed = capsys.readouterr().out
    assert "resumed from step 2" in printed and "100% 4/4 [" in printed and "validation loss" in printed
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 4]  # four training steps, then the epoch's validation

    # Two chains, like the training's: the same compiled programs. (Predicting from a run
    # directory through the command: tests/test_predict.py.)
    assert run.main(["evaluate", "--checkpoint", str(out), "--limit", "2", "--num-samples", "1",
                     "--data-dir", str(data_dir), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "test_metrics.json").read_text())
    assert metrics["num_crystals"] == 2 and metrics["samples_per_crystal"] == 1
    assert sum(metrics["pair_counts"].values()) == 2
    assert (tmp_path / "eval" / "test_metrics.md").is_file()


@pytest.mark.slow  # the command in subprocesses
def test_run_script_and_console_script_are_the_cli():
    """`python experiments/run.py` and the installed `csp-jax` both reach `csp_jax.cli.main`."""
    script = subprocess.run([sys.executable, str(REPO / "experiments" / "run.py"), "--config", "nope"],
                            capture_output=True, text=True, timeout=300, env=checkout_env())
    assert script.returncode == 1
    assert script.stderr.strip() == f"error: unknown config 'nope'; choose from {', '.join(available_configs())}"
    console = subprocess.run([str(Path(sys.executable).parent / "csp-jax"), "--help"],
                             capture_output=True, text=True, timeout=300, env=checkout_env())
    assert console.returncode == 0
    assert all(c in console.stdout for c in ("train", "evaluate", "predict", "displacement", "bench"))
