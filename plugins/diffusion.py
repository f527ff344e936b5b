"""Built-in diffusion plugin (being written)."""
