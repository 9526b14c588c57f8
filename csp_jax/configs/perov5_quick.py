"""Perov-5 on a 2-core CPU in about 15 minutes.

Shrunk from `perov5` (the model is unchanged): 1,024 training crystals in
batches of 32 (32 steps, one epoch), 200 MALA steps per chain with the paper's
schedule end points (so each step of the schedule is 5x coarser), validation on
64 crystals, checkpoints every 8 steps. Cells are capped at 20 atoms (j <= 4).
"""
from csp_jax.config import (Config, DataConfig, EvalConfig, ModelConfig, SamplerConfig,
                            TrainConfig)


def get_config() -> Config:
    return Config(
        name="perov5_quick",
        model=ModelConfig(features=32, num_conv=3, num_fc=2),
        data=DataConfig(dataset="perov_5", max_atoms=20, train_limit=1024, val_limit=64),
        sampler=SamplerConfig(num_steps=200, segment_length=100),
        train=TrainConfig(batch_size=32, num_epochs=1, checkpoint_every=8),
        eval=EvalConfig(num_samples=20, limit=100),
    )
