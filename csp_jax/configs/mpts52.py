"""MPTS-52 with the paper's settings: 64 / 6 / 4 model, 1 epoch."""
from csp_jax.config import Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="mpts52",
        model=ModelConfig(features=64, num_conv=6, num_fc=4),
        data=DataConfig(dataset="mpts_52", max_atoms=104),
        train=TrainConfig(num_epochs=1),
    )
