"""The FastAPI application of ``c4s serve``: routes over a :class:`~c4s_core.serve.service.SearchService`."""

import hmac
from dataclasses import asdict
from pathlib import Path

from ..errors import C4SError, missing_dependency
from .guard import COOKIE, Guard, session_value
from .page import APP_CSS, APP_JS, LOGIN_HTML, PAGE_HTML
from .uploads import ServeLimits, UploadError, decode_upload

__all__ = ["create_app"]


def create_app(service, token: str | None = None, limits: ServeLimits = ServeLimits(),
               allowed_hosts: set[str] | None = None, default_top_k: int = 10):
    """The FastAPI app. ``allowed_hosts``: Host header names accepted (None: any)."""
    try:
        from fastapi import FastAPI, File, Form, Query, Request, UploadFile
        from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
    except ImportError:
        raise missing_dependency("fastapi", "serve", "c4s serve") from None
    from .. import __version__

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
        resp.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict")
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
