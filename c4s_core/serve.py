"""``c4s serve``: an investigator's web page for sketch-to-mugshot search.

A FastAPI application over one gallery index (``c4s match enroll``) and the
ONNX model that built it (``c4s export``)::

    c4s serve --index gallery/ --model out/model.onnx [--generator ckpt/]

``GET /`` is the page: drop a sketch, see it aligned (the exact model input),
get the top-k identities as a ranked grid; click one to compare it with the
sketch at full size (and, with ``--generator``, with sketches c4s draws from
that mugshot). The JSON API behind it is documented at ``/docs``:

- ``POST /search``: multipart field ``image`` (+ ``top_k``): aligned crop and hits;
- ``GET /candidates/{identity}``: that identity's enrolled images;
- ``GET /images/{name}``: a gallery image, only from the index's ``thumbs/``;
- ``POST /candidates/{identity}/sketches``: generated sketches (``--generator``);
- ``GET /api/status``: model, index, device, generator, limits.

Safe by default: binds to 127.0.0.1; binding elsewhere needs ``--token`` (or
``--insecure``); a token, when set, is required on every request (header
``Authorization: Bearer``/``X-C4S-Token``, or the cookie the login form sets).
Uploads are limited in bytes, pixels and side length; non-images and corrupt
images get a 4xx with a message. No value from a request ever becomes a file
path: identities and image names are looked up in the index's own tables.

Heavy imports (fastapi, uvicorn, onnxruntime, torch) happen inside functions so
``c4s --help`` stays light.
"""


import base64
import hashlib
import hmac
import io
import ipaddress
import json
import re
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import numpy as np

from .errors import C4SError, ConfigError, DataError, missing_dependency
from .index import IndexError_

__all__ = ["ServeLimits", "UploadError", "SearchService", "decode_upload", "create_app", "serve_command",
           "is_loopback"]

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
COOKIE = "c4s_session"
_IMAGE_NAME = re.compile(r"^[0-9a-f]{32}\.jpg$")
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 25_000_000
    max_side: int = 8192
    max_top_k: int = 100
    max_generated: int = 4


