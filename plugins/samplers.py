"""Built-in samplers plugin (being written)."""
