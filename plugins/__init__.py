"""Built-in c4s plugins, loaded through the ``c4s`` entry-point group like any other."""