class UploadError(C4SError):
    """An upload the server refuses; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the usual names of localhost."""
    h = host.strip("[]").lower()
    if h in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def decode_upload(data: bytes, limits: ServeLimits = ServeLimits(), name: str = "upload") -> np.ndarray:
    """Uploaded bytes -> uint8 RGB, with the conversions of :func:`c4s_core.data.io.load_image`;
    refuses (:class:`UploadError`) empty, oversized, non-image, corrupt and huge images."""
    from PIL import Image, UnidentifiedImageError

    from .data.io import to_rgb

    if not data:
        raise UploadError(f"{name}: empty upload (0 bytes); send a sketch image", 400)
    if len(data) > limits.max_upload_bytes:
        raise UploadError(f"{name}: {len(data)} bytes, over the upload limit of {limits.max_upload_bytes} bytes", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
            w, h = im.size
            if w * h > limits.max_pixels or max(w, h) > limits.max_side:
                raise UploadError(
                    f"{name}: image is {w}x{h} ({w * h} pixels); the limits are {limits.max_pixels} pixels and "
                    f"{limits.max_side} px a side. Scale it down and upload again", 413)
            im.load()  # decode now so truncation shows here
            return to_rgb(im, name)
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise UploadError(f"{name}: not an image c4s accepts; send a {', '.join(ACCEPTED_FORMATS)} file", 415) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UploadError(f"{name}: image too large ({err})", 413) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise UploadError(f"{name}: corrupt or truncated image ({err})", 400) from None


def _png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class SearchService:
    """The model, the index and the optional generator behind the app.

    The index is opened memory-mapped and reopened when ``index.json`` changes
    (``c4s match add`` while serving); a changed index built by another model,
    or a damaged one, is refused and the old one kept. The embeddings' sha256 is
    checked at start and at each reload (once per file), not in every search; the thumbnails of
    the hits are checked before a search answers, and every image is hashed as
    it is served: a damaged file is a 500 naming it (see :mod:`c4s_core.index`).
    The generator loads on first use.
    """

    def __init__(self, index: str | Path, model: str | Path, device: str = "cpu", threads: int | None = None,
                 generator: str | Path | None = None, generator_device: str = "auto", generator_steps: int = 50,
                 default_style: str | None = None):
        from .index import GalleryIndex
        from .match_cli import _embedder, _model_info, model_sha256

        self.index_path = Path(index)
        self.model_path = Path(model)
        gi = GalleryIndex.open(self.index_path, mmap=True)
        gi.check_model(model_sha256(self.model_path), self.model_path)
        gi.verify(thumbnails=False)  # the embeddings' sha256 now, not in the first request
        self.embedder = _embedder(str(self.model_path), device, 64, threads, gi.info.get("aligner"))
        self.model_info = _model_info(self.embedder)
        self._lock = threading.Lock()
        self._gen_lock = threading.Lock()
        self._set_index(gi)
        self._checked = time.monotonic()
        self.reload_error: str | None = None
        self.generator_path = Path(generator) if generator else None
        self.generator_device = generator_device
        self.generator_steps = int(generator_steps)
        self._generator = None
        self.generator_error: str | None = None
        self.styles: list[str] = []
        self.default_style = default_style
        if self.generator_path is not None:
            from . import get_registries

            if not (self.generator_path / "generator.json").is_file():
                raise DataError(f"--generator {self.generator_path}: no generator.json there; pass a folder written "
                                "by `c4s train-generator` (a checkpoint or its final folder)")
            if "diffusion" not in get_registries().generator:
                raise DataError("--generator needs the 'diffusion' generator plugin, which is not loaded "
                                "(see `c4s plugins`)")
            self.styles = get_registries().sketch_style.names()
            if default_style is not None and default_style not in self.styles:
                raise ConfigError(f"--style {default_style!r} is not a sketch style; choose from {', '.join(self.styles)}")
            if self.default_style is None:
                self.default_style = "forensic_composite" if "forensic_composite" in self.styles else self.styles[0]

    # -- index ----------------------------------------------------------------------------
    def _set_index(self, gi) -> None:
        self.index = gi
        self._mtime = (self.index_path / "index.json").stat().st_mtime_ns
        by_id: dict[str, list[int]] = {}
        for r, row in enumerate(gi.rows):
            by_id.setdefault(row["identity"], []).append(r)
        self.by_identity = by_id
        self.thumbs = {row["thumb"] for row in gi.rows if row.get("thumb")}

    def refresh(self, every_s: float = 1.0) -> None:
        """Reopen the index if ``index.json`` changed (checked at most every ``every_s``)."""
        now = time.monotonic()
        if now - self._checked < every_s:
            return
        self._checked = now
        from .index import GalleryIndex

        try:
            mtime = (self.index_path / "index.json").stat().st_mtime_ns
        except OSError as err:
            self.reload_error = f"cannot stat {self.index_path}/index.json: {err}"
            return
        if mtime == self._mtime:
            return
        with self._lock:
            try:
                gi = GalleryIndex.open(self.index_path, mmap=True)
                gi.check_model(self.embedder.model_hash, self.model_path)
                gi.verify(thumbnails=False)
            except C4SError as err:
                self.reload_error = f"kept the index as opened: {err}"
                self._mtime = mtime
                return
            self._set_index(gi)
            self.reload_error = None

    def status(self) -> dict[str, Any]:
        gi = self.index
        return {
            "model": {**self.model_info, "hash": self.embedder.model_hash, "file": self.model_path.name},
            "index": {"name": self.index_path.name, "rows": len(gi), "identities": len(self.by_identity),
                      "images_stored": len(self.thumbs), "generation": int(gi.info.get("generation", 0)),
                      "dtype": gi.info.get("dtype"), "aligner": gi.info.get("aligner"),
                      "reload_error": self.reload_error},
            "device": {"name": self.embedder.device, "providers": self.embedder.providers},
            "generator": None if self.generator_path is None else {
                "name": self.generator_path.name, "loaded": self._generator is not None,
                "device": str(self._generator.device) if self._generator is not None else self.generator_device,
                "steps": self.generator_steps, "styles": self.styles, "default_style": self.default_style,
                "error": self.generator_error},
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
        gi = self.index
        hits = gi.search(vec, top_k=top_k)[0]
        try:  # the images shown beside the scores are the enrolled ones
            gi.verify_thumbnails([h.row for h in hits])
        except IndexError_ as err:
            raise UploadError(str(err), 500) from None
        return {
            "query": {"width": int(image.shape[1]), "height": int(image.shape[0]),
                      "input_size": list(self.embedder.input_size), "aligned": _png_data_url(crop), **facts},
            "top_k": top_k,
            "hits": [self._hit(rank, h, gi) for rank, h in enumerate(hits, 1)],
            "index_generation": int(gi.info.get("generation", 0)),
            "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2),
        }

    def _hit(self, rank: int, h, gi) -> dict[str, Any]:
        row = gi.rows[h.row] if 0 <= h.row < len(gi.rows) else {}
        return {"rank": rank, "identity": h.identity, "score": round(float(h.score), 6),
                "source": Path(h.source).name if h.source else "",
                "image": f"images/{row['thumb']}" if row.get("thumb") else None,
                "candidate": f"candidates/{quote(h.identity, safe='')}"}

    def candidate(self, identity: str) -> dict[str, Any]:
        self.refresh()
        rows = self.by_identity.get(identity)
        if rows is None:
            raise UploadError(f"identity {identity!r} is not in this index", 404)
        gi = self.index
        return {"identity": identity, "rows": len(rows),
                "images": [{"image": f"images/{gi.rows[r]['thumb']}" if gi.rows[r].get("thumb") else None,
                            "source": Path(gi.rows[r]["source"]).name if gi.rows[r].get("source") else ""}
                           for r in rows]}

    def image_bytes(self, name: str) -> bytes:
        """A stored gallery image by its index name (never a path from the request)."""
        if not _IMAGE_NAME.match(name):
            raise UploadError(f"{name!r} is not an image name of this index", 400)
        self.refresh()
        if name not in self.thumbs:
            raise UploadError(f"image {name!r} is not in this index", 404)
        from .index import THUMBS_DIR

        path = self.index_path / THUMBS_DIR / name
        if not path.is_file():
            raise UploadError(f"image {name!r} is listed by the index but its file is missing; re-enroll", 410)
        try:
            return self.index.read_thumbnail(name)  # hashed on every read: never a changed image
        except IndexError_ as err:
            raise UploadError(str(err), 500) from None

    # -- generator ------------------------------------------------------------------------
    def generator(self):
        if self.generator_path is None:
            raise UploadError("no generator: start `c4s serve` with --generator CHECKPOINT_DIR", 404)
        with self._gen_lock:
            if self._generator is None:
                from . import get_registries

                cls = get_registries().generator.get("diffusion").cls
                dev = None if self.generator_device == "auto" else self.generator_device
                try:
                    self._generator = cls.from_pretrained(self.generator_path, device=dev)
                except C4SError as err:
                    self.generator_error = str(err)
                    raise UploadError(f"generator {self.generator_path}: {err}", 503) from None
                self.generator_error = None
        return self._generator

    def sketches(self, identity: str, style: str | None, count: int = 2, seed: int = 0) -> dict[str, Any]:
        from PIL import Image

        from . import ComponentSpec

        style = style or self.default_style
        if self.generator_path is not None and style not in self.styles:
            raise UploadError(f"style {style!r} is not one of {', '.join(self.styles)}", 422)
        info = self.candidate(identity)
        first = next((im["image"] for im in info["images"] if im["image"]), None)
        if first is None:
            raise UploadError(f"identity {identity!r} has no image stored in the index; re-enroll with "
                              "--thumbnail-size > 0 to generate sketches", 409)
        gen = self.generator()
        photo = np.array(Image.open(io.BytesIO(self.image_bytes(first.split("/")[-1]))).convert("RGB"))
        t0 = time.perf_counter()
        with self._gen_lock:  # one sampling at a time: it is the heavy part
            out = gen.sample([photo], [style], sampler=ComponentSpec(name="ddim", options={"steps": self.generator_steps}),
                             seed=int(seed), num_per_input=int(count))
        return {"identity": identity, "style": style, "seed": int(seed), "steps": self.generator_steps,
                "images": [_png_data_url(im) for im in out],
                "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1)}


# -- the ASGI guard: host, token and body size, before any route runs -----------------------------


class _TooLarge(Exception):
    pass


def _session_value(token: str) -> str:
    return hmac.new(token.encode(), b"c4s-serve-session", hashlib.sha256).hexdigest()


class Guard:
    """Pure ASGI middleware: Host allow-list (DNS rebinding), token, upload size."""

    OPEN_PATHS = ("/login",)

    def __init__(self, app, token: str | None, max_body: int, allowed_hosts: set[str] | None):
        self.app = app
        self.token = token
        self.session = _session_value(token) if token else None
        self.max_body = int(max_body)
        self.allowed_hosts = allowed_hosts

    def _authorised(self, headers: dict[str, str]) -> bool:
        if self.token is None:
            return True
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-c4s-token", "")
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            return True
        from http.cookies import SimpleCookie

        jar = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is just not a session
            return False
        got = jar.get(COOKIE)
        return bool(got) and hmac.compare_digest(got.value.encode(), self.session.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.allowed_hosts is not None:
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.strip("[]").lower() not in self.allowed_hosts:
                return await _plain(send, 400, f"Host {host!r} is not served here (allowed: "
                                    f"{', '.join(sorted(self.allowed_hosts))})")
        if scope["type"] != "http":
            return await _plain(send, 404, "no websocket here")
        if not self._authorised(headers) and scope["path"] not in self.OPEN_PATHS:
            if scope["path"] == "/" and "text/html" in headers.get("accept", ""):
                return await _send(send, 401, LOGIN_HTML.encode(), "text/html; charset=utf-8")
            return await _plain(send, 401, "this server needs a token: send 'Authorization: Bearer TOKEN' or "
                                "'X-C4S-Token: TOKEN', or sign in on the page")
        length = headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                return await _plain(send, 400, "invalid Content-Length")
            if too_big:
                return await _plain(send, 413, f"request body of {length} bytes is over the upload limit of "
                                    f"{self.max_body} bytes")
        seen, started, exceeded = 0, False, False
        too_large = f"request body is over the upload limit of {self.max_body} bytes"

        async def counted_receive():
            nonlocal seen, exceeded
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    exceeded = True
                    raise _TooLarge
            return msg

        async def tracked_send(msg):
            nonlocal started
            if exceeded:  # the app answered the cut-off body (FastAPI: "error parsing the body"): say why
                if msg["type"] == "http.response.start" and not started:
                    started = True
                    await _plain(send, 413, too_large)
                return
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await _plain(send, 413, too_large)


async def _send(send, status: int, body: bytes, ctype: str, extra: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


async def _plain(send, status: int, detail: str) -> None:
    await _send(send, status, json.dumps({"detail": detail}).encode(), "application/json")


# -- the app ---------------------------------------------------------------------------------------


def create_app(service: SearchService, token: str | None = None, limits: ServeLimits = ServeLimits(),
               allowed_hosts: set[str] | None = None, default_top_k: int = 10):
    """The FastAPI app. ``allowed_hosts``: Host header names accepted (None: any)."""
    try:
        from fastapi import FastAPI, File, Form, Query, Request, UploadFile
        from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    except ImportError:
        raise missing_dependency("fastapi", "serve", "c4s serve") from None
    from . import __version__

    app = FastAPI(title="c4s serve", version=__version__,
                  description="Search a c4s gallery index with a forensic sketch. The page is at `/`.")
    app.state.service = service
    multipart_overhead = 64 * 1024

    @app.exception_handler(C4SError)
    async def _c4s_error(request: Request, err: C4SError):
        return JSONResponse({"detail": str(err)}, status_code=getattr(err, "status", 400))

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        resp = await call_next(request)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.url.path == "/":
            resp.headers["Content-Security-Policy"] = (
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
            resp.headers["X-Frame-Options"] = "DENY"
        return resp

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return HTMLResponse(PAGE_HTML.replace("{{VERSION}}", __version__))

    @app.get("/static/app.js", include_in_schema=False)
    def app_js():
        return Response(APP_JS, media_type="text/javascript; charset=utf-8")

    @app.get("/static/app.css", include_in_schema=False)
    def app_css():
        return Response(APP_CSS, media_type="text/css; charset=utf-8")

    @app.post("/login", include_in_schema=False)
    def login(token_field: str = Form("", alias="token")):
        if token is None:
            return RedirectResponse("/", status_code=303)
        if not hmac.compare_digest(token_field.encode(), token.encode()):
            return HTMLResponse(LOGIN_HTML.replace("<!--msg-->", '<p class="err">Wrong token.</p>'), status_code=401)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(COOKIE, _session_value(token), httponly=True, samesite="strict")
        return resp

    @app.get("/api/status", summary="Model, index, device and generator in use; limits")
    def status():
        service.refresh()
        return {**service.status(), "limits": asdict(limits), "default_top_k": default_top_k,
                "version": __version__}

    @app.post("/search", summary="Rank gallery identities for an uploaded sketch",
              responses={400: {"description": "corrupt image"}, 413: {"description": "too large"},
                         415: {"description": "not an image"}, 422: {"description": "no face / bad top_k"}})
    def search(image: UploadFile = File(..., description="The sketch: PNG, JPEG, WebP, BMP or GIF."),
               top_k: int = Query(default_top_k, ge=1, le=limits.max_top_k, description="Identities to return.")):
        data = image.file.read(limits.max_upload_bytes + 1)
        arr = decode_upload(data, limits, name=_safe_name(image.filename))
        return service.search(arr, top_k)

    @app.get("/candidates/{identity}", summary="An enrolled identity and its stored images")
    def candidate(identity: str):
        return service.candidate(_check_identity(identity))

    @app.get("/images/{name}", summary="A gallery image stored in the index (name from /search or /candidates)",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def gallery_image(name: str):
        return Response(service.image_bytes(name), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=86400, immutable"})

    @app.post("/candidates/{identity}/sketches",
              summary="Sketches c4s generates from this identity's mugshot (needs --generator)")
    def sketches(identity: str, style: str | None = Form(None, description="Sketch style name."),
                 count: int = Form(2, ge=1, le=limits.max_generated), seed: int = Form(0, ge=0, le=2**31 - 1)):
        return service.sketches(_check_identity(identity), style, count, seed)

    guard = Guard(app, token, limits.max_upload_bytes + multipart_overhead, allowed_hosts)
    guard.fastapi = app
    return guard


def _check_identity(identity: str) -> str:
    if not identity or len(identity) > 256 or any(c in identity for c in "/\\\x00") or identity in (".", ".."):
        raise UploadError(f"{identity[:80]!r} is not an identity id (no slashes, dots-only or NUL)", 400)
    return identity


def _safe_name(filename: str | None) -> str:
    name = Path(filename or "upload").name[:80]
    return "".join(c if c.isprintable() else "?" for c in name) or "upload"


# -- the command -----------------------------------------------------------------------------------


@click.command("serve")
@click.option("--index", "index", required=True, type=click.Path(file_okay=False), help="Gallery index folder (`c4s match enroll`).")
@click.option("--model", "model", required=True, type=click.Path(dir_okay=False), help="ONNX model that built the index (`c4s export`).")
@click.option("--generator", default=None, type=click.Path(file_okay=False),
              help="Diffusion generator folder (`c4s train-generator`): show sketches drawn from each candidate. Loaded on first use.")
@click.option("--generator-device", default="auto", show_default=True, help="Torch device of the generator (auto, cpu, cuda...).")
@click.option("--generator-steps", type=click.IntRange(1, 1000), default=50, show_default=True, help="DDIM steps per generated sketch.")
@click.option("--style", "default_style", default=None, help="Default sketch style for generated sketches.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
              help="onnxruntime execution provider; an unavailable one is an error.")
@click.option("--threads", type=click.IntRange(1, 512), default=None, help="onnxruntime intra-op threads.")
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
def serve_command(index, model, generator, generator_device, generator_steps, default_style, device, threads, host,
                  port, token, insecure, top_k, max_upload_mb, max_pixels, max_side, log_level):
    """Serve a web page to search a gallery index with a sketch (and a JSON API, see /docs).

    \b
    c4s serve --index gallery/ --model out/model.onnx
    then open http://127.0.0.1:8000/
    """
    try:
        app, url = build_server(index, model, generator=generator, generator_device=generator_device,
                                generator_steps=generator_steps, default_style=default_style, device=device,
                                threads=threads, host=host, port=port, token=token, insecure=insecure, top_k=top_k,
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
                 generator_steps: int = 50, default_style: str | None = None):
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
                            default_style=default_style)
    # Without a token, only answer requests addressed to this machine by a loopback name (DNS rebinding).
    allowed = None if (token is not None or not loopback) else (_LOOPBACK_NAMES | {"127.0.0.1", "::1", host.strip("[]").lower()})
    app = create_app(service, token=token, limits=limits, allowed_hosts=allowed, default_top_k=top_k)
    shown = f"[{host}]" if ":" in host else host
    return app, f"http://{shown}:{port}/"


# -- the page (server-rendered shell; the API fills it) --------------------------------------------

LOGIN_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>c4s serve: sign in</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/app.css"></head><body class="login"><form method="post" action="/login">
<h1>c4s serve</h1><p>This server needs its access token.</p><!--msg-->
<input type="password" name="token" placeholder="token" autofocus autocomplete="current-password">
<button type="submit">Sign in</button></form></body></html>"""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>c4s · sketch to mugshot search</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body>
<header>
  <div class="brand"><b>c4s</b> sketch → mugshot search <span class="ver">v{{VERSION}}</span></div>
  <div class="state" id="state">
    <span class="chip" id="st-model" title="model">model …</span>
    <span class="chip" id="st-index" title="gallery index">index …</span>
    <span class="chip" id="st-device" title="execution device">device …</span>
    <span class="chip" id="st-gen" title="sketch generator" hidden>generator …</span>
    <a class="chip link" href="/docs" target="_blank" rel="noopener">API</a>
  </div>
</header>
<main>
  <section class="probe">
    <label id="drop" class="drop" for="file">
      <input type="file" id="file" accept="image/png,image/jpeg,image/webp,image/bmp,image/gif">
      <span class="big">Drop a sketch here</span>
      <span class="small">or click to choose a file (PNG, JPEG, WebP, BMP, GIF)</span>
    </label>
    <div class="controls">
      <label>Top <select id="topk"><option>5</option><option selected>10</option><option>20</option><option>50</option></select> candidates</label>
    </div>
    <div id="msg" class="msg" role="status" hidden></div>
    <div class="pair" id="probe-pair" hidden>
      <figure><img id="probe-img" alt="uploaded sketch"><figcaption id="probe-cap">sketch</figcaption></figure>
      <figure><img id="aligned-img" class="pix" alt="aligned model input"><figcaption id="aligned-cap">aligned</figcaption></figure>
    </div>
  </section>
  <section class="results">
    <div class="results-head"><h2>Candidates</h2><span id="timing" class="muted"></span></div>
    <div id="empty" class="empty">Upload a sketch to rank the gallery.</div>
    <ol id="grid" class="grid"></ol>
  </section>
</main>
<dialog id="detail">
  <div class="dlg-head"><h2 id="d-title">Candidate</h2><button id="d-close" class="close" aria-label="close">×</button></div>
  <div class="compare">
    <figure><img id="d-sketch" alt="sketch"><figcaption id="d-sketchcap">probe sketch</figcaption></figure>
    <figure><img id="d-mug" alt="mugshot"><figcaption id="d-mugcap">mugshot</figcaption></figure>
  </div>
  <div id="d-others" class="others"></div>
  <div id="d-gen" class="gen" hidden>
    <div class="gen-controls">
      <label>Style <select id="g-style"></select></label>
      <label>Count <select id="g-count"><option>1</option><option selected>2</option><option>3</option><option>4</option></select></label>
      <button id="g-run">Generate sketches from this mugshot</button>
      <span id="g-msg" class="muted"></span>
    </div>
    <div id="g-out" class="gen-out"></div>
  </div>
</dialog>
</body>
</html>
"""

APP_CSS = """
:root { --bg:#f4f5f7; --card:#fff; --ink:#1d2330; --muted:#6b7280; --line:#dde1e7; --accent:#2a5bd7; --good:#1f9d55; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--ink); background:var(--bg); }
header { display:flex; align-items:center; justify-content:space-between; gap:16px; flex-wrap:wrap;
  padding:10px 20px; background:#1d2330; color:#fff; }
.brand { font-size:16px; } .brand b { color:#8fb3ff; font-size:18px; margin-right:6px; } .ver { color:#9aa3b2; font-size:12px; }
.state { display:flex; gap:8px; flex-wrap:wrap; }
.chip { background:#2c3446; border:1px solid #3c465c; border-radius:999px; padding:3px 10px; font-size:12px; color:#dfe6f3; white-space:nowrap; }
.chip.link { color:#8fb3ff; text-decoration:none; } .chip.warn { border-color:#d9a400; }
main { display:grid; grid-template-columns:minmax(280px,360px) 1fr; gap:20px; padding:20px; align-items:start; }
@media (max-width:800px) { main { grid-template-columns:1fr; } }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:16px; }
.drop { display:flex; flex-direction:column; align-items:center; justify-content:center; gap:4px; height:150px;
  border:2px dashed #b7c0ce; border-radius:10px; cursor:pointer; text-align:center; color:var(--muted); transition:.15s; }
.drop:hover, .drop.over { border-color:var(--accent); background:#eef3ff; color:var(--accent); }
.drop input { display:none; } .drop .big { font-size:17px; font-weight:600; color:var(--ink); } .drop .small { font-size:12px; }
.controls { margin:12px 0; } select { font:inherit; padding:2px 4px; }
.msg { padding:8px 10px; border-radius:6px; background:#eef3ff; margin:8px 0; }
.msg.error { background:#fdecec; color:#a61b1b; }
.pair { display:grid; grid-template-columns:1fr 1fr; gap:10px; }
figure { margin:0; text-align:center; } figcaption { font-size:12px; color:var(--muted); margin-top:4px; }
.pair img { width:100%; aspect-ratio:1; object-fit:contain; background:#fafafa; border:1px solid var(--line); border-radius:6px; }
img.pix { image-rendering:pixelated; }
.results-head { display:flex; align-items:baseline; justify-content:space-between; }
h2 { font-size:15px; margin:0 0 10px; } .muted { color:var(--muted); font-size:12px; }
.empty { color:var(--muted); padding:40px; text-align:center; border:1px dashed var(--line); border-radius:8px; }
.grid { list-style:none; margin:0; padding:0; display:grid; grid-template-columns:repeat(auto-fill,minmax(150px,1fr)); gap:12px; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; overflow:hidden; cursor:pointer; transition:.12s; position:relative; }
.card:hover, .card:focus { border-color:var(--accent); box-shadow:0 2px 10px rgba(42,91,215,.18); outline:none; }
.card img, .card .noimg { display:block; width:100%; aspect-ratio:1; object-fit:cover; background:#eceff3; }
.card .noimg { display:flex; align-items:center; justify-content:center; color:var(--muted); font-size:12px; }
.card .rank { position:absolute; top:6px; left:6px; background:rgba(29,35,48,.85); color:#fff; border-radius:999px; padding:1px 8px; font-size:12px; font-weight:600; }
.card .meta { padding:6px 8px 8px; } .card .id { font-weight:600; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.card .score { font-variant-numeric:tabular-nums; color:var(--muted); font-size:12px; }
.bar { height:4px; background:#e6e9ee; border-radius:2px; margin-top:4px; } .bar i { display:block; height:100%; background:var(--good); border-radius:2px; }
dialog { border:none; border-radius:12px; padding:0; width:min(960px,94vw); max-height:92vh; box-shadow:0 20px 60px rgba(0,0,0,.35); }
dialog::backdrop { background:rgba(15,20,30,.55); }
.dlg-head { display:flex; justify-content:space-between; align-items:center; padding:12px 16px; border-bottom:1px solid var(--line); }
.dlg-head h2 { margin:0; } .close { font-size:22px; background:none; border:none; cursor:pointer; color:var(--muted); }
.compare { display:grid; grid-template-columns:1fr 1fr; gap:16px; padding:16px; }
.compare figure { display:flex; flex-direction:column; align-items:center; }
.compare img { height:min(56vh,440px); max-width:100%; object-fit:contain; border:1px solid var(--line); border-radius:6px; background:#fafafa; }
.others { display:flex; gap:8px; padding:0 16px 12px; flex-wrap:wrap; } .others img { height:64px; border:1px solid var(--line); border-radius:4px; cursor:pointer; }
.gen { border-top:1px solid var(--line); padding:12px 16px 16px; } .gen-controls { display:flex; gap:12px; align-items:center; flex-wrap:wrap; }
.gen-out { display:flex; gap:12px; flex-wrap:wrap; margin-top:12px; } .gen-out img { width:160px; border:1px solid var(--line); border-radius:6px; }
button { font:inherit; padding:5px 12px; border-radius:6px; border:1px solid var(--accent); background:var(--accent); color:#fff; cursor:pointer; }
button:disabled { opacity:.6; cursor:wait; } .close { border:none; }
body.login { display:flex; align-items:center; justify-content:center; height:100vh; }
body.login form { background:#fff; padding:28px; border-radius:10px; border:1px solid var(--line); display:flex; flex-direction:column; gap:10px; min-width:300px; }
body.login input { font:inherit; padding:6px 8px; } .err { color:#a61b1b; }
"""

APP_JS = r"""
"use strict";
const $ = (id) => document.getElementById(id);
let status = null, probeURL = null, lastFile = null;

function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text != null) e.textContent = text; return e; }
function say(text, error) { const m = $("msg"); m.textContent = text; m.hidden = !text; m.classList.toggle("error", !!error); }
async function api(url, opts) {
  const r = await fetch(url, Object.assign({credentials: "same-origin"}, opts || {}));
  let body = null; try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    let d = body && body.detail;
    if (Array.isArray(d)) d = d.map((x) => (x.loc || []).join(".") + ": " + x.msg).join("; ");
    throw new Error(d || ("HTTP " + r.status));
  }
  return body;
}

async function loadStatus() {
  try { status = await api("/api/status"); } catch (e) { say("Cannot read the server state: " + e.message, true); return; }
  const m = status.model, ix = status.index, d = status.device, g = status.generator;
  $("st-model").textContent = "model " + (m.backbone || m.file) + " · " + (m.input_size || []).join("×") + " · " + m.hash.slice(0, 8);
  $("st-model").title = m.path;
  $("st-index").textContent = "index " + ix.identities.toLocaleString() + " identities · " + ix.rows.toLocaleString() + " images";
  $("st-index").title = ix.name + " (generation " + ix.generation + ")" + (ix.reload_error ? " — " + ix.reload_error : "");
  $("st-index").classList.toggle("warn", !!ix.reload_error || ix.images_stored === 0);
  $("st-device").textContent = "device " + d.name + " (" + d.providers[0].replace("ExecutionProvider", "") + ")";
  if (g) {
    $("st-gen").hidden = false;
    $("st-gen").textContent = "generator " + g.name + (g.loaded ? " · " + g.device : " · not loaded yet");
    const sel = $("g-style"); sel.textContent = "";
    for (const s of g.styles) { const o = el("option", null, s); o.value = s; if (s === g.default_style) o.selected = true; sel.appendChild(o); }
  }
  const k = String(status.default_top_k), sel = $("topk");
  if (![...sel.options].some((o) => o.value === k)) sel.appendChild(el("option", null, k));
  sel.value = k;
}

async function search(file) {
  if (!file) return;
  lastFile = file;
  if (probeURL) URL.revokeObjectURL(probeURL);
  probeURL = URL.createObjectURL(file);
  $("probe-img").src = probeURL; $("probe-cap").textContent = file.name;
  $("probe-pair").hidden = false; $("aligned-img").removeAttribute("src");
  say("Searching…");
  const fd = new FormData(); fd.append("image", file);
  try {
    const res = await api("/search?top_k=" + encodeURIComponent($("topk").value), {method: "POST", body: fd});
    const q = res.query;
    $("aligned-img").src = q.aligned;
    $("aligned-cap").textContent = "aligned " + q.input_size.join("×") + (q.aligner ? " · " + q.aligner : " · resized") + " (" + q.width + "×" + q.height + " in)";
    $("timing").textContent = res.hits.length + " identities in " + res.elapsed_ms.toFixed(0) + " ms";
    say("");
    render(res.hits);
  } catch (e) { say(e.message, true); render([]); $("timing").textContent = ""; }
}

function render(hits) {
  const grid = $("grid"); grid.textContent = "";
  $("empty").hidden = hits.length > 0;
  const top = hits.length ? Math.max(hits[0].score, 1e-6) : 1;
  hits.forEach((h) => {
    const li = el("li", "card"); li.tabIndex = 0; li.dataset.identity = h.identity;
    if (h.image) { const im = el("img"); im.src = h.image; im.alt = h.identity; im.loading = "lazy"; li.appendChild(im); }
    else li.appendChild(el("div", "noimg", "no image in index"));
    li.appendChild(el("span", "rank", "#" + h.rank));
    const meta = el("div", "meta");
    meta.appendChild(el("div", "id", h.identity)).title = h.identity;
    meta.appendChild(el("div", "score", "score " + h.score.toFixed(4)));
    const bar = el("div", "bar"), fill = el("i"); fill.style.width = Math.max(0, Math.min(100, 100 * h.score / top)).toFixed(1) + "%";
    bar.appendChild(fill); meta.appendChild(bar); li.appendChild(meta);
    li.addEventListener("click", () => openCandidate(h));
    li.addEventListener("keydown", (ev) => { if (ev.key === "Enter") openCandidate(h); });
    grid.appendChild(li);
  });
}

async function openCandidate(h) {
  $("d-title").textContent = "#" + h.rank + " · " + h.identity + " · score " + h.score.toFixed(4);
  $("d-sketch").src = probeURL || "";
  const mug = $("d-mug");
  mug.dataset.source = h.source || "";
  if (h.image) { mug.src = h.image; } else { mug.removeAttribute("src"); mug.alt = "no image stored in the index"; }
  $("d-mugcap").textContent = h.source ? "mugshot · " + h.source : "mugshot";
  $("d-others").textContent = ""; $("g-out").textContent = ""; $("g-msg").textContent = "";
  $("d-gen").hidden = !(status && status.generator);
  $("g-run").onclick = () => generate(h);
  const dlg = $("detail"); if (!dlg.open) dlg.showModal();
  try {
    const c = await api(h.candidate);
    if (c.images.length > 1) {
      c.images.forEach((im) => {
        if (!im.image) return;
        const t = el("img"); t.src = im.image; t.alt = im.source; t.title = im.source;
        t.addEventListener("click", () => { mug.dataset.source = im.source; mug.src = im.image; });
        $("d-others").appendChild(t);
      });
    }
  } catch (e) { $("d-others").appendChild(el("span", "muted", e.message)); }
}

async function generate(h) {
  const btn = $("g-run"); btn.disabled = true; $("g-msg").textContent = "Generating… (the first call loads the generator)";
  const fd = new FormData(); fd.append("style", $("g-style").value); fd.append("count", $("g-count").value);
  try {
    const r = await api(h.candidate + "/sketches", {method: "POST", body: fd});
    const out = $("g-out"); out.textContent = "";
    r.images.forEach((src, i) => { const f = el("figure"), im = el("img"); im.src = src; im.alt = r.style + " " + (i + 1);
      f.appendChild(im); f.appendChild(el("figcaption", null, r.style + " #" + (i + 1))); out.appendChild(f); });
    $("g-msg").textContent = r.images.length + " sketches in " + (r.elapsed_ms / 1000).toFixed(1) + " s";
    loadStatus();
  } catch (e) { $("g-msg").textContent = e.message; }
  btn.disabled = false;
}

function sizeCaption(img, cap, label) {
  img.onload = () => { $(cap).textContent = label() + " · " + img.naturalWidth + "×" + img.naturalHeight + " px"; };
}

window.addEventListener("DOMContentLoaded", () => {
  loadStatus();
  sizeCaption($("d-sketch"), "d-sketchcap", () => "probe sketch");
  sizeCaption($("d-mug"), "d-mugcap", () => "mugshot" + ($("d-mug").dataset.source ? " · " + $("d-mug").dataset.source : ""));
  const drop = $("drop");
  $("file").addEventListener("change", (ev) => search(ev.target.files[0]));
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (ev) => search(ev.dataTransfer.files[0]));
  $("topk").addEventListener("change", () => { if (lastFile) search(lastFile); });
  $("d-close").addEventListener("click", () => $("detail").close());
  $("detail").addEventListener("click", (ev) => { if (ev.target === $("detail")) $("detail").close(); });
});
"""


if __name__ == "__main__":  # python -m c4s_core.serve (used by the benchmark before the CLI has the command)
    serve_command()
