"""Perov-5 with the paper's settings (SPEC §2 sizes, §3 sampler, §4 training)."""
from csp_jax.config import Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="perov5",
        model=ModelConfig(features=32, num_conv=3, num_fc=2),
        data=DataConfig(dataset="perov_5", max_atoms=35),
        train=TrainConfig(num_epochs=5),
    )
