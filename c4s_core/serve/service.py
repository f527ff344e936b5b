"""What ``c4s serve`` serves: a gallery store kept current, the model, and the search over both.

- :class:`LiveGallery`: the store as committed, reopened when a writer commits
  a new generation (``c4s match add`` while serving). A search holds the store
  object it started with, so it sees one whole generation, never a half-written
  one; a changed store built by another model, or a damaged one, is refused and
  the old one kept. The embeddings' sha256 (folder store) is checked at start
  and at each reload (once per file), not in every search.
- :class:`SearchService`: the model (aligner + ONNX embedder), the live
  gallery and the optional :class:`~c4s_core.serve.generator.SketchGenerator`.
  The thumbnails of the hits are checked before a search answers, and every
  image is hashed as it is served: a damaged one is a 500 naming it.
"""

import re
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ..errors import C4SError
from ..gallery import IndexError_
from .uploads import UploadError, png_data_url

__all__ = ["LiveGallery", "SearchService"]

_IMAGE_NAME = re.compile(r"^[0-9a-f]{32}\.jpg$")


class LiveGallery:
    """A gallery store and its facts, swapped whole when a new generation is committed."""

    def __init__(self, uri: str | Path, model_hash: str, model_path: Path, backend: str = "exact"):
        from ..gallery import open_store

        self.uri = str(uri)
        self.model_hash, self.model_path, self.backend = model_hash, model_path, backend
        gi = open_store(self.uri, mmap=True)
        gi.check_model(model_hash, model_path)
        self._warm(gi)
        self._lock = threading.Lock()
        self._set(gi)
        self._checked = time.monotonic()
        self.every_s = 1.0  # how often a request looks for a new generation
        self.reload_error: str | None = None

    def _warm(self, gi, prior=None) -> None:
        gi.verify(thumbnails=False)  # the embeddings' sha256 now, not in the first request
        if self.backend == "int8" and gi.kind == "folder" and len(gi):
            # built here, not in a request; after appends only the new rows are coded
            gi.int8_codes(prior=prior if prior is not None and prior.kind == "folder" else None)

    def _set(self, gi) -> None:
        s = gi.summary()
        self.facts = {"rows": len(gi), "identities": int(s["identities"]), "images_stored": int(s["thumbnails"]),
                      "generation": gi.generation, "dtype": gi.info.get("dtype"), "aligner": gi.info.get("aligner"),
                      "store": gi.kind}
        self.store = gi  # one reference swap: a search in flight keeps the store it started with

    def refresh(self, every_s: float | None = None) -> None:
        """Reopen the store if a new generation was committed (checked at most every ``every_s``)."""
        every_s = self.every_s if every_s is None else every_s
        now = time.monotonic()
        if now - self._checked < every_s or not self._lock.acquire(blocking=False):
            return  # another request is reloading: this one searches the store as it is
        try:
            self._checked = now
            from ..gallery import open_store

            try:
                committed = self.store.committed_generation()
            except C4SError as err:
                self.reload_error = f"cannot read {self.uri}: {err}"
                return
            if committed == self.store.generation:
                return
            try:
                gi = open_store(self.uri, mmap=True)
                gi.check_model(self.model_hash, self.model_path)
                self._warm(gi, prior=self.store)
            except C4SError as err:
                self.reload_error = f"kept the index as opened: {err}"
                return
            self._set(gi)
            self.reload_error = None
        finally:
            self._lock.release()


