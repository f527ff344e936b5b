"""Embedded synthetic faces: procedural mugshot-like photos and matching sketches.

``synthfaces`` needs no files and no downloads. Each identity is a set of face
parameters (face shape, eye/brow/nose/mouth geometry, hair style and colour,
skin tone, facial hair, glasses) drawn from ``(seed, identity index)`` alone,
so growing ``num_identities`` keeps the earlier identities as they were. Each
shot adds its own pose (roll, shift, scale, yaw, pitch), lighting and
expression, drawn from ``(seed, identity, modality, shot)``: ``ds[i]`` gives the
same pixels in any order and in any process.

Faces sit at the ArcFace 112x112 template (eyes near ``(0.34W, 0.46H)`` and
``(0.66W, 0.46H)``, nose tip near ``0.64H``, mouth corners near ``0.82H``), so
aligners cropping at that template work; every sample's ``meta["landmarks"]``
holds the five posed points in pixels.

Run ``python -m c4s_plugins.synthfaces --sheet docs/synthfaces.png`` for a
contact sheet. Only numpy, Pillow and pydantic are imported.
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageChops, ImageDraw
from pydantic import Field, field_validator, model_validator

from c4s_core import ComponentConfig, hookimpl
from c4s_core.data.datasets import Dataset, Sample, SampleRef

__all__ = ["SynthFaces", "SynthFacesConfig", "SKETCH_STYLES", "contact_sheet", "main"]

# Sketch renderers, by style label.
SKETCH_STYLES = ("line", "pencil", "charcoal")

# ArcFace 112x112 five-point template, as fractions of the image size.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
) / 112.0

# Seed-sequence salts: identity parameters and shots never share a stream.
_SALT_ID, _SALT_SHOT = 0x5F1D, 0x5F5A
_MODALITY_CODE = {"photo": 0, "sketch": 1}
_CENTRE = np.array([0.5, 0.56])

_SKIN = np.array(
    [(255, 228, 210), (242, 204, 180), (226, 182, 152), (200, 152, 118), (162, 114, 84), (118, 80, 58), (82, 56, 44)],
    dtype=float,
)
_HAIR = np.array(
    [(28, 24, 22), (58, 40, 30), (96, 64, 40), (142, 74, 40), (196, 160, 100), (140, 138, 136), (214, 212, 206)],
    dtype=float,
)
_HAIR_P = np.array([0.26, 0.24, 0.18, 0.07, 0.11, 0.09, 0.05])
_EYES = np.array([(88, 58, 34), (42, 30, 24), (72, 108, 156), (78, 116, 80), (118, 96, 52)], dtype=float)
_EYES_P = np.array([0.35, 0.25, 0.18, 0.1, 0.12])
# short, crop, side part, long, bob, curly, spiky, receding, bald
_HAIR_STYLES = ("short", "crop", "side", "long", "bob", "curly", "spiky", "receding", "bald")
_HAIR_STYLES_P = np.array([0.14, 0.14, 0.15, 0.15, 0.12, 0.08, 0.07, 0.08, 0.07])


class SynthFacesConfig(ComponentConfig):
    num_identities: int = Field(100, ge=1, le=1_000_000, description="Number of distinct identities (1 to 1,000,000).")
    images_per_identity: int = Field(2, ge=0, le=1000, description="Photos per identity (0 to 1000).")
    sketches_per_identity: int = Field(2, ge=0, le=1000, description="Sketches per identity (0 to 1000).")
    size: int = Field(112, ge=32, le=512, description="Side of the square images in pixels (32 to 512).")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed; identities and shots derive from it alone.")
    prefix: str = Field(
        "sf", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,15}$",
        description="Identity name prefix; give sets with other seeds their own (e.g. distractors) so names stay unique.",
    )
    styles: list[str] = Field(
        default_factory=lambda: ["line"],
        description="Sketch style labels, assigned to sketches in turn: " + ", ".join(SKETCH_STYLES) + ".",
    )
    jitter: float = Field(
        1.0,
        ge=0.0,
        le=3.0,
        description="Strength of per-shot variation (pose, lighting, expression, sketch artist error); "
        "0 renders every shot of an identity alike (0 to 3).",
    )

    @field_validator("styles")
    @classmethod
    def _known_styles(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"give at least one sketch style, from: {', '.join(SKETCH_STYLES)}")
        bad = [s for s in v if s not in SKETCH_STYLES]
        if bad:
            raise ValueError(f"unknown sketch style(s) {bad}; allowed: {', '.join(SKETCH_STYLES)}")
        return v

    @model_validator(mode="after")
    def _some_images(self) -> SynthFacesConfig:
        if self.images_per_identity + self.sketches_per_identity == 0:
            raise ValueError("images_per_identity and sketches_per_identity are both 0: nothing to render")
        return self


# -- identity parameters ------------------------------------------------------------


@dataclass(frozen=True)
class _Identity:
    cw: float  # cheek half-width
    top: float  # upper head radius (centre y 0.5 to crown)
    chin: float  # lower head radius (centre to chin)
    m_up: float  # superellipse exponents: forehead, jaw
    m_lo: float
    eye_dx: float  # offsets from the template eye positions
    eye_dy: float
    ew: float  # eye half-width, opening above/below the centre, canthal tilt
    eh: float
    el: float
    tilt: float
    iris: float
    brow_gap: float
    brow_arch: float
    brow_th: float
    brow_slope: float
    brow_len: float
    nose_y: float
    nose_w: float
    bridge: float
    mouth_y: float
    mouth_w: float
    lip_up: float
    lip_lo: float
    ear: float
    neck: float
    skin: tuple
    hair: tuple
    eye_col: tuple
    hair_style: str
    hairline: float
    hair_vol: float
    hair_len: float
    hair_round: float
    hair_phase: float
    part: float
    moustache: bool
    beard: bool
    glasses: bool


@functools.lru_cache(maxsize=4096)
def _identity(seed: int, k: int) -> _Identity:
    """Identity ``k``'s parameters: a function of ``(seed, k)`` only."""
    r = np.random.default_rng([_SALT_ID, seed, k])
    u = r.uniform
    skin_t = u(0, 1) ** 1.5 * (len(_SKIN) - 1)
    i0 = int(skin_t)
    skin = _SKIN[i0] + (_SKIN[min(i0 + 1, len(_SKIN) - 1)] - _SKIN[i0]) * (skin_t - i0)
    hair_i = r.choice(len(_HAIR), p=_HAIR_P)
    hair = np.clip(_HAIR[hair_i] * u(0.85, 1.15, 3) ** 0.5, 0, 255)
    eye_col = _EYES[r.choice(len(_EYES), p=_EYES_P)]
    style = _HAIR_STYLES[r.choice(len(_HAIR_STYLES), p=_HAIR_STYLES_P)]
    male = u() < 0.5
    return _Identity(
        cw=u(0.315, 0.41),
        top=u(0.41, 0.52),
        chin=u(0.44, 0.56),
        m_up=u(2.0, 2.7),
        m_lo=u(1.5, 3.6),
        eye_dx=u(-0.012, 0.012),
        eye_dy=u(-0.012, 0.012),
        ew=u(0.048, 0.072),
        eh=u(0.021, 0.033),
        el=u(0.45, 0.8),
        tilt=u(-0.012, 0.014),
        iris=u(0.36, 0.46),
        brow_gap=u(0.05, 0.09),
        brow_arch=u(0.0, 0.03),
        brow_th=u(0.009, 0.026) * (1.2 if male else 0.85),
        brow_slope=u(-0.012, 0.016),
        brow_len=u(1.05, 1.4),
        nose_y=u(0.615, 0.675),
        nose_w=u(0.04, 0.078),
        bridge=u(0.012, 0.03),
        mouth_y=u(0.80, 0.845),
        mouth_w=u(0.1, 0.15),
        lip_up=u(0.011, 0.024) * (0.85 if male else 1.2),
        lip_lo=u(0.015, 0.032) * (0.85 if male else 1.15),
        ear=u(0.03, 0.06),
        neck=u(0.15, 0.22),
        skin=tuple(skin),
        hair=tuple(hair),
        eye_col=tuple(eye_col),
        hair_style=style,
        hairline=u(0.14, 0.24),
        hair_vol=u(0.015, 0.06),
        hair_len=u(0.0, 1.0),
        hair_round=u(1.6, 2.6),
        hair_phase=u(0, 2 * np.pi),
        part=u(-1.0, 1.0),
        moustache=bool(male and u() < 0.3),
        beard=bool(male and u() < 0.25),
        glasses=bool(u() < 0.14),
    )


