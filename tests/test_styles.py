"""Built-in sketch styles (register_sketch_styles): prompts, renderers, configs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

import c4s_core
from c4s_core.errors import C4SError, ConfigError, DataError, UnknownComponentError
from c4s_core.styles import SketchStyle

REQUIRED = ("pencil", "charcoal", "line_drawing", "forensic_composite", "soft_shading")
RENDERERS = ("xdog", "pencil_dodge", "edges")


def draw_face(h: int = 160, w: int = 128) -> np.ndarray:
    """A synthetic face-like photo: background, skin, hair, eyes, nose, mouth."""
    im = Image.new("RGB", (w, h), (200, 190, 180))
    d = ImageDraw.Draw(im)
    d.ellipse((w * 0.15, h * 0.1, w * 0.85, h * 0.9), fill=(225, 180, 150), outline=(120, 80, 60), width=2)
    d.ellipse((w * 0.15, h * 0.05, w * 0.85, h * 0.3), fill=(60, 40, 30))
    for x in (0.35, 0.65):
        d.ellipse((w * x - 8, h * 0.42 - 5, w * x + 8, h * 0.42 + 5), fill=(255, 255, 255))
        d.ellipse((w * x - 3, h * 0.42 - 3, w * x + 3, h * 0.42 + 3), fill=(30, 30, 30))
    d.line((w * 0.5, h * 0.45, w * 0.46, h * 0.6, w * 0.52, h * 0.62), fill=(150, 100, 80), width=2)
    d.chord((w * 0.35, h * 0.65, w * 0.65, h * 0.78), 0, 180, fill=(170, 60, 60))
    return np.asarray(im)


@pytest.fixture(scope="module")
def styles():
    return c4s_core.get_registries().sketch_style


def rendering_names(reg) -> list[str]:
    return [e.name for e in reg if e.cls.renders]


def test_register_sketch_styles(styles):
    for name in REQUIRED + RENDERERS:
        assert name in styles
        assert styles.get(name).origin.plugin == "styles"
    assert styles.get("line").name == "line_drawing"
    assert set(RENDERERS + ("pencil", "charcoal", "line_drawing")) <= set(rendering_names(styles))


def test_every_style_has_prompts_and_description(styles):
    assert len(styles) >= len(REQUIRED + RENDERERS)
    for entry in styles:
        assert entry.description and "\n" not in entry.description, entry.name
        prompts = entry.cls.prompts
        assert isinstance(prompts, tuple) and prompts, entry.name
        assert all(isinstance(p, str) and p.strip() for p in prompts), entry.name
        assert isinstance(entry.cls.renders, bool), entry.name
        for field_name, field in entry.config_cls.model_fields.items():
            assert field.description, f"{entry.name}.{field_name} has no description"


@pytest.mark.parametrize("name", ["xdog", "pencil_dodge", "edges", "pencil", "charcoal", "line_drawing"])
def test_renderer_output(styles, name):
    style = styles.build(name)
    photo = draw_face()
    before = photo.copy()
    out = style.render(photo)
    assert out.dtype == np.uint8 and out.shape == photo.shape
    np.testing.assert_array_equal(photo, before)  # input untouched
    # white paper, dark strokes
    assert np.median(out) > 200, f"{name}: median {np.median(out)}"
    assert (out < 100).mean() > 0.002, f"{name}: no dark strokes"
    assert (out < 100).mean() < 0.5, f"{name}: mostly ink"
    # deterministic, also from a fresh instance
    np.testing.assert_array_equal(out, style.render(photo))
    np.testing.assert_array_equal(out, styles.build(name).render(photo))


def test_all_registered_renderers_follow_the_contract(styles):
    photo = draw_face(96, 80)
    for name in rendering_names(styles):
        out = styles.build(name).render(photo)
        assert out.dtype == np.uint8 and out.shape == (96, 80, 3), name


@pytest.mark.parametrize("name", RENDERERS)
@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 7, 3), (33, 17, 3), (64, 200, 3), (40, 30), (40, 30, 4)])
def test_renderers_accept_any_size(styles, name, shape):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=shape, dtype=np.uint8)
    out = styles.build(name).render(photo)
    assert out.dtype == np.uint8 and out.shape == (*shape[:2], 3)


def test_render_rejects_bad_input(styles):
    xdog = styles.build("xdog")
    with pytest.raises(DataError, match="uint8"):
        xdog.render(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(DataError, match="HxWx3"):
        xdog.render(np.zeros((8, 8, 5), dtype=np.uint8))
    with pytest.raises(DataError, match="empty"):
        xdog.render(np.zeros((0, 8, 3), dtype=np.uint8))


def test_config_changes_output(styles):
    photo = draw_face()
    a = styles.build("xdog").render(photo)
    b = styles.build("xdog", {"sigma": 2.0, "epsilon": 0.5}).render(photo)
    assert not np.array_equal(a, b)
    sobel = styles.build("edges", {"method": "sobel", "line_width": 3}).render(photo)
    assert sobel.shape == photo.shape and (sobel < 100).any()


@pytest.mark.parametrize(
    "name, options, field",
    [
        ("xdog", {"sigma": -1}, "sigma"),
        ("xdog", {"k": 1.0}, "k"),
        ("xdog", {"phi": 0}, "phi"),
        ("xdog", {"p": 500}, "p"),
        ("xdog", {"sigmaa": 1.0}, "sigmaa"),
        ("pencil_dodge", {"sigma": 0}, "sigma"),
        ("charcoal", {"gamma": 50}, "gamma"),
        ("edges", {"method": "prewitt"}, "method"),
        ("edges", {"line_width": 0}, "line_width"),
    ],
)
def test_bad_config_names_the_field(styles, name, options, field):
    with pytest.raises(ConfigError) as info:
        styles.build(name, options)
    msg = str(info.value)
    assert f"{field}:" in msg and name in msg


def test_edges_low_above_high(styles):
    with pytest.raises(ConfigError, match=r"low \(0.9\) must be <= high \(0.5\)"):
        styles.build("edges", {"low": 0.9, "high": 0.5})


def test_unknown_style_suggests(styles):
    with pytest.raises(UnknownComponentError, match="Did you mean 'pencil'"):
        styles.get("pencill")


@pytest.mark.parametrize("name", ["forensic_composite", "soft_shading"])
def test_prompt_only_style_render_raises(styles, name):
    style = styles.build(name)
    assert style.renders is False
    with pytest.raises(C4SError, match=f"{name!r} has no procedural renderer") as info:
        style.render(draw_face())
    assert "xdog" in str(info.value)  # names the styles that do render


def test_base_class_defaults():
    class Plain(SketchStyle):
        """A plain test style."""

        name = "plain"
        prompts = ("a plain drawing",)

    style = Plain()
    assert isinstance(style.config, SketchStyle.Config)
    with pytest.raises(C4SError, match="'plain' has no procedural renderer"):
        style.render(draw_face())


def test_plugin_import_is_light():
    code = (
        "import sys, c4s_plugins.styles, c4s_core.styles\n"
        "heavy = [m for m in ('torch', 'skimage', 'scipy', 'diffusers') if m in sys.modules]\n"
        "print(heavy); sys.exit(1 if heavy else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_style_grid(styles):
    from c4s_core.styles import style_grid

    renderers = [styles.build(n) for n in RENDERERS]
    grid = style_grid([draw_face(), draw_face(100, 90)], renderers, size=64)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[1] == 4 * 64 + 5 * 4  # photo + 3 renderers, padded


def test_docs_figure_script(tmp_path, styles):
    if "synthfaces" not in c4s_core.get_registries().dataset:
        pytest.skip("synthfaces dataset not registered")
    from c4s_plugins.styles import main

    out = tmp_path / "styles.png"
    assert main([str(out), "--n", "2", "--size", "48"]) == 0
    im = np.asarray(Image.open(out))
    assert im.shape[1] == (1 + len(rendering_names(styles))) * 48 + (2 + len(rendering_names(styles))) * 4
