"""Named configs: one module per name, each with `get_config() -> Config`."""