@dataclass(frozen=True)
class _Shot:
    roll: float  # radians
    scale: float
    shift: tuple
    yaw: float
    pitch: float
    smile: float
    brow_raise: float
    squint: float
    gaze: tuple
    light: tuple  # unit vector (x, y, z)
    light_k: float
    distort: tuple  # sketch artist error: relative size errors of features
    bg: tuple
    shirt: tuple
    tone: float  # sketch pressure


def _shot(seed: int, k: int, modality: str, j: int, jitter: float) -> _Shot:
    r = np.random.default_rng([_SALT_SHOT, seed, k, _MODALITY_CODE[modality], j])
    s = jitter * (1.0 if modality == "photo" else 0.5)

    def n(scale, lim=2.5):
        return float(np.clip(r.standard_normal(), -lim, lim) * scale * s)

    a = r.uniform(0, 2 * np.pi)
    lz = r.uniform(0.7, 0.95)
    lxy = math.sqrt(1 - lz * lz)
    expressive = modality == "photo"
    return _Shot(
        roll=n(math.radians(2.5)),
        scale=1.0 + n(0.02),
        shift=(n(0.01), n(0.01)),
        yaw=n(0.35),
        pitch=n(0.25),
        smile=n(0.6) if expressive else n(0.15),
        brow_raise=n(0.5) if expressive else n(0.1),
        squint=n(0.12) if expressive else 0.0,
        gaze=(n(0.25), n(0.15)),
        light=(lxy * math.cos(a), lxy * math.sin(a), lz),
        light_k=float(r.uniform(0.15, 0.45)) * min(s, 1.0),
        distort=tuple(float(x) for x in np.clip(r.standard_normal(6), -2, 2) * 0.05 * jitter
                      * (modality == "sketch")),
        bg=tuple(float(x) for x in _background(r)),
        shirt=tuple(float(x) for x in r.uniform(20, 140, 3)),
        tone=float(r.uniform(0.85, 1.0)),
    )


