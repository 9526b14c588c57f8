"""Models trained with csp_jax and shipped with it (no download needed).

Each model is a folder `csp_jax/pretrained/<name>/` holding `config.json`
(the training config), `variables.npz` (the energy's variables, no optimizer
state), `model.json` (how it was trained) and `training_curve.png`; load one
with `csp_jax.models.load("<name>")`. The same folder works wherever a run
directory does: `csp-jax predict --checkpoint csp_jax/pretrained/perov5` (or
`pretrained/perov5` from the repository root). `export` writes such a folder
from a training run.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from csp_jax import models
from csp_jax.models import checkpoint


def export(run_dir, out_dir, **record) -> Path:
    """Write the newest checkpoint of `run_dir` as a model folder (config, variables,
    model.json, and the run's training_curve.png).

    record: what to note in model.json beside the training step (e.g. the
    training wall time and the evaluation's numbers).
    """
    config, _, variables = models.load(Path(run_dir))
    out_dir = Path(out_dir)
    checkpoint.write_config(out_dir, config)
    checkpoint.save_variables(out_dir / checkpoint.VARIABLES_FILE, variables)
    curve = Path(run_dir) / "training_curve.png"
    if curve.is_file():
        shutil.copy(curve, out_dir / curve.name)
    step = checkpoint.manager(Path(run_dir)).latest_step()
    (out_dir / models.INFO_FILE).write_text(
        json.dumps({"config": config.name, "step": step, **record}, indent=1) + "\n")
    return out_dir
