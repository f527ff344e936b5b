"""``python -m c4s_core.serve``: the serve command without the c4s CLI (the benchmark runs it)."""

from .command import serve_command

if __name__ == "__main__":
    serve_command()