def _background(r) -> np.ndarray:
    base = r.uniform(150, 215)
    tint = r.normal(0, 8, 3) + np.array([-4, 0, 8]) * r.uniform(0, 2)
    return np.clip(base + tint, 0, 255)


# -- geometry --------------------------------------------------------------------------


_BASIS: dict[int, np.ndarray] = {}


def _basis(n: int) -> np.ndarray:
    b = _BASIS.get(n)
    if b is None:
        t = np.linspace(0, 1, n)
        b = _BASIS[n] = np.stack([(1 - t) ** 2, 2 * (1 - t) * t, t**2], 1)
    return b


def _bezier(p0, p1, p2, n=8) -> np.ndarray:
    """Quadratic Bezier from p0 to p2 pulled towards p1, n points."""
    return _basis(n) @ np.array([p0, p1, p2], dtype=float)


def _beziers(p0, p1, p2, n=5) -> np.ndarray:
    """Many curves at once: p* are (m, 2) -> (m, n, 2)."""
    return np.einsum("nk,kmd->mnd", _basis(n), np.stack([p0, p1, p2]))


def _ellipse(cx, cy, rx, ry, n=16) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _superellipse(cx, cy, rx, ry, m, t) -> np.ndarray:
    c, s = np.cos(t), np.sin(t)
    x = np.sign(c) * np.abs(c) ** (2 / m)
    y = np.sign(s) * np.abs(s) ** (2 / m)
    return np.stack([cx + rx * x, cy + ry * y], 1)


