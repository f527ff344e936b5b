"""``c4s serve``: the click command and the binding policy."""

import click

from ..errors import C4SError, ConfigError, missing_dependency
from .app import create_app
from .guard import LOOPBACK_NAMES, is_loopback
from .service import SearchService
from .uploads import ServeLimits

__all__ = ["serve_command", "build_server"]
_LOOPBACK_NAMES = LOOPBACK_NAMES


@click.command("serve")
@click.option("--store", "--index", "index", required=True, metavar="URI",
              help="Gallery store (`c4s match enroll`): an index folder, or SCHEME:LOCATION[?options], "
              "e.g. milvus:gallery.db?collection=mugshots.")
@click.option("--model", "model", required=True, type=click.Path(dir_okay=False), help="ONNX model that built the index (`c4s export`).")
@click.option("--generator", default=None, type=click.Path(file_okay=False),
              help="Diffusion generator folder (`c4s train-generator`): show sketches drawn from each candidate. Loaded on first use.")
@click.option("--generator-device", default="auto", show_default=True, help="Torch device of the generator (auto, cpu, cuda...).")
@click.option("--generator-steps", type=click.IntRange(1, 1000), default=50, show_default=True, help="DDIM steps per generated sketch.")
@click.option("--style", "default_style", default=None, help="Default sketch style for generated sketches.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
              help="onnxruntime execution provider; an unavailable one is an error.")
@click.option("--threads", type=click.IntRange(1, 512), default=None, help="onnxruntime intra-op threads.")
@click.option("--backend", type=click.Choice(["exact", "int8", "bf16"]), default="exact", show_default=True,
              help="Search backend of a folder store (see `c4s match search --help`); int8 is exact-equivalent "
              "and about 3x faster on large galleries (its codes are built at start).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --token (or --insecure).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to bind.")
@click.option("--token", envvar="C4S_SERVE_TOKEN", default=None, show_envvar=True,
              help="Require this token on every request (at least 16 characters).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without a token.")
@click.option("--top-k", type=click.IntRange(1, 100), default=10, show_default=True, help="Default identities per search.")
@click.option("--max-upload-mb", type=click.FloatRange(0.01, 512), default=10.0, show_default=True, help="Largest upload.")
@click.option("--max-pixels", type=click.IntRange(1, 200_000_000), default=25_000_000, show_default=True,
              help="Largest uploaded image, in pixels.")
@click.option("--max-side", type=click.IntRange(16, 65535), default=8192, show_default=True, help="Largest uploaded image side.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="uvicorn log level.")
def serve_command(index, model, generator, generator_device, generator_steps, default_style, device, threads, backend,
                  host, port, token, insecure, top_k, max_upload_mb, max_pixels, max_side, log_level):
    """Serve a web page to search a gallery index with a sketch (and a JSON API, see /docs).

    \b
    c4s serve --index gallery/ --model out/model.onnx
    then open http://127.0.0.1:8000/
    """
    try:
        app, url = build_server(index, model, generator=generator, generator_device=generator_device,
                                generator_steps=generator_steps, default_style=default_style, device=device,
                                threads=threads, backend=backend, host=host, port=port, token=token, insecure=insecure, top_k=top_k,
                                limits=ServeLimits(max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                                                   max_pixels=max_pixels, max_side=max_side))
    except C4SError as err:
        raise click.ClickException(str(err)) from None
    try:
        import uvicorn
    except ImportError:
        raise click.ClickException(str(missing_dependency("uvicorn", "serve", "c4s serve"))) from None
    click.echo(f"c4s serve: {url}  (index {index}, model {model}, device {device}; Ctrl+C stops)", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False, timeout_keep_alive=5,
                limit_concurrency=256)


def build_server(index, model, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 insecure: bool = False, top_k: int = 10, limits: ServeLimits = ServeLimits(), device: str = "cpu",
                 threads: int | None = None, generator=None, generator_device: str = "auto",
                 generator_steps: int = 50, default_style: str | None = None, backend: str = "exact"):
    """Check the binding policy, load the service and return ``(app, url)``."""
    if token is not None and len(token) < 16:
        raise ConfigError("--token must be at least 16 characters; make one with: "
                          "python -c \"import secrets; print(secrets.token_urlsafe(24))\"")
    loopback = is_loopback(host)
    if not loopback and token is None and not insecure:
        raise ConfigError(f"--host {host} is not a loopback address: anyone who can reach it could search the "
                          "gallery. Pass --token (or set C4S_SERVE_TOKEN), or --insecure if the network is trusted")
    service = SearchService(index, model, device=device, threads=threads, generator=generator,
                            generator_device=generator_device, generator_steps=generator_steps,
                            default_style=default_style, backend=backend)
    # Without a token, only answer requests addressed to this machine by a loopback name (DNS rebinding).
    allowed = None if (token is not None or not loopback) else (_LOOPBACK_NAMES | {"127.0.0.1", "::1", host.strip("[]").lower()})
    app = create_app(service, token=token, limits=limits, allowed_hosts=allowed, default_top_k=top_k)
    shown = f"[{host}]" if ":" in host else host
    return app, f"http://{shown}:{port}/"
