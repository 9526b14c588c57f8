"""Perov-5 trained on a 2-core CPU in under 2 hours (the shipped model).

The model, the schedule's end points, Adam and the loss are the paper's
(`perov5`); what is shrunk is the work per optimizer step, so that many more
steps fit (docs/training.md has the measurements behind each choice):

- 32 chains per batch (paper 128) and 300 MALA steps per training chain
  (paper 1000; the same geometric schedule, each step 3.3x coarser), with
  the neighbour capacity refitted every 50 steps;
- no supercell expansions for the negatives (`max_atoms` 5, so j = 1): every
  Perov-5 cell has the 5 atoms of its reduced formula, the test chains too;
- 3 epochs of the 11,356 training crystals (1,062 steps), validation on 128;
- evaluation and prediction chains keep the paper's 1000 steps.
"""
from csp_jax.config import (Config, DataConfig, EvalConfig, ModelConfig, SamplerConfig,
                            TrainConfig)


def get_config() -> Config:
    return Config(
        name="perov5_cpu",
        model=ModelConfig(features=32, num_conv=3, num_fc=2),
        data=DataConfig(dataset="perov_5", max_atoms=5, val_limit=128),
        sampler=SamplerConfig(num_steps=300, segment_length=50),
        train=TrainConfig(batch_size=32, num_epochs=3, checkpoint_every=59, keep_checkpoints=0),
        eval=EvalConfig(num_steps=1000),
    )
