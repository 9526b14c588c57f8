"""MP-20 with the paper's settings: 64 / 6 / 4 model, 1 epoch."""
from csp_jax.config import Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="mp20",
        model=ModelConfig(features=64, num_conv=6, num_fc=4),
        data=DataConfig(dataset="mp_20", max_atoms=80),
        train=TrainConfig(num_epochs=1),
    )
