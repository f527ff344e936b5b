"""Built-in conditioners plugin (being written)."""
