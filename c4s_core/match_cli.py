"""``c4s match``: enroll a photo gallery with an exported model and search sketches.

A click group with no plugin of its own: ``enroll``, ``add``, ``remove``,
``search`` and ``info`` over a gallery store (``--store``: a folder index by
default, or ``SCHEME:LOCATION`` for a registered store such as
``milvus:gallery.db``; see :mod:`c4s_core.gallery.stores`) and an ONNX model
written by ``c4s export`` (run by :mod:`c4s_core.runtime`).
Identities are file stems (``DIR/alice.jpg``) or sub-folder names
(``DIR/alice/*.jpg``). Heavy imports happen inside the commands.

Every command refuses a damaged index with the file named (see
:mod:`c4s_core.gallery.folder` for what is verified when): ``search`` checks the
embeddings' sha256 before embedding a sketch and the thumbnails of the hits it
reports; ``add``/``remove`` load and verify the index before changing it, so
they never write new hashes over damage; ``info --verify`` checks every file.
A missing ``--model`` is the same one-line error for every command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .errors import C4SError, DataError

__all__ = ["match", "collect_photos", "collect_queries"]


class _MatchGroup(click.Group):
    """Turns c4s errors into clean click errors (also when used on its own)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except C4SError as err:
            raise click.ClickException(str(err)) from None


def collect_photos(folder: str | Path) -> list[tuple[str, Path]]:
    """``(identity, path)`` for images in ``folder`` (identity: file stem) and in
    its sub-folders (identity: sub-folder name), sorted."""
    from .data.io import list_images

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--photos {folder}: folder not found")
    out = [(p.stem, p) for p in list_images(folder)]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out += [(sub.name, p) for p in list_images(sub)]
    if not out:
        raise DataError(f"--photos {folder}: no images (looked for image files in it and in its sub-folders)")
    return out


def collect_queries(items: tuple[str, ...]) -> list[Path]:
    """Image files, and the images inside folders, in the order given."""
    from .data.io import list_images

    out: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise DataError(f"{p}: folder holds no images")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return out


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    from .config import parse_overrides

    return parse_overrides(list(pairs))


