"""Built-in gan generator plugin (being written)."""
