"""synthfaces face geometry: one shot's head, features, hair and landmarks in
normalised coordinates at the ArcFace template, posed into pixels; the curves
they are drawn from."""

from __future__ import annotations

import functools
import math

import numpy as np

from ._synthfaces_identity import _Identity, _Shot

# ArcFace 112x112 five-point template, as fractions of the image size.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
) / 112.0

_CENTRE = np.array([0.5, 0.56])


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


def _once(make):
    """A method of ``_Face`` computed on the first call only: a shot's geometry never changes."""
    key = "_" + make.__name__

    @functools.wraps(make)
    def get(self):
        if key not in self.__dict__:
            self.__dict__[key] = make(self)
        return self.__dict__[key]

    return get


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

    @_once
    def eyes(self):
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

    @_once
    def nose(self):
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

    @_once
    def mouth(self):
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

    @_once
    def hair(self):
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


def _strands(outer: np.ndarray, hairline: np.ndarray, ts: np.ndarray, part: float) -> np.ndarray:
    """Curves from the hairline to the outer contour at fractions ``ts``: (n, 5, 2)."""
    a = outer[(ts * (len(outer) - 1)).astype(int)]
    b = hairline[((1 - ts) * (len(hairline) - 1)).astype(int)]
    m = (a + b) / 2 + np.array([0.015 * part, -0.015])
    return _beziers(b, m, a, 5).reshape(-1, 2).reshape(len(ts), 5, 2)


def _bbox(c, rx, ry) -> tuple:
    return (c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry)