class _Face:
    """One shot's geometry in normalised coordinates, then posed into pixels."""

    def __init__(self, p: _Identity, sh: _Shot, px: float):
        self.p, self.sh, self.px = p, sh, px
        c, s = math.cos(sh.roll), math.sin(sh.roll)
        self.rot = np.array([[c, -s], [s, c]]) * sh.scale
        self.off = _CENTRE + np.asarray(sh.shift)
        self._a = self.rot.T * px
        self._b = (self.off - _CENTRE @ self.rot.T) * px
        self._turn = np.array([sh.yaw * 0.05, sh.pitch * 0.04]) @ self._a

    def pose(self, pts, depth: float = 0.0) -> np.ndarray:
        """Normalised points -> pixels of the 2x canvas; ``depth`` scales the yaw/pitch shift."""
        out = np.asarray(pts, dtype=float) @ self._a + self._b
        if depth:
            out += depth * self._turn
        return out

    def flat(self, pts, depth: float = 0.0) -> list:
        return self.pose(pts, depth).tolist()

    # head outline: superellipse halves, centre (0.5, 0.5)
    def head_width(self, y: float) -> float:
        p = self.p
        if y <= 0.5:
            t = min(max((0.5 - y) / p.top, 0.0), 1.0)
            return p.cw * (1 - t**p.m_up) ** (1 / p.m_up)
        t = min(max((y - 0.5) / p.chin, 0.0), 1.0)
        return p.cw * (1 - t**p.m_lo) ** (1 / p.m_lo)

    def head(self, n=48) -> np.ndarray:
        p = self.p
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        up = np.sin(t) < 0
        out = np.empty((n, 2))
        out[up] = _superellipse(0.5, 0.5, p.cw, p.top, p.m_up, t[up])
        out[~up] = _superellipse(0.5, 0.5, p.cw, p.chin, p.m_lo, t[~up])
        return out

    @functools.cached_property
    def _eyes(self):
        return self._make_eyes()

    def eyes(self):
        return self._eyes

    def _make_eyes(self):
        p, sh, d = self.p, self.sh, self.sh.distort
        out = []
        for side in (0, 1):
            sx = -1 if side == 0 else 1  # image left eye is the subject's right
            cx = TEMPLATE[side, 0] + sx * p.eye_dx
            cy = TEMPLATE[side, 1] + p.eye_dy
            ew = p.ew * (1 + d[0])
            eh = p.eh * (1 + d[1]) * (1 - max(sh.squint, -0.5)) * (1 - 0.25 * max(sh.smile, 0) / 1.5)
            el = eh * p.el
            inner = (cx - sx * ew, cy)
            outer = (cx + sx * ew, cy - p.tilt)
            upper = _bezier(inner, (cx, cy - 2.1 * eh), outer, 9)
            lower = _bezier(outer, (cx, cy + 2.0 * el), inner, 9)
            lid = _bezier((inner[0], cy - 0.3 * eh), (cx, cy - 2 * eh - 0.022), (outer[0] + sx * 0.006, cy - p.tilt), 9)
            iris = (cx + sh.gaze[0] * 0.2 * ew, cy - 0.1 * eh + sh.gaze[1] * 0.1 * eh, p.iris * ew)
            out.append((upper, lower, lid, iris, (cx, cy), sx))
        return out

    def brows(self):
        p, sh, d = self.p, self.sh, self.sh.distort
        out = []
        for side in (0, 1):
            sx = -1 if side == 0 else 1
            cx = TEMPLATE[side, 0] + sx * p.eye_dx
            cy = TEMPLATE[side, 1] + p.eye_dy - p.brow_gap * (1 + d[2]) - sh.brow_raise * 0.012
            u = np.linspace(0, 1, 9)
            x = cx - sx * p.ew * 0.95 + sx * u * p.ew * (0.95 + p.brow_len)
            y = cy - p.brow_arch * np.sin(np.pi * np.clip(u * 1.25, 0, 1)) + p.brow_slope * (u - 0.3) * -1
            y = y - (sh.brow_raise * 0.006) * (1 - u)
            th = p.brow_th * (1 + d[3]) * (1 - 0.6 * u**1.5)
            top = np.stack([x, y - th / 2], 1)
            bot = np.stack([x, y + th / 2], 1)[::-1]
            out.append(np.concatenate([top, bot]))
        return out

    @functools.cached_property
    def _nose(self):
        return self._make_nose()

    def nose(self):
        return self._nose

    def _make_nose(self):
        p, d = self.p, self.sh.distort
        ny = p.nose_y * (1 + d[4] * 0.1)
        nw = p.nose_w * (1 + d[4])
        parts = {"alae": [], "nostrils": []}
        for sx in (-1, 1):
            parts["alae"].append(_bezier((0.5 + sx * nw * 0.55, ny - 0.04), (0.5 + sx * nw * 1.25, ny + 0.005),
                                         (0.5 + sx * nw * 0.45, ny + 0.02), 8))
            parts["nostrils"].append(_ellipse(0.5 + sx * nw * 0.5, ny + 0.012, nw * 0.28, 0.0075, 10))
        parts["tip"] = (0.5, ny)
        parts["bridge"] = [_bezier((0.5 + sx * p.bridge, 0.47), (0.5 + sx * p.bridge * 1.1, 0.55),
                                   (0.5 + sx * nw * 0.6, ny - 0.035), 6) for sx in (-1, 1)]
        return parts

    @functools.cached_property
    def _mouth(self):
        return self._make_mouth()

    def mouth(self):
        return self._mouth

    def _make_mouth(self):
        p, sh, d = self.p, self.sh, self.sh.distort
        my, mw = p.mouth_y, p.mouth_w * (1 + d[5]) * (1 + 0.08 * max(sh.smile, 0))
        sm = sh.smile * 0.014
        lc, rc = (0.5 - mw, my - sm), (0.5 + mw, my - sm)
        line = _bezier(lc, (0.5, my + sm * 1.2), rc, 11)
        ul, ll = p.lip_up, p.lip_lo
        upper = np.concatenate([
            _bezier(lc, (0.5 - mw * 0.55, my - ul * 1.2), (0.5 - mw * 0.18, my - ul - sm * 0.2), 6),
            [(0.5, my - ul * 0.7 - sm * 0.2)],
            _bezier((0.5 + mw * 0.18, my - ul - sm * 0.2), (0.5 + mw * 0.55, my - ul * 1.2), rc, 6),
        ])
        lower = _bezier(rc, (0.5, my + sm * 1.2 + 2.2 * ll), lc, 11)
        return line, upper, lower, (lc, rc)

    @functools.cached_property
    def _hair(self):
        return self._make_hair()

    def hair(self):
        """(back polygon or None, front polygon or None, (outer contour, hairline))."""
        return self._hair

    def _make_hair(self):
        """(back polygon or None, front polygon or None, (outer contour, hairline))."""
        p = self.p
        st = p.hair_style
        if st == "bald":
            return None, None, None
        vol = p.hair_vol * (2.2 if st == "curly" else 1.0)
        low = st in ("long", "bob", "curly")
        burn_y = 0.56 if low else 0.47 + 0.05 * p.hair_len  # sideburn end
        temple_y = 0.36 + 0.04 * p.hair_len
        hl = p.hairline + (0.06 if st == "receding" else 0.0)
        # outer contour over the crown, left sideburn -> right sideburn
        t0 = math.asin(min(max((0.5 - temple_y) / (p.top + vol), -1), 1))
        t = np.linspace(math.pi + t0, 2 * math.pi - t0, 33)  # y up is sin < 0
        wob = 1 + 0.025 * np.sin(t * 3 + p.hair_phase) + 0.015 * np.sin(t * 7 + 2 * p.hair_phase)
        outer = _superellipse(0.5, 0.5, (p.cw + vol) * wob, (p.top + vol) * wob, p.m_up, t)
        if st == "curly":
            outer[:, 1] -= 0.014 * np.abs(np.sin(t * 11 + p.hair_phase))
            outer[:, 0] += 0.014 * np.sign(outer[:, 0] - 0.5) * np.abs(np.sin(t * 11 + p.hair_phase))
        elif st == "spiky":
            outer[1::2, 1] -= 0.03
            outer[1::2, 0] += 0.012 * np.sign(outer[1::2, 0] - 0.5)
        wb = self.head_width(burn_y)
        outer = np.concatenate([[(0.5 - wb - 0.004, burn_y)], outer, [(0.5 + wb + 0.004, burn_y)]])
        # hairline, right sideburn -> left sideburn
        u = np.linspace(1, -1, 25)
        wt = self.head_width(temple_y) - 0.03
        hy = hl + (temple_y - hl) * np.abs(u) ** p.hair_round
        if st == "side":
            side = np.clip(np.sign(p.part) * u * 2.5 + 0.2, 0, 1)
            hy = hy + (0.33 - hl) * side * (1 - np.abs(u) ** 3)
        elif st == "receding":
            hy = hy - 0.08 * np.exp(-(((np.abs(u) - 0.55) / 0.22) ** 2))
        elif st in ("crop", "spiky"):
            hy = hy - 0.015
        elif st == "long" and p.part > 0.3:  # centre parting: the hair falls to the sides
            hy = hy - 0.03 * (1 - np.abs(u)) ** 2
        hairline = np.stack([0.5 + u * wt, hy], 1)
        burn_in = self.head_width(burn_y) - (0.05 if low else 0.022)
        hairline = np.concatenate([[(0.5 + burn_in, burn_y)], hairline, [(0.5 - burn_in, burn_y)]])
        front = np.concatenate([outer, hairline])
        back = None
        if low:
            bottom = {"long": 1.25, "bob": 0.78 + 0.1 * p.hair_len, "curly": 0.74 + 0.1 * p.hair_len}[st]
            flare = {"long": 0.05, "bob": 0.045, "curly": 0.09}[st]
            tb = np.linspace(math.pi, 2 * math.pi, 25)
            crown = _superellipse(0.5, 0.5, p.cw + vol + flare * 0.5, p.top + vol, p.m_up, tb)
            if st == "curly":
                crown = crown + (crown - 0.5) * 0.05 * np.abs(np.sin(tb * 10 + p.hair_phase))[:, None]
            side_l = np.array([[0.5 - p.cw - vol - flare, bottom], [0.5 - p.cw - vol - flare * 0.7, 0.62]])
            side_r = np.array([[0.5 + p.cw + vol + flare * 0.7, 0.62], [0.5 + p.cw + vol + flare, bottom]])
            back = np.concatenate([side_l, crown, side_r])
            if st != "long":
                back = np.concatenate([back, [[0.5 + p.cw * 0.6, bottom + 0.02], [0.5 - p.cw * 0.6, bottom + 0.02]]])
        return back, front, (outer, hairline)

    def beard(self):
        p, sh = self.p, self.sh
        t = np.linspace(0.08 * math.pi, 0.92 * math.pi, 21)
        outer = _superellipse(0.5, 0.5, p.cw + 0.008, p.chin + 0.012, p.m_lo, t)
        outer = outer[outer[:, 1] > 0.66]
        my, mw = p.mouth_y, p.mouth_w
        inner = np.array([
            [0.5 + mw + 0.02, my - 0.04], [0.5 + mw + 0.035, my + 0.02], [0.5 + 0.4 * mw, my + p.lip_lo * 2.4 + 0.03],
            [0.5 - 0.4 * mw, my + p.lip_lo * 2.4 + 0.03], [0.5 - mw - 0.035, my + 0.02], [0.5 - mw - 0.02, my - 0.04],
        ])
        inner[:, 1] -= sh.smile * 0.01
        return np.concatenate([outer, inner])

    def moustache(self):
        p, sh = self.p, self.sh
        my, mw = p.mouth_y - p.lip_up - 0.004 - sh.smile * 0.01, p.mouth_w
        top = _bezier((0.5 - mw * 1.1, my + 0.02), (0.5, my - 0.055), (0.5 + mw * 1.1, my + 0.02), 9)
        bot = _bezier((0.5 + mw * 1.05, my + 0.025), (0.5, my - 0.005), (0.5 - mw * 1.05, my + 0.025), 9)
        return np.concatenate([top, bot])

    def ears(self):
        p = self.p
        out = []
        for sx in (-1, 1):
            x = 0.5 + sx * (self.head_width(0.55) - 0.012)
            out.append(np.array([
                (x, 0.46), (x + sx * p.ear * 0.7, 0.43), (x + sx * p.ear, 0.47), (x + sx * p.ear * 0.9, 0.56),
                (x + sx * p.ear * 0.5, 0.64), (x, 0.66),
            ]))
        return out

    def neck_shirt(self):
        p = self.p
        neck = np.array([(0.5 - p.neck, 0.78), (0.5 + p.neck, 0.78), (0.5 + p.neck + 0.02, 1.3), (0.5 - p.neck - 0.02, 1.3)])
        shirt = np.array([(-0.3, 1.3), (-0.3, 1.07), (0.5 - p.neck - 0.1, 1.0), (0.5 - p.neck + 0.02, 1.02),
                          (0.5, 1.16), (0.5 + p.neck - 0.02, 1.02), (0.5 + p.neck + 0.1, 1.0), (1.3, 1.07), (1.3, 1.3)])
        return neck, shirt

    def glasses(self):
        out = []
        for side in (0, 1):
            sx = -1 if side == 0 else 1
            cx = TEMPLATE[side, 0] + sx * self.p.eye_dx
            cy = TEMPLATE[side, 1] + self.p.eye_dy + 0.005
            out.append(_superellipse(cx, cy, self.p.ew + 0.03, 0.048, 3.5, np.linspace(0, 2 * np.pi, 24)))
        return out

    def landmarks(self) -> np.ndarray:
        eyes = self.eyes()
        line, _, _, (lc, rc) = self.mouth()
        nose = self.nose()["tip"]
        pts = [self.pose([e[4]], 0.5)[0] for e in eyes]
        pts.append(self.pose([nose], 1.0)[0])
        pts += [self.pose([lc], 0.6)[0], self.pose([rc], 0.6)[0]]
        return np.array(pts)


