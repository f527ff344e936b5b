"""Built-in procedural generator plugin (being written)."""
