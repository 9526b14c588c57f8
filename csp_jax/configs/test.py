"""A tiny config that runs the whole pipeline in seconds (tests, smoke runs).

Perov-5's model, 8 training crystals in batches of 2, 10 MALA steps, and no
expanded cells in training (q = 0: every negative chain has the data crystal's
own cell, so one program shape serves every step).
"""
from csp_jax.config import (Config, DataConfig, EvalConfig, ModelConfig, SamplerConfig,
                            TrainConfig)


def get_config() -> Config:
    return Config(
        name="test",
        model=ModelConfig(features=32, num_conv=3, num_fc=2),
        data=DataConfig(dataset="perov_5", max_atoms=10, train_limit=8, val_limit=2, geometric_q=0.0),
        sampler=SamplerConfig(num_steps=10, segment_length=10),
        train=TrainConfig(batch_size=2, num_epochs=1, checkpoint_every=2),
        eval=EvalConfig(num_samples=2, batch_size=8, limit=3),
    )
