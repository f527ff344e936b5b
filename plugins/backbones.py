"""Built-in backbones plugin (being written)."""
