"""``c4s serve``: an investigator's web page for sketch-to-mugshot search.

A FastAPI application over one gallery store (``c4s match enroll``) and the
ONNX model that built it (``c4s export``)::

    c4s serve --store gallery/ --model out/model.onnx [--generator ckpt/]

``GET /`` is the page: drop a sketch, see it aligned (the exact model input),
get the top-k identities as a ranked grid; click one to compare it with the
sketch at full size (and, with ``--generator``, with sketches c4s draws from
that mugshot). The JSON API behind it is documented at ``/docs``:

- ``POST /search``: multipart field ``image`` (+ ``top_k``): aligned crop and hits;
- ``GET /candidates/{identity}``: that identity's enrolled images;
- ``GET /images/{name}``: a gallery image, only from the store's own thumbnails;
- ``POST /candidates/{identity}/sketches``: generated sketches (``--generator``);
- ``GET /api/status``: model, index, device, generator, limits.

Safe by default: binds to 127.0.0.1; binding elsewhere needs ``--token`` (or
``--insecure``); a token, when set, is required on every request (header
``Authorization: Bearer``/``X-C4S-Token``, or the cookie the login form sets).
Uploads are limited in bytes, pixels and side length; non-images and corrupt
images get a 4xx with a message. No value from a request ever becomes a file
path: identities and image names are looked up in the store's own tables.

The rooms: :mod:`.uploads` (limits, decoding), :mod:`.service` (the live
gallery and the search), :mod:`.generator` (sketches from a mugshot),
:mod:`.guard` (host, token, body size), :mod:`.app` (routes), :mod:`.page`
(HTML, CSS, JS), :mod:`.command` (the click command, the binding policy).
Heavy imports (fastapi, uvicorn, onnxruntime, torch) happen inside functions
so ``c4s --help`` stays light.
"""

from .app import create_app
from .command import build_server, serve_command
from .guard import COOKIE, Guard, is_loopback
from .service import LiveGallery, SearchService
from .uploads import ServeLimits, UploadError, decode_upload

__all__ = ["ServeLimits", "UploadError", "SearchService", "LiveGallery", "decode_upload", "create_app",
           "serve_command", "build_server", "is_loopback", "Guard", "COOKIE"]
