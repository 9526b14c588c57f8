"""Perov-5 on a 2-core CPU in about 2.5 minutes.

Shrunk from `perov5`; the model is unchanged. 768 training crystals in batches
of 32 (24 steps, one epoch), 100 MALA steps per chain with the paper's schedule
end points (each step of the schedule 10x coarser), validation on 64 crystals,
checkpoints every 8 steps. Cells are capped at 20 atoms (j <= 4, which changes
6% of the draws). Enough to watch the loss and the samples move, not to
reproduce Table 1.
"""
from csp_jax.config import (Config, DataConfig, EvalConfig, ModelConfig, SamplerConfig,
                            TrainConfig)


def get_config() -> Config:
    return Config(
        name="perov5_quick",
        model=ModelConfig(features=32, num_conv=3, num_fc=2),
        data=DataConfig(dataset="perov_5", max_atoms=20, train_limit=768, val_limit=64),
        sampler=SamplerConfig(num_steps=100, segment_length=100),
        train=TrainConfig(batch_size=32, num_epochs=1, checkpoint_every=8),
        eval=EvalConfig(num_samples=20, limit=100),
    )
