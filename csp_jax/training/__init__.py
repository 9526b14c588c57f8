"""Training an energy by contrastive divergence (SPEC §4).

- `step`: the pure, jitted `update_step` / `validation_step` and the state;
- `loop`: `train(config, run_dir)`, the host loop (data order, negatives from
  the chain driver, capacities, checkpoints, metrics, resume);
- `curves`: the training-curve figure; `parallel`: data parallelism over devices.
"""
from csp_jax.training.loop import TrainingDiverged, train
from csp_jax.training.step import TrainState, init_train_state, update_step, validation_step

__all__ = ["TrainState", "TrainingDiverged", "init_train_state", "train",
           "update_step", "validation_step"]