# -- rendering -----------------------------------------------------------------------


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


def _strands(outer: np.ndarray, hairline: np.ndarray, ts: np.ndarray, part: float) -> np.ndarray:
    """Curves from the hairline to the outer contour at fractions ``ts``: (n, 5, 2)."""
    a = outer[(ts * (len(outer) - 1)).astype(int)]
    b = hairline[((1 - ts) * (len(hairline) - 1)).astype(int)]
    m = (a + b) / 2 + np.array([0.015 * part, -0.015])
    return _beziers(b, m, a, 5).reshape(-1, 2).reshape(len(ts), 5, 2)


def _bbox(c, rx, ry) -> tuple:
    return (c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry)


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


# -- the dataset ----------------------------------------------------------------------


class _Refs(Sequence):
    """Labels without pixels, computed on access (no per-sample list is built)."""

    def __init__(self, ds: SynthFaces):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.ds.ref(i)


class SynthFaces(Dataset):
    """Procedural synthetic faces: mugshot-like photos and matching sketches, no files needed."""

    name = "synthfaces"
    Config = SynthFacesConfig

    def __init__(self, config: SynthFacesConfig | None = None):
        self.config = config or SynthFacesConfig()
        c = self.config
        self.per_identity = c.images_per_identity + c.sketches_per_identity

    # labels ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.config.num_identities * self.per_identity

    @property
    def refs(self) -> _Refs:  # type: ignore[override]
        return _Refs(self)

    def identity_name(self, k: int) -> str:
        return f"{self.config.prefix}{k:05d}"

    def identities(self) -> list[str]:
        return [self.identity_name(k) for k in range(self.config.num_identities)]

    def locate(self, i: int) -> tuple[int, Literal["photo", "sketch"], int, str | None]:
        """Index -> (identity index, modality, shot within modality, style)."""
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"synthfaces index {i} out of range for {n} samples")
        k, j = divmod(i, self.per_identity)
        if j < self.config.images_per_identity:
            return k, "photo", j, None
        j -= self.config.images_per_identity
        return k, "sketch", j, self.config.styles[j % len(self.config.styles)]

    def ref(self, i: int) -> SampleRef:
        k, modality, j, style = self.locate(i)
        return SampleRef(self._path(k, modality, j), self.identity_name(k), modality, style)

    def labels(self) -> list[tuple[str, str, str | None]]:
        """(identity, modality, style) of every sample, without rendering."""
        c = self.config
        one = [("photo", None)] * c.images_per_identity + [
            ("sketch", c.styles[j % len(c.styles)]) for j in range(c.sketches_per_identity)
        ]
        return [(self.identity_name(k), m, s) for k in range(c.num_identities) for m, s in one]

    def _path(self, k: int, modality: str, j: int) -> str:
        return f"synthfaces://{self.config.seed}/{self.identity_name(k)}/{modality}_{j}"

    # pixels ---------------------------------------------------------------------------
    def render(self, k: int, modality: Literal["photo", "sketch"], j: int, style: str | None = None):
        """Render shot ``j`` of ``modality`` for identity ``k``: (uint8 HxWx3, landmarks 5x2)."""
        c = self.config
        p = _identity(c.seed, k)
        sh = _shot(c.seed, k, modality, j, c.jitter)
        f = _Face(p, sh, 2 * c.size)
        rng = np.random.default_rng([_SALT_SHOT + 1, c.seed, k, _MODALITY_CODE[modality], j])
        if modality == "photo":
            img = _render_photo(f, c.size, rng)
        else:
            img = _render_sketch(f, c.size, style or c.styles[j % len(c.styles)], rng)
        return img, f.landmarks() / 2

    def __getitem__(self, i: int) -> Sample:
        k, modality, j, style = self.locate(i)
        img, lm = self.render(k, modality, j, style)
        meta = {
            "seed": self.config.seed,
            "index": int(i) % len(self),
            "identity_index": k,
            "shot": j,
            "landmarks": lm.round(2).tolist(),
        }
        return Sample(img, self.identity_name(k), modality, style, None, meta)


