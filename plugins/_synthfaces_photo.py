"""synthfaces photos: a shot's face filled in colour (skin, eyes, lips, hair,
glasses) on a backdrop, then lit (Lambert shading) with sensor noise."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ._synthfaces_geometry import _bbox, _bezier, _Face, _strands


def _rgb(c, k: float = 1.0) -> tuple:
    return tuple(int(max(0, min(255, v * k))) for v in c)


def _mix(a, b, t: float) -> tuple:
    return tuple(int(x * (1 - t) + y * t) for x, y in zip(a, b, strict=True))


def _render_photo(f: _Face, size: int, noise_rng) -> np.ndarray:
    p, sh = f.p, f.sh
    S = 2 * size
    w = max(1, round(S / 112))  # stroke unit
    img = Image.new("RGB", (S, S), _rgb(sh.bg))
    d = ImageDraw.Draw(img)
    skin = p.skin
    hair = _rgb(p.hair)
    back, front, guides = f.hair()
    if back is not None:
        d.polygon(f.flat(back, -0.2), fill=hair)
    neck, shirt = f.neck_shirt()
    d.polygon(f.flat(neck), fill=_rgb(skin, 0.8))
    d.polygon(f.flat(shirt), fill=_rgb(sh.shirt))
    for ear in f.ears():
        d.polygon(f.flat(ear, -0.3), fill=_rgb(skin, 0.92), outline=_rgb(skin, 0.75))
    head = f.flat(f.head())
    d.polygon(head, fill=_rgb(skin))
    # cheeks: a faint blush
    for sx in (-1, 1):
        d.ellipse(_bbox(f.pose([(0.5 + sx * 0.2, 0.66)], 0.4)[0], 0.06 * S, 0.035 * S), fill=_mix(skin, (215, 120, 110), 0.1))
    if p.beard:
        d.polygon(f.flat(f.beard(), 0.3), fill=_mix(p.hair, skin, 0.15))
    for upper, lower, lid, (ix, iy, ir), _, _ in f.eyes():
        almond = f.flat(np.concatenate([upper, lower]), 0.5)
        d.polygon(almond, fill=(236, 232, 226))
        ic = f.pose([(ix, iy)], 0.5)[0]
        rr = ir * S * f.sh.scale
        d.ellipse(_bbox(ic, rr, rr), fill=_rgb(p.eye_col))
        d.ellipse(_bbox(ic, rr * 0.45, rr * 0.45), fill=(18, 14, 12))
        d.ellipse(_bbox(ic + np.array([rr * 0.3, -rr * 0.35]), rr * 0.2, rr * 0.2), fill=(250, 250, 250))
        # lids cover the iris outside the almond
        cover_up = np.concatenate([upper, lid[::-1]])
        d.polygon(f.flat(cover_up, 0.5), fill=_rgb(skin, 0.93))
        cover_lo = np.concatenate([lower, _bezier(upper[0], (upper[4, 0], upper[4, 1] + 0.09), upper[-1], 7)])
        d.polygon(f.flat(cover_lo, 0.5), fill=_rgb(skin))
        d.line(f.flat(upper, 0.5), fill=(40, 28, 24), width=2 * w, joint="curve")
        d.line(f.flat(lid, 0.5), fill=_rgb(skin, 0.72), width=w)
    for brow in f.brows():
        d.polygon(f.flat(brow, 0.5), fill=_mix(p.hair, skin, 0.2))
    nose = f.nose()
    shade_side = 1 if sh.light[0] < 0 else 0  # the bridge shadow falls away from the light
    d.line(f.flat(nose["bridge"][shade_side], 0.7), fill=_rgb(skin, 0.88), width=3 * w, joint="curve")
    for ala in nose["alae"]:
        d.line(f.flat(ala, 0.9), fill=_rgb(skin, 0.72), width=w + 1, joint="curve")
    for nos in nose["nostrils"]:
        d.polygon(f.flat(nos, 0.9), fill=_rgb(skin, 0.45))
    tip = f.pose([nose["tip"]], 1.0)[0]
    d.ellipse(_bbox(tip + np.array([0, -0.012 * S]), 0.018 * S, 0.012 * S), fill=_rgb(skin, 1.05))
    line, upper, lower, _ = f.mouth()
    lip = _mix(skin, (176, 72, 80), 0.4)
    d.polygon(f.flat(np.concatenate([upper, line[::-1]]), 0.6), fill=_rgb(lip, 0.85))
    d.polygon(f.flat(np.concatenate([lower, line]), 0.6), fill=lip)
    d.line(f.flat(line, 0.6), fill=_rgb(lip, 0.45), width=w + 1, joint="curve")
    if p.moustache:
        d.polygon(f.flat(f.moustache(), 0.7), fill=_mix(p.hair, skin, 0.1))
    if front is not None:
        col = hair if p.hair_style != "short" else _mix(p.hair, skin, 0.15)
        d.polygon(f.flat(front, 0.05), fill=col)
        # strands: a few lighter and darker lines through the hair
        strands = f.pose(_strands(*guides, np.linspace(0.1, 0.9, 10), p.part), 0.05)
        for i, line_ in enumerate(strands):
            d.line(line_.tolist(), fill=_mix(p.hair, (255, 255, 255) if i % 2 else (0, 0, 0), 0.12), width=w)
    if p.glasses:
        g = f.glasses()
        for rim in g:
            d.polygon(f.flat(rim, 0.8), outline=(30, 30, 34), width=2 * w)
        d.line(f.flat([g[0][0], g[1][12]], 0.8), fill=(30, 30, 34), width=2 * w)
    img = img.reduce(2)
    a = np.asarray(img, dtype=np.float32)
    a *= _lighting(f, size)[..., None]
    if sh.light_k > 0:
        a += noise_rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(2.5)
    return np.clip(a, 0, 255).astype(np.uint8)


_GRIDS: dict[int, tuple] = {}


def _grid(size: int) -> tuple:
    g = _GRIDS.get(size)
    if g is None:
        g = _GRIDS[size] = tuple(np.mgrid[0:size, 0:size].astype(np.float32))
    return g


def _lighting(f: _Face, size: int) -> np.ndarray:
    """Lambert shading of a head-shaped ellipsoid plus a falloff on the backdrop."""
    sh = f.sh
    if sh.light_k <= 0:
        return np.ones((size, size), np.float32)
    c = f.pose([(0.5, 0.55)])[0] / 2
    rx = (f.p.cw + 0.04) * size * sh.scale
    ry = (f.p.top + f.p.chin) * 0.5 * size * sh.scale
    ys, xs = _grid(size)
    nx, ny = (xs - c[0]) / rx, (ys - c[1]) / ry
    r2 = nx * nx + ny * ny
    scale = np.where(r2 > 1, 1 / np.sqrt(np.maximum(r2, 1e-6)), 1.0)
    nx, ny = nx * scale, ny * scale
    nz = np.sqrt(np.maximum(1 - nx * nx - ny * ny, 0))
    lx, ly, lz = sh.light
    lam = np.maximum(nx * lx + ny * ly + nz * lz, 0)
    inside = np.clip((1 - r2) * 6, 0, 1)
    k = sh.light_k
    face = 1 - k + k * 1.25 * lam
    backdrop = 1 + 0.12 * k * (xs / size - 0.5) * lx * 2 + 0.12 * k * (ys / size - 0.5) * ly * 2
    return (face * inside + backdrop * (1 - inside)).astype(np.float32)

