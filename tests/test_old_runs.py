"""Run directories written before the package was laid out by stage still load and resume.

`fixtures/run_before_layout` is a `test`-config run of 2 steps written by
csp_jax 0.1.0 as first released (flat modules).

Tests `csp_jax.models` and `csp_jax.models.checkpoint` (loading), `csp_jax.training` (resume).
"""
import shutil

import jax
import numpy as np
import pytest

from csp_jax.geometry.neighbors import NeighborCapacity
from csp_jax import models
from csp_jax.models import checkpoint
from csp_jax.training import train
from helpers import REPO, perovskite

OLD_RUN = REPO / "tests" / "fixtures" / "run_before_layout"
# The energy of cubic SrTiO3 (helpers.perovskite, float32), computed by the code that wrote the run.
OLD_ENERGY = 1.0284541845321655


def test_old_run_loads_with_the_same_energy():
    config, model, variables = models.load(OLD_RUN)
    assert config.name == "test" and config.eval.num_steps == 0  # a field added later takes its default
    energy, _ = jax.jit(model.energy, static_argnums=2)(variables, perovskite(dtype=np.float32),
                                                       NeighborCapacity.for_atoms(5))
    assert float(energy) == pytest.approx(OLD_ENERGY, rel=1e-6)


@pytest.mark.slow  # a training step from an old run: about 35 s
def test_old_run_resumes(tmp_path, data_dir):
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    state = train(checkpoint.read_config(run), run, data_dir, resume=True, max_steps=1, log=lambda *_: None)
    assert int(state.step) == 3 and checkpoint.manager(run).latest_step() == 3
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(state.variables))
