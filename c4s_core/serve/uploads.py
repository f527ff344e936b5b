"""What ``c4s serve`` accepts from a request: limits, the upload decoder, its errors."""

import base64
import io
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import C4SError

__all__ = ["ServeLimits", "UploadError", "decode_upload", "png_data_url", "ACCEPTED_FORMATS"]

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


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

def decode_upload(data: bytes, limits: ServeLimits = ServeLimits(), name: str = "upload") -> np.ndarray:
    """Uploaded bytes -> uint8 RGB, with the conversions of :func:`c4s_core.data.io.load_image`;
    refuses (:class:`UploadError`) empty, oversized, non-image, corrupt and huge images."""
    from PIL import Image, UnidentifiedImageError

    from ..data.io import to_rgb

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


def png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
