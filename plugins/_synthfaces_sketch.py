"""synthfaces sketches: a shot's face as strokes on white paper in the line,
pencil or charcoal style (outlines, hair strands, hatching, face shading, grain)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from ._synthfaces_geometry import _bbox, _bezier, _Face, _strands


def _render_sketch(f: _Face, size: int, style: str, rng) -> np.ndarray:
    """Pencil strokes of the same geometry on white paper (ink layer, 2x, then paper)."""
    p, sh = f.p, f.sh
    S = 2 * size
    w = max(1, round(S / 112))
    heavy = {"line": 1.0, "pencil": 1.0, "charcoal": 1.7}[style]
    lw = max(1, round(w * heavy))
    ink = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(ink)
    tone = sh.tone
    dark = int(235 * tone)
    mid = int(160 * tone)
    light = int(100 * tone)
    hair_dark = 1 - float(np.mean(p.hair)) / 255  # 0 white hair .. 1 black hair
    skin_dark = 1 - float(np.mean(p.skin)) / 255

    neck, shirt = f.neck_shirt()
    nk = f.pose(neck)
    d.line([tuple(nk[0]), tuple(nk[3])], fill=mid, width=lw)
    d.line([tuple(nk[1]), tuple(nk[2])], fill=mid, width=lw)
    d.line(f.flat(shirt[1:-1]), fill=mid, width=lw, joint="curve")
    back, front, guides = f.hair()
    if back is not None:
        bk = f.flat(back, -0.2)
        d.polygon(bk, fill=0, outline=dark)
        if style != "line":
            val = int((70 + 150 * hair_dark) * (1.15 if style == "charcoal" else 1.0))
            _hatch_region(ink, bk, rng, S, w, val, angle=1.45 + 0.1 * p.part, gap=S / 48)
            d = ImageDraw.Draw(ink)
    for ear in f.ears():
        e = f.flat(ear, -0.3)
        d.polygon(e, fill=0)
        d.line(e, fill=mid, width=lw, joint="curve")
        d.line(e[1:4], fill=light, width=w)
    head = f.flat(f.head())
    d.polygon(head, fill=0)
    d.line(head + head[:1], fill=dark, width=lw + (style == "charcoal"), joint="curve")

    head_mask = Image.new("L", (S, S), 0)
    ImageDraw.Draw(head_mask).polygon(head, fill=255)

    if p.beard:
        _hatch_region(ink, f.flat(f.beard(), 0.3), rng, S, w, int(90 + 120 * hair_dark), angle=1.3, gap=S / 60)
        d = ImageDraw.Draw(ink)
    for upper, lower, lid, (ix, iy, ir), _, _ in f.eyes():
        ic = f.pose([(ix, iy)], 0.5)[0]
        rr = ir * S * sh.scale
        d.ellipse(_bbox(ic, rr, rr), fill=int(mid * (0.5 + 0.6 * (np.mean(p.eye_col) < 80))), outline=dark)
        d.ellipse(_bbox(ic, rr * 0.45, rr * 0.45), fill=dark)
        d.ellipse(_bbox(ic + np.array([rr * 0.3, -rr * 0.35]), rr * 0.22, rr * 0.22), fill=0)
        cover_up = np.concatenate([upper, lid[::-1]])
        d.polygon(f.flat(cover_up, 0.5), fill=0)
        cover_lo = np.concatenate([lower, _bezier(upper[0], (upper[4, 0], upper[4, 1] + 0.09), upper[-1], 7)])
        d.polygon(f.flat(cover_lo, 0.5), fill=0)
        d.line(f.flat(upper, 0.5), fill=dark, width=2 * w, joint="curve")
        d.line(f.flat(lower, 0.5), fill=light, width=w, joint="curve")
        d.line(f.flat(lid[2:-1], 0.5), fill=light, width=w, joint="curve")
    bval = int(110 + 130 * max(hair_dark, 0.3))
    for brow in f.brows():
        pts = f.flat(brow, 0.5)
        d.polygon(pts, fill=int(bval * 0.55), outline=bval)
        n = len(pts) // 2
        for i in range(0, n - 1):
            a, b = pts[i], pts[-1 - i]
            d.line([b, (a[0] + (a[0] - b[0]) * 0.1 + 2 * w, a[1])], fill=bval, width=w)
    nose = f.nose()
    shade_side = 1 if sh.light[0] < 0 else 0
    d.line(f.flat(nose["bridge"][shade_side][2:], 0.7), fill=light, width=w, joint="curve")
    for ala in nose["alae"]:
        d.line(f.flat(ala, 0.9), fill=mid, width=lw, joint="curve")
    for nos in nose["nostrils"]:
        d.polygon(f.flat(nos, 0.9), fill=dark)
    line, upper, lower, _ = f.mouth()
    d.line(f.flat(line, 0.6), fill=dark, width=lw + w, joint="curve")
    d.line(f.flat(upper, 0.6), fill=mid, width=w, joint="curve")
    d.line(f.flat(lower[2:-2], 0.6), fill=light, width=w, joint="curve")
    if style != "line":
        lo = f.pose(_bezier((0.5 - 0.5 * p.mouth_w, p.mouth_y + 2.6 * p.lip_lo), (0.5, p.mouth_y + 3.4 * p.lip_lo),
                            (0.5 + 0.5 * p.mouth_w, p.mouth_y + 2.6 * p.lip_lo), 6), 0.6)
        d.line([tuple(q) for q in lo], fill=light, width=2 * w, joint="curve")
    if p.moustache:
        _hatch_region(ink, f.flat(f.moustache(), 0.7), rng, S, w, int(110 + 120 * hair_dark), angle=1.4, gap=S / 70)
        d = ImageDraw.Draw(ink)
    if front is not None:
        fr = f.flat(front, 0.05)
        d.polygon(fr, fill=0)
        val = int((70 + 170 * hair_dark) * (1.15 if style == "charcoal" else 1.0))
        strands = Image.new("L", (S, S), 0)
        sd = ImageDraw.Draw(strands)
        outer, hl = guides
        n_str = {"line": 16, "pencil": 40, "charcoal": 34}[style]
        if p.hair_style == "curly":
            for _ in range(n_str * 3):
                q = outer[rng.integers(len(outer))] * 0.5 + hl[rng.integers(len(hl))] * 0.5
                q = f.pose([q + rng.normal(0, 0.03, 2)], 0.05)[0]
                r0 = S * 0.012
                sd.arc(_bbox(q, r0, r0), rng.uniform(0, 360), rng.uniform(0, 360) + 200, fill=val, width=w)
        else:
            ts = np.clip(np.linspace(0.0, 1.0, n_str) + rng.normal(0, 0.01, n_str), 0, 1)
            for line_ in f.pose(_strands(outer, hl, ts, p.part), 0.05):
                sd.line(line_.tolist(), fill=val, width=w)
        if style != "line" and hair_dark > 0.4:
            mask_v = int(60 + 120 * (hair_dark - 0.4)) * (1.3 if style == "charcoal" else 1.0)
            tone_l = Image.new("L", (S, S), 0)
            ImageDraw.Draw(tone_l).polygon(fr, fill=int(mask_v))
            strands = ImageChops.lighter(strands, tone_l)
        mask = Image.new("L", (S, S), 0)
        ImageDraw.Draw(mask).polygon(fr, fill=255)
        ink = ImageChops.lighter(ink, ImageChops.multiply(strands, mask))
        d = ImageDraw.Draw(ink)
        d.line(fr[: len(outer)], fill=dark, width=lw, joint="curve")
        d.line(fr[len(outer):], fill=mid, width=w, joint="curve")
    if p.glasses:
        g = f.glasses()
        for rim in g:
            d.polygon(f.flat(rim, 0.8), outline=dark, width=2 * w)
        d.line(f.flat([g[0][0], g[1][12]], 0.8), fill=dark, width=2 * w)

    ink = ink.reduce(2)
    a = np.asarray(ink, dtype=np.float32) / 255.0
    a = np.maximum(a, _face_shading(f, size, style, skin_dark, np.asarray(head_mask.reduce(2), np.float32) / 255))
    if style == "charcoal":
        small = Image.fromarray((a * 255).astype(np.uint8)).reduce(2).resize((size, size), Image.BILINEAR)
        a = np.maximum(a, np.asarray(small, np.float32) / 255.0 * 0.8)
    grain = rng.uniform(0.72 if style != "line" else 0.9, 1.0, (size, size)).astype(np.float32)
    paper = np.float32(247) + rng.normal(0, 1.2 if style != "line" else 0.5, (size, size)).astype(np.float32)
    g = paper * (1 - a * grain)
    g = np.clip(g, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _stripes(size: int, gap: float, slope: float) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    ph = np.mod(xs - slope * ys, gap) / gap
    return np.clip(1.6 - np.abs(ph - 0.5) * 6, 0, 1)  # soft diagonal lines


_STRIPES: dict = {}


def _face_shading(f: _Face, size: int, style: str, skin_dark: float, mask: np.ndarray) -> np.ndarray:
    """Hatching on the face, denser away from the light and on darker skin."""
    if style == "line" and skin_dark < 0.55:
        return np.zeros((size, size), np.float32)
    key = (size, style)
    if key not in _STRIPES:
        _STRIPES[key] = _stripes(size, max(2.5, size / (26 if style == "pencil" else 20)), 0.6)
    lx, ly = f.sh.light[0], f.sh.light[1]
    nrm = math.hypot(lx, ly) or 1.0
    c = f.pose([(0.5, 0.55)])[0] / 2
    ys, xs = np.ogrid[0:size, 0:size]
    away = ((xs - c[0]) * -lx + (ys - c[1]) * -ly) / (nrm * 0.3 * size)
    g = np.clip(away * 1.6 - 0.1, 0, 1)
    base = 0.5 * skin_dark**2
    strength = {"line": 0.25, "pencil": 0.4, "charcoal": 0.6}[style]
    return (_STRIPES[key] * mask * (base + (1 - base) * g) * strength).astype(np.float32)


def _hatch_region(ink: Image.Image, poly, rng, S: int, w: int, val: int, angle: float, gap: float):
    layer = Image.new("L", (S, S), 0)
    ld = ImageDraw.Draw(layer)
    xs = [q[0] for q in poly]
    ys = [q[1] for q in poly]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    dx = math.cos(angle) * (y1 - y0 + 4)
    x = x0 - abs(dx)
    while x < x1 + abs(dx):
        j = rng.uniform(-gap * 0.3, gap * 0.3)
        ld.line([(x + j, y1 + 2), (x + j + dx, y0 - 2)], fill=val, width=w)
        x += gap
    mask = Image.new("L", (S, S), 0)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    ink.paste(ImageChops.lighter(ink, ImageChops.multiply(layer, mask)))

