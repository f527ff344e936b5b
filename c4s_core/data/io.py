"""Image I/O with errors that name the file, and atomic writes.

Every image is returned as uint8 RGB ``H x W x 3``. Conversions (documented):

- grayscale (L, LA, 1, I;16, I, F): replicated to three channels; 16-bit and
  32-bit data are rescaled to 0..255 from their full range;
- RGBA / LA / P with transparency: composited on white (sketch paper);
- CMYK and YCbCr: converted to RGB by Pillow;
- EXIF orientation is applied so phone photos come out upright.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError, ImageReadError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
_UMASK = os.umask(0)
os.umask(_UMASK)
MAX_PIXELS = 64_000_000  # ~8000x8000; larger is almost surely not a face image


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read ``path`` as uint8 RGB; raise :class:`ImageReadError` naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read ({err.strerror or err})") from None
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image")
    if size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageReadError(
                        f"{path}: image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}"
                    )
                im.load()  # decode now so truncation shows here
                return to_rgb(im, str(path))
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageReadError(f"{path}: image too large ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: corrupt or truncated image ({err})") from None


def to_rgb(im: Image.Image, where: str = "image") -> np.ndarray:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        g = a.round().astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    a = np.asarray(im, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ImageReadError(f"{where}: unexpected image shape {a.shape}")
    return np.ascontiguousarray(a)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file beside ``path``, then rename: never a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise DataError(f"cannot write {path}: {err.strerror or err}") from None
        raise


def replace_folder(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Move the finished folder ``tmp`` to ``path``, replacing any old one, so
    readers see the old or the new folder, never a half-written one."""
    import shutil

    tmp, path = Path(tmp), Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    return path


def recover_folder(tmp: str | os.PathLike, path: str | os.PathLike) -> Path | None:
    """After a kill inside :func:`replace_folder` (old folder moved aside, new one
    not yet in place): finish the swap, so ``path`` exists again. Returns ``path``
    if it exists afterwards, else None. Leftover temp and old folders are removed."""
    import shutil

    tmp, path = Path(tmp), Path(path)
    olds = sorted(path.parent.glob(f".{path.name}.old-*"))
    if not path.exists():
        if olds and tmp.is_dir():  # the old one is moved aside only once tmp is complete
            os.replace(tmp, path)
        elif olds:
            os.replace(olds.pop(), path)
    for d in [*olds, tmp]:
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
    return path if path.exists() else None


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Save uint8 HxWx3 (or HxW) atomically; format from the suffix."""
    import io

    path = Path(path)
    if image.dtype != np.uint8:
        raise DataError(f"{path}: expected a uint8 image, got {image.dtype}")
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "PNG")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())


def file_hash(path: str | os.PathLike, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def array_hash(image: np.ndarray, n: int = 16) -> str:
    h = hashlib.sha256(str((image.shape, str(image.dtype))).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()[:n]


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize uint8 RGB to ``size`` (int for square, or (H, W)) with Lanczos."""
    h, w = (size, size) if isinstance(size, int) else size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.LANCZOS))


_BT601 = np.array([0.299, 0.587, 0.114])


def grey3(image: np.ndarray) -> np.ndarray:
    """uint8 RGB (``H x W x 3``, or ``x 4``: alpha dropped) or grey (``H x W``,
    ``H x W x 1``) -> its luminance (ITU-R BT.601 weights, rounded) in all three
    channels, uint8 ``H x W x 3``: colour removed, the shape every model takes."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise DataError(f"grey3 expects a uint8 image, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = np.clip(np.rint(arr[:, :, :3].astype(np.float64) @ _BT601), 0, 255).astype(np.uint8)
    elif arr.ndim != 2:
        raise DataError(f"grey3 expects an HxWx3 RGB or HxW grey image, got shape {arr.shape}")
    return np.repeat(arr[:, :, None], 3, axis=2)


def grid(rows: list[list], pad: int = 2):
    """Tile rows of equal-size uint8 images on white."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y:y + h, x:x + w] = resize(im, (h, w))
    return canvas