@hookimpl
def register_datasets(register):
    register(SynthFaces)


# -- contact sheet ---------------------------------------------------------------------


def contact_sheet(ds: SynthFaces, n_identities: int = 8, pad: int = 4) -> np.ndarray:
    """One row per identity (its photos, then its sketches) as a uint8 RGB image."""
    n = min(n_identities, ds.config.num_identities)
    s, cols = ds.config.size, ds.per_identity
    sheet = np.full((pad + n * (s + pad), pad + cols * (s + pad), 3), 255, np.uint8)
    for k in range(n):
        for j in range(cols):
            y, x = pad + k * (s + pad), pad + j * (s + pad)
            sheet[y : y + s, x : x + s] = ds[k * cols + j].image
    return sheet


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m c4s_plugins.synthfaces", description=main.__doc__)
    ap.add_argument("--sheet", required=True, help="PNG file to write the contact sheet to.")
    ap.add_argument("--identities", type=int, default=8, help="Rows (identities) on the sheet.")
    ap.add_argument("--photos", type=int, default=2, help="Photos per identity.")
    ap.add_argument("--styles", default="line,pencil,charcoal", help="Comma-separated sketch styles, one sketch each.")
    ap.add_argument("--size", type=int, default=112, help="Image side in pixels.")
    ap.add_argument("--seed", type=int, default=0, help="Dataset seed.")
    a = ap.parse_args(argv)
    styles = [s.strip() for s in a.styles.split(",") if s.strip()]
    from c4s_core.config import validate

    cfg = validate(SynthFacesConfig, {
        "num_identities": a.identities, "images_per_identity": a.photos, "sketches_per_identity": len(styles),
        "styles": styles, "size": a.size, "seed": a.seed,
    }, "synthfaces sheet options")
    Image.fromarray(contact_sheet(SynthFaces(cfg), a.identities)).save(a.sheet)
    print(a.sheet)


main.__doc__ = "Write a contact sheet of synthfaces identities (photos, then sketches) to a PNG."

if __name__ == "__main__":
    main()
