"""synthfaces identities and shots: each identity's face parameters, drawn from
``(seed, identity index)`` alone, and each shot's pose, lighting, expression and
sketch-artist error, drawn from ``(seed, identity, modality, shot)``."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

# Seed-sequence salts: identity parameters and shots never share a stream.
_SALT_ID, _SALT_SHOT = 0x5F1D, 0x5F5A
_MODALITY_CODE = {"photo": 0, "sketch": 1}

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