class SearchService:
    """The model, the gallery store and the optional generator behind the app."""

    def __init__(self, index: str | Path, model: str | Path, device: str = "cpu", threads: int | None = None,
                 generator: str | Path | None = None, generator_device: str = "auto", generator_steps: int = 50,
                 default_style: str | None = None, backend: str = "exact"):
        from ..match_cli import _embedder, _model_info, model_sha256

        self.index_path = Path(index)
        self.index_uri = str(index)
        self.model_path = Path(model)
        self.backend = backend
        self.gallery = LiveGallery(self.index_uri, model_sha256(self.model_path), self.model_path, backend)
        self.embedder = _embedder(str(self.model_path), device, 64, threads, self.gallery.store.info.get("aligner"))
        self.model_info = _model_info(self.embedder)
        self.generator = None
        if generator is not None:
            from .generator import SketchGenerator

            self.generator = SketchGenerator(generator, generator_device, generator_steps, default_style)

    # the 1 s reload throttle (tests reset it)
    @property
    def _checked(self) -> float:
        return self.gallery._checked

    @_checked.setter
    def _checked(self, value: float) -> None:
        self.gallery._checked = value

    @property
    def index(self):
        return self.gallery.store

    @property
    def reload_error(self) -> str | None:
        return self.gallery.reload_error

    def refresh(self, every_s: float | None = None) -> None:
        self.gallery.refresh(every_s)

    def status(self) -> dict[str, Any]:
        g = self.gallery
        return {
            "model": {**self.model_info, "hash": self.embedder.model_hash, "file": self.model_path.name},
            "index": {"name": self.index_path.name, **g.facts, "backend": self.backend,
                      "reload_error": g.reload_error},
            "device": {"name": self.embedder.device, "providers": self.embedder.providers},
            "generator": None if self.generator is None else self.generator.status(),
        }

    # -- search ---------------------------------------------------------------------------
    def align(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The exact model input for ``image`` (aligned if the index has an aligner) and facts."""
        emb = self.embedder
        facts: dict[str, Any] = {"aligner": None}
        if emb.aligner is not None:
            res = emb.aligner.align([image], ["upload"])[0]
            facts = {"aligner": getattr(emb.aligner, "name", type(emb.aligner).__name__), "status": res.status,
                     "score": None if res.score is None else round(float(res.score), 4),
                     "box": None if res.box is None else [round(float(v), 1) for v in res.box]}
            if res.image is None:
                raise UploadError(f"upload: the aligner found no face ({res.message or res.status}); "
                                  "upload a tighter crop of the face", 422)
            image = res.image
        return emb.prepare([image], ["upload"])[0], facts

    def search(self, image: np.ndarray, top_k: int = 10) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.refresh()
        crop, facts = self.align(image)
        vec = self.embedder.run(crop[None])
        gi = self.index  # this search's generation, whatever a reload does meanwhile
        opts = {"backend": self.backend} if gi.kind == "folder" else {}
        hits = gi.search(vec, top_k=top_k, **opts)[0]
        try:  # the images shown beside the scores are the enrolled ones
            gi.verify_thumbnails([h.row for h in hits])
        except IndexError_ as err:
            raise UploadError(str(err), 500) from None
        return {
            "query": {"width": int(image.shape[1]), "height": int(image.shape[0]),
                      "input_size": list(self.embedder.input_size), "aligned": png_data_url(crop), **facts},
            "top_k": top_k,
            "hits": [_hit(rank, h) for rank, h in enumerate(hits, 1)],
            "index_generation": gi.generation,
            "index_rows": len(gi),
            "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2),
        }

    def candidate(self, identity: str) -> dict[str, Any]:
        self.refresh()
        images = self.index.images_of(identity)
        if images is None:
            raise UploadError(f"identity {identity!r} is not in this index", 404)
        return {"identity": identity, "rows": len(images),
                "images": [{"image": f"images/{im['thumb']}" if im.get("thumb") else None,
                            "source": Path(im["source"]).name if im.get("source") else ""} for im in images]}

    def image_bytes(self, name: str) -> bytes:
        """A stored gallery image by its index name (never a path from the request)."""
        if not _IMAGE_NAME.match(name):
            raise UploadError(f"{name!r} is not an image name of this index", 400)
        self.refresh()
        gi = self.index
        if not gi.has_thumbnail(name):
            raise UploadError(f"image {name!r} is not in this index", 404)
        if gi.kind == "folder":
            from ..gallery import THUMBS_DIR

            if not (gi.folder / THUMBS_DIR / name).is_file():
                raise UploadError(f"image {name!r} is listed by the index but its file is missing; re-enroll", 410)
        try:
            return gi.read_thumbnail(name)  # hashed on every read: never a changed image
        except IndexError_ as err:
            raise UploadError(str(err), 500) from None

    # -- generated sketches ---------------------------------------------------------------
    def sketches(self, identity: str, style: str | None, count: int = 2, seed: int = 0) -> dict[str, Any]:
        if self.generator is None:
            raise UploadError("no generator: start `c4s serve` with --generator CHECKPOINT_DIR", 404)
        style = self.generator.check_style(style)
        info = self.candidate(identity)
        first = next((im["image"] for im in info["images"] if im["image"]), None)
        if first is None:
            raise UploadError(f"identity {identity!r} has no image stored in the index; re-enroll with "
                              "--thumbnail-size > 0 to generate sketches", 409)
        return {"identity": identity, **self.generator.draw(self.image_bytes(first.split("/")[-1]), style, count, seed)}


def _hit(rank: int, h) -> dict[str, Any]:
    return {"rank": rank, "identity": h.identity, "score": round(float(h.score), 6),
            "source": Path(h.source).name if h.source else "",
            "image": f"images/{h.thumb}" if h.thumb else None,
            "candidate": f"candidates/{quote(h.identity, safe='')}"}