def _aligner_spec(name: str | None, pairs: tuple[str, ...], fallback: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{name, options}`` from --aligner/--aligner-option, else ``fallback`` (the index's)."""
    opts = _parse_options(pairs)
    if name == "none":
        return None
    if name:
        return {"name": name, "options": opts}
    if fallback is None:
        if opts:
            raise DataError("--aligner-option needs --aligner NAME (the index has no aligner)")
        return None
    return {"name": fallback["name"], "options": {**fallback.get("options", {}), **opts}}


def _embedder(model: str, device: str, batch_size: int, threads: int | None, aligner: dict[str, Any] | None):
    from . import get_registries
    from .runtime import OnnxEmbedder

    emb = OnnxEmbedder(model, device=device, batch_size=batch_size, threads=threads)
    if aligner is not None:
        opts = {"size": int(emb.input_size[0]), **aligner.get("options", {})}
        emb.aligner = get_registries().aligner.build(aligner["name"], opts)
    return emb


def model_sha256(model: str | Path) -> str:
    """The model file's sha256, to check an index against before loading it; a missing
    file is the error `match enroll` gives (onnxruntime's, via make_session)."""
    from .export import file_sha256

    path = Path(model)
    if not path.is_file():
        raise DataError(f"ONNX model {path} not found; write one with `c4s export`")
    try:
        return file_sha256(path)
    except OSError as err:
        raise DataError(f"ONNX model {path}: cannot read it ({err.strerror or err})") from None


def _model_info(emb) -> dict[str, Any]:
    m = emb.metadata
    return {"path": str(Path(emb.path).resolve()), "backbone": m.get("backbone"), "precision": m.get("precision"),
            "input_size": m.get("input_size"), "embedding_dim": emb.embedding_dim, "opset": m.get("opset"),
            "source_hash": m.get("source_hash"), "training_data_hash": m.get("training_data_hash")}


def _enroll_photos(emb, photos: str, on_error: str, progress: bool):
    pairs = collect_photos(photos)
    vecs, kept, skipped = emb.embed_files([p for _, p in pairs], on_error=on_error, progress=progress)
    ids = [pairs[k][0] for k in kept]
    sources = [str(pairs[k][1]) for k in kept]
    if not ids:
        raise DataError(f"--photos {photos}: no image could be embedded ({len(skipped)} skipped)")
    return ids, vecs, sources, skipped


def _enroll_into(gi, emb, photos: str, replace: bool, thumbnail_size: int, on_error: str, progress: bool,
                 as_json: bool) -> None:
    """Embed ``photos``, store their thumbnails, add the rows to ``gi``, commit, report (enroll and add)."""
    ids, vecs, sources, skipped = _enroll_photos(emb, photos, on_error, progress)
    if not replace and set(ids) & set(gi.identities()):
        gi.add(ids, vecs, sources)  # raises the "already in" error before any thumbnail is written
    thumbs = _store_thumbnails(gi, sources, thumbnail_size, progress)
    added = gi.add(ids, vecs, sources, replace=replace, thumbnails=thumbs)
    gi.save()
    _echo({**gi.summary(), **added, "skipped": [f"{p}: {why}" for p, why in skipped]}, as_json)


def _store_thumbnails(gi, sources: list[str], size: int, progress: bool) -> list[str | None] | None:
    """Copies of the enrolled images inside the index (for `c4s serve`); None when size is 0."""
    if size <= 0:
        return None
    from tqdm import tqdm

    from .data.io import load_image

    return [gi.put_thumbnail(load_image(p), max_side=size)
            for p in tqdm(sources, disable=not progress, unit="img", desc="thumbnails")]


def _echo(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    for k, v in data.items():
        if isinstance(v, list) and len(v) > 10:
            v = v[:10] + [f"... (+{len(v) - 10} more)"]
        click.echo(f"{k}: {v}")


_model_opt = click.option("--model", "model", required=True, type=click.Path(dir_okay=False),
                          help="ONNX model written by `c4s export`.")
_index_opt = click.option("--store", "--index", "index", required=True, metavar="URI",
                          help="Gallery store: an index folder, or SCHEME:LOCATION[?options] for a registered "
                          "store, e.g. milvus:gallery.db?collection=mugshots (see `c4s plugins --kind gallery_store`).")
_device_opt = click.option("--device", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu",
                           show_default=True, help="onnxruntime execution provider; an unavailable one is an error.")
_batch_opt = click.option("--batch-size", type=click.IntRange(1, 4096), default=64, show_default=True,
                          help="Images per onnxruntime run.")
_threads_opt = click.option("--threads", type=click.IntRange(1, 512), default=None,
                            help="onnxruntime intra-op threads (default: onnxruntime's choice).")
_aligner_opt = click.option("--aligner", default=None, metavar="NAME",
                            help="Aligner for the images (e.g. center, dlib; 'none': resize only). "
                            "Default: enroll resizes only; add and search use the index's aligner.")
_aligner_set_opt = click.option("--aligner-option", "aligner_options", multiple=True, metavar="KEY=VALUE",
                                help="Aligner option (repeatable), e.g. --aligner-option box=[0,0,1,1].")
_json_opt = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_progress_opt = click.option("--no-progress", is_flag=True, help="Hide progress bars.")
_thumb_opt = click.option("--thumbnail-size", type=click.IntRange(min=0), default=512, show_default=True,
                          help="Store a JPEG copy of each enrolled image in the index, at most this many "
                          "pixels a side, so `c4s serve` can show it; 0: store none.")
_on_error_opt = click.option("--on-error", type=click.Choice(["raise", "skip"]), default="raise", show_default=True,
                             help="An unreadable image stops the command (raise) or is reported and left out (skip).")


@click.group(cls=_MatchGroup)
def match():
    """Enroll a photo gallery with an exported model (`c4s export`) and search sketches against it.

    \b
    c4s match enroll --model out/model.onnx --photos mugshots/ --index gallery/
    c4s match search --model out/model.onnx --index gallery/ sketch.png --top-k 5
    """


@match.command()
@_model_opt
@click.option("--photos", required=True, type=click.Path(file_okay=False), help="Folder of photos: identity = file stem or sub-folder name.")
@_index_opt
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True, help="Storage type of the embeddings.")
@_aligner_opt
@_aligner_set_opt
@click.option("--overwrite", is_flag=True, help="Replace an existing index in --index.")
@_thumb_opt
@_device_opt
@_batch_opt
@_threads_opt
@_on_error_opt
@_progress_opt
@_json_opt
def enroll(model, photos, index, dtype, aligner, aligner_options, overwrite, thumbnail_size, device, batch_size,
           threads, on_error, no_progress, as_json):
    """Create a gallery index from a folder of photos."""
    from .gallery import create_store

    spec = _aligner_spec(aligner, aligner_options, None)
    emb = _embedder(model, device, batch_size, threads, spec)
    gi = create_store(index, model_hash=emb.model_hash, embedding_dim=emb.embedding_dim, dtype=dtype,
                      model=_model_info(emb), aligner=spec, overwrite=overwrite)
    _enroll_into(gi, emb, photos, True, thumbnail_size, on_error, not no_progress, as_json)


@match.command()
@_index_opt
@_model_opt
@click.option("--photos", required=True, type=click.Path(file_okay=False), help="Folder of photos to add (identity = file stem or sub-folder name).")
@click.option("--replace", is_flag=True, help="Re-enroll identities that are already in the index.")
@_aligner_opt
@_aligner_set_opt
@_thumb_opt
@_device_opt
@_batch_opt
@_threads_opt
@_on_error_opt
@_progress_opt
@_json_opt
def add(index, model, photos, replace, aligner, aligner_options, thumbnail_size, device, batch_size, threads,
        on_error, no_progress, as_json):
    """Add identities to an index (with the model that built it)."""
    from .gallery import open_store

    gi = open_store(index)
    gi.check_model(model_sha256(model), model)
    spec = _aligner_spec(aligner, aligner_options, gi.info.get("aligner"))
    emb = _embedder(model, device, batch_size, threads, spec)
    _enroll_into(gi, emb, photos, replace, thumbnail_size, on_error, not no_progress, as_json)


@match.command()
@_index_opt
@click.argument("identities", nargs=-1, required=True)
@click.option("--missing-ok", is_flag=True, help="Ignore identities that are not in the index.")
@_json_opt
def remove(index, identities, missing_ok, as_json):
    """Remove IDENTITIES (every image of each) from an index."""
    from .gallery import open_store

    gi = open_store(index)
    n = gi.remove(list(identities), missing_ok=missing_ok)
    gi.save()
    _echo({**gi.summary(), "rows_removed": n}, as_json)


@match.command()
@_index_opt
@_model_opt
@click.argument("sketches", nargs=-1, required=True)
@click.option("--top-k", type=click.IntRange(1, 100000), default=10, show_default=True, help="Identities per sketch.")
@click.option("--chunk-size", type=click.IntRange(1, 1 << 24), default=65536, show_default=True,
              help="Gallery rows scored at a time (bounds memory).")
@click.option("--backend", type=click.Choice(["exact", "int8", "bf16", "faiss"]), default="exact", show_default=True,
              help="Folder stores: exact: float32 chunked matrix product; int8: int8 candidates re-scored in float32, "
              "proven equal to exact, about 3x faster on large galleries; bf16: bfloat16 product (torch) with the "
              "candidates re-scored in float32; faiss: a FAISS index (pip install faiss-cpu). Other stores search "
              "with their own index.")
@click.option("--candidates", type=click.IntRange(1, 1 << 20), default=256, show_default=True,
              help="Rows re-scored in float32 per query for --backend int8 (more when the proof of exactness needs).")
@click.option("--faiss-factory", default="Flat", show_default=True,
              help="FAISS index description for --backend faiss: Flat (exact), HNSW32, IVF4096,Flat...")
@click.option("--faiss-nprobe", type=click.IntRange(1, 1 << 16), default=16, show_default=True,
              help="Search breadth for --backend faiss: IVF lists probed, or HNSW efSearch.")
@_aligner_opt
@_aligner_set_opt
@_device_opt
@_batch_opt
@_threads_opt
@_json_opt
def search(index, model, sketches, top_k, chunk_size, backend, candidates, faiss_factory, faiss_nprobe, aligner,
           aligner_options, device, batch_size, threads, as_json):
    """Rank gallery identities for each SKETCH (image files or folders)."""
    from .gallery import open_store

    gi = open_store(index, mmap=True)
    gi.check_model(model_sha256(model), model)
    gi.verify(thumbnails=False)  # the embeddings' sha256, before any sketch is embedded
    spec = _aligner_spec(aligner, aligner_options, gi.info.get("aligner"))
    emb = _embedder(model, device, batch_size, threads, spec)
    paths = collect_queries(sketches)
    vecs, kept, skipped = emb.embed_files(paths, on_error="raise")
    opts = {"chunk_size": chunk_size, "faiss_factory": faiss_factory, "faiss_nprobe": faiss_nprobe,
            "candidates": candidates} if gi.kind == "folder" else {}
    hits = gi.search(vecs, top_k=top_k, backend=backend, **opts)
    gi.verify_thumbnails({h.row for hs in hits for h in hs})  # the images of what is reported are intact
    results = [{"query": str(paths[k]), "hits": [h.as_dict() for h in hs]} for k, hs in zip(kept, hits, strict=True)]
    if as_json:
        click.echo(json.dumps({"index": str(index), "top_k": top_k, "results": results,
                               "skipped": [{"path": p, "reason": why} for p, why in skipped]}, indent=2))
        return
    for r in results:
        click.echo(f"{r['query']}:")
        click.echo(f"  {'rank':>4}  {'score':>8}  {'identity':<24} source")
        for rank, h in enumerate(r["hits"], 1):
            click.echo(f"  {rank:>4}  {h['score']:>8.4f}  {h['identity']:<24} {h['source']}")
    for p, why in skipped:
        click.echo(f"skipped {p}: {why}", err=True)


@match.command()
@_index_opt
@click.option("--identities", "show_ids", is_flag=True, help="List the enrolled identities.")
@click.option("--verify", is_flag=True, help="Check the files' sha256 against index.json.")
@_json_opt
def info(index, show_ids, verify, as_json):
    """Describe an index: model, counts, dtype, aligner."""
    from .gallery import open_store

    gi = open_store(index, mmap=True, verify=verify)
    data = gi.summary()
    if verify:
        data["verified"] = True
    if show_ids:
        data["identity_list"] = gi.identities()
    _echo(data, as_json)
