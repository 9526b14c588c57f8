"""Evaluating a trained energy: the paper's Table 1 and Figure 2.

- `evaluate`: samples per test crystal (resumable), stored and scored;
- `matching`: StructureMatcher pairs in a process pool with time-outs;
- `metrics`: match rate / RMSE, sample files, the report beside the paper's table;
- `displacement`: energy against the displacement of one atom (SPEC §6).
"""
from csp_jax.evaluation.displacement import displacement_experiment
from csp_jax.evaluation.evaluate import evaluate, recompute

__all__ = ["displacement_experiment", "evaluate", "recompute"]
