"""Built-in sketch styles: prompt styles for the generator and procedural renderers.

Prompt styles (``forensic_composite``, ``soft_shading``) only describe a style
to the CLIP text conditioner. Renderers (``xdog``, ``pencil_dodge``,
``edges``, and the ``pencil``, ``charcoal`` and ``line_drawing`` styles built
on them) also draw a photo as a sketch without training: baselines for the
matcher and a sanity check for the data pipeline. All renderers are
deterministic and work on any image size; scipy/skimage are imported inside
``draw`` so that loading this plugin stays cheap.

Render the docs figure with ``python -m c4s_plugins.styles docs/styles.png``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, create_model, model_validator

from c4s_core import ComponentConfig, hookimpl
from c4s_core.styles import SketchStyle

# -- renderers -------------------------------------------------------------------


class XDoG(SketchStyle):
    """Extended difference of Gaussians line drawing (Winnemöller et al. 2012)."""

    name = "xdog"
    renders = True
    prompts = (
        "a black and white ink line drawing of a face",
        "a high-contrast stylised sketch of a face with bold outlines",
    )

    class Config(ComponentConfig):
        """XDoG in the paper's ``p`` form, on luminance in [0, 1]:

        ``S = (1 + p) G_sigma - p G_(k sigma)`` (a sharpened image), then the soft
        threshold ``T(S) = 1 if S >= epsilon else 1 + tanh(phi (S - epsilon))``.
        ``p`` relates to the ``tau`` form ``G_sigma - tau G_(k sigma)`` by
        ``tau = p / (1 + p)`` (up to the scale ``1 + p``).
        """

        sigma: float = Field(
            0.8, gt=0, le=20, description="Std. dev. (pixels) of the inner Gaussian G_sigma; (0, 20]."
        )
        k: float = Field(
            1.6, gt=1, le=10, description="Ratio of the outer to the inner Gaussian's std. dev.; (1, 10]."
        )
        p: float = Field(
            20.0, ge=0, le=200, description="Edge sharpening strength p; [0, 200]. 0 gives a blurred tone map."
        )
        epsilon: float = Field(
            0.2, ge=-1, le=2, description="Threshold on S (luminance units): darker becomes ink; [-1, 2]."
        )
        phi: float = Field(
            10.0, gt=0, le=1000, description="Steepness of the tanh ramp below epsilon; (0, 1000]. Large is binary."
        )
        stretch: float = Field(
            2.0, ge=0, lt=50,
            description="Contrast stretch first: map this percentile of luminance to 0 and "
            "100 minus it to 1, so epsilon means the same in dim and bright photos; [0, 50). 0 is off.",
        )

    def draw(self, gray: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        c = self.config
        if c.stretch > 0:
            lo, hi = np.percentile(gray, [c.stretch, 100.0 - c.stretch])
            if hi > lo:
                gray = np.clip((gray - lo) / (hi - lo), 0.0, 1.0)
        g1 = ndimage.gaussian_filter(gray, c.sigma, mode="nearest")
        g2 = ndimage.gaussian_filter(gray, c.sigma * c.k, mode="nearest")
        s = (1.0 + c.p) * g1 - c.p * g2
        return np.where(s >= c.epsilon, 1.0, 1.0 + np.tanh(c.phi * (s - c.epsilon)))


class PencilDodge(SketchStyle):
    """Pencil sketch by colour-dodge: grey / (1 - blur(inverted grey))."""

    name = "pencil_dodge"
    renders = True
    prompts = (
        "a graphite pencil sketch of a face on white paper",
        "a pencil drawing of a face with fine strokes and light shading",
    )

    class Config(ComponentConfig):
        """Grayscale, invert, Gaussian blur, colour-dodge the grey with the blur,
        then ``out ** gamma`` to darken the strokes."""

        sigma: float = Field(
            6.0, gt=0, le=100, description="Blur std. dev. (pixels) of the inverted image; (0, 100]. Larger gives broader strokes."
        )
        gamma: float = Field(
            2.0, ge=0.1, le=10, description="Stroke darkening exponent applied after the dodge; [0.1, 10]. 1 is the plain dodge."
        )
        smooth: float = Field(
            0.0, ge=0, le=10, description="Std. dev. (pixels) of a final smudge blur; [0, 10]. 0 is off."
        )

    def draw(self, gray: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        c = self.config
        blur = ndimage.gaussian_filter(1.0 - gray, c.sigma, mode="nearest")
        dodge = np.clip(gray / np.maximum(1.0 - blur, 1e-3), 0.0, 1.0)
        out = dodge**c.gamma
        if c.smooth > 0:
            out = ndimage.gaussian_filter(out, c.smooth, mode="nearest")
        return out


class Edges(SketchStyle):
    """Edge drawing: dark Canny or Sobel edges on white paper."""

    name = "edges"
    renders = True
    prompts = (
        "a thin black outline drawing of a face on white paper",
        "a contour sketch of a face, outlines only, no shading",
    )

    class Config(ComponentConfig):
        method: Literal["canny", "sobel"] = Field(
            "canny", description="'canny': binary thin edges; 'sobel': graded edge strength."
        )
        sigma: float = Field(
            1.2, ge=0, le=20, description="Gaussian pre-smoothing std. dev. (pixels); [0, 20]."
        )
        low: float = Field(
            0.7, ge=0, le=1, description="Canny low hysteresis threshold, as a quantile of gradient magnitude; [0, 1]."
        )
        high: float = Field(
            0.85, ge=0, le=1, description="Canny high threshold, as a quantile of gradient magnitude; [0, 1], >= low."
        )
        line_width: int = Field(
            1, ge=1, le=9, description="Stroke width in pixels (edges are dilated); 1..9."
        )
        strength: float = Field(
            1.0, gt=0, le=10, description="Sobel only: ink per unit of the 99th-percentile edge strength; (0, 10]."
        )

        @model_validator(mode="after")
        def _low_below_high(self):
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
            return self

    def draw(self, gray: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        c = self.config
        if min(gray.shape) < 3:  # too small for a gradient: blank paper
            return np.ones_like(gray)
        if c.method == "canny":
            from skimage.feature import canny

            ink = canny(
                gray, sigma=c.sigma, low_threshold=c.low, high_threshold=c.high,
                use_quantiles=True, mode="nearest",
            ).astype(np.float64)
        else:
            from skimage.filters import sobel

            smooth = ndimage.gaussian_filter(gray, c.sigma, mode="nearest") if c.sigma else gray
            mag = sobel(smooth)
            scale = np.percentile(mag, 99)
            ink = np.clip(c.strength * mag / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(mag)
        if c.line_width > 1:
            ink = ndimage.grey_dilation(ink, size=(c.line_width, c.line_width))
        return 1.0 - ink


# -- named styles: prompts for the generator, renderers where one fits -------------


def _restyled(base: type[ComponentConfig], doc: str | None = None, **defaults: Any) -> type[ComponentConfig]:
    """A ``Config`` like the renderer's ``base`` whose fields ``defaults`` start
    elsewhere; each keeps its type, range and description."""
    fields: dict[str, Any] = {name: (Annotated[base.model_fields[name].annotation, base.model_fields[name]], value)
                              for name, value in defaults.items()}
    return create_model("Config", __base__=base, __doc__=doc, __module__=__name__, **fields)


class Pencil(PencilDodge):
    """Graphite pencil sketch, as drawn by a police artist."""

    name = "pencil"
    prompts = (
        "a forensic pencil sketch of a face",
        "a graphite pencil portrait sketch on white paper, fine hatching",
        "a police artist's pencil drawing of a suspect's face",
    )


class Charcoal(PencilDodge):
    """Charcoal drawing: broad, dark, smudged strokes."""

    name = "charcoal"
    prompts = (
        "a charcoal sketch of a face",
        "a smudged charcoal portrait drawing with dark heavy strokes",
        "a charcoal drawing of a face on textured paper",
    )

    Config = _restyled(PencilDodge.Config, sigma=12.0, gamma=3.0, smooth=1.0)


class LineDrawing(XDoG):
    """Clean line drawing: near-binary XDoG outlines."""

    name = "line_drawing"
    prompts = (
        "a clean black line drawing of a face",
        "a minimal ink line art portrait, outlines only, white background",
    )

    Config = _restyled(XDoG.Config, "XDoG with strong sharpening and a threshold near black, so only edges ink.",
                       sigma=1.0, p=80.0, epsilon=0.0, phi=50.0)


class ForensicComposite(SketchStyle):
    """Forensic composite: a face assembled from feature templates (FACES, IdentiKit)."""

    name = "forensic_composite"
    prompts = (
        "a forensic composite sketch of a face",
        "a software-generated facial composite of a suspect, grey shading",
        "an identikit composite portrait made from separate facial features",
    )


class SoftShading(SketchStyle):
    """Soft tonal shading: smooth blended graphite with few outlines."""

    name = "soft_shading"
    prompts = (
        "a softly shaded pencil portrait of a face",
        "a blended graphite drawing of a face with smooth tonal shading",
    )


# The artists' styles of the real datasets (prompt-only: they are learnt from the
# sketches; the label comes from the dataset, e.g. paired_folder's styles_csv).
ARTISTS = (
    ("cufs", "CUFS: realistic soft pencil shading by one artist, frontal, aligned.",
     "a realistic pencil sketch of a face with soft graphite shading, frontal, neutral expression"),
    ("fs2k_0", "FS2K style 0: sparse pencil outlines, few hair strokes, little shading.",
     "a sparse pencil line sketch of a face, thin outlines and a few hair strokes, no shading"),
    ("fs2k_1", "FS2K style 1: bold dark ink-like strokes, heavy hair.",
     "a bold dark ink sketch of a face, thick black strokes and heavily drawn hair"),
    ("fs2k_2", "FS2K style 2: fine detailed pencil with light hatching.",
     "a fine detailed pencil sketch of a face, light hatching and many thin hair lines"),
)
ARTIST_STYLES = tuple(
    type(f"ArtistStyle_{name}", (SketchStyle,), {"__doc__": doc, "__module__": __name__, "name": name,
                                                 "description": doc, "prompts": (prompt,)})
    for name, doc, prompt in ARTISTS
)


STYLES: tuple[tuple[type[SketchStyle], tuple[str, ...]], ...] = (
    *((cls, ()) for cls in ARTIST_STYLES),
    (Pencil, ()),
    (Charcoal, ()),
    (LineDrawing, ("line",)),
    (ForensicComposite, ("composite",)),
    (SoftShading, ()),
    (XDoG, ()),
    (PencilDodge, ()),
    (Edges, ("canny",)),
)


@hookimpl
def register_sketch_styles(register):
    for cls, aliases in STYLES:
        register(cls, aliases=aliases)


def main(argv: list[str] | None = None) -> int:
    """Write a grid of photos drawn by every renderer (docs/styles.png)."""
    import argparse

    import c4s_core
    from c4s_core.data import save_image
    from c4s_core.styles import style_grid

    ap = argparse.ArgumentParser(prog="python -m c4s_plugins.styles", description=main.__doc__)
    ap.add_argument("out", help="output PNG path")
    ap.add_argument("--n", type=int, default=3, help="number of synthetic faces (rows)")
    ap.add_argument("--size", type=int, default=160, help="tile size in pixels")
    ap.add_argument("--seed", type=int, default=0, help="synthfaces seed")
    args = ap.parse_args(argv)
    regs = c4s_core.get_registries()
    ds = regs.dataset.build(
        "synthfaces",
        {"num_identities": args.n, "images_per_identity": 1, "sketches_per_identity": 0,
         "size": args.size, "seed": args.seed},
    )
    photos = [s.image for s in ds if s.modality == "photo"][: args.n]
    styles = [regs.sketch_style.build(e.name) for e in regs.sketch_style if e.cls.renders]
    save_image(args.out, style_grid(photos, styles, size=args.size))
    print(f"wrote {args.out}: {len(photos)} photos x {len(styles)} renderers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
