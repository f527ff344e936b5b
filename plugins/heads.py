"""Built-in heads plugin (being written)."""
