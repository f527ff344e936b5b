"""Built-in conditioners: frozen encoders whose tokens the diffusion generator
cross-attends to.

Contract (``c4s_core.hookspecs.register_conditioners``), the same as ``dlib_id``:
``encode(photos: list[uint8 HxWx3 RGB], styles: list[str] | None) -> float32
torch tensor [B, num_tokens, dim]`` (no gradient), attributes ``dim``,
``num_tokens``, ``identity`` (encoder name + options + weights hash: the cache
key of :mod:`c4s_core.cache`), ``uses`` ("photo" or "style": what ``encode``
reads) and ``role`` ("identity", "appearance" or "style": the guidance group the
generator drops and guides it under).

- ``clip_image``: open_clip image tower on the photo (pooled embedding, or the
  patch tokens);
- ``clip_text``: open_clip text tower on the sketch-style prompt (a
  ``sketch_style`` name, resolved to its prompts, or raw text);
- ``adaface_id``: an IR backbone (``ir_50``...) with AdaFace weights or a c4s
  matcher checkpoint: the normalised 512-d embedding, optionally plus the 7x7
  feature map as 49 tokens;
- ``photo_patches``: the aligned photo itself, small and grey, as a grid of
  pixel patches with their 2-D positions: no weights at all. Where no
  pretrained CLIP exists it stands in for CLIP's patch tokens (the appearance
  the generator may copy); a random tower's tokens carry little of it.

Nothing downloads: ``pretrained`` is none (random towers from a fixed seed), an
open_clip tag already in the local cache, or a weights file. torch and open_clip
are imported inside the methods.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from c4s_core import ComponentConfig, hookimpl
from c4s_core.errors import C4SError, ConfigError, DataError


def _hash_file(path: Path) -> str:
    from c4s_core.data.io import file_hash

    return file_hash(path)


def _identity_string(name: str, config: ComponentConfig, weights: str, exclude: set[str] | None = None) -> str:
    opts = json.loads(config.model_dump_json(exclude=exclude or set()))
    return json.dumps({"encoder": name, "options": opts, "weights": weights, "version": 1}, sort_keys=True)


def _check_photos(photos, what: str) -> list[np.ndarray]:
    out = []
    for i, p in enumerate(photos):
        a = np.asarray(p)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise DataError(f"{what}: photo #{i} must be uint8 HxWx3 RGB, got {a.dtype} {a.shape}")
        out.append(a)
    return out


def _photo_batch(photos, what: str, square: bool = False):
    """Checked photos (centre-cropped to squares with ``square``) as one float
    ``[B, 3, H, W]`` tensor of 0-255 values."""
    import torch

    ims = _check_photos(photos, what)
    if square:
        ims = [_square(p) for p in ims]
    return torch.stack([torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1) for p in ims]).float()


class _FrozenPhotoTower:
    """The encode path of a conditioner on a frozen torch tower over photos: no
    photos, no tokens; else ``tokens(preprocess(photos))`` without gradient."""

    num_tokens: int
    dim: int

    def preprocess(self, photos):
        raise NotImplementedError

    def tokens(self, x):
        raise NotImplementedError

    def encode(self, photos, styles=None):
        """``[B, num_tokens, dim]`` float32 on the CPU; styles are ignored."""
        import torch

        if len(photos) == 0:
            return torch.zeros(0, self.num_tokens, self.dim)
        with torch.no_grad():
            return self.tokens(self.preprocess(photos))


# -- open_clip ------------------------------------------------------------------------


class OpenClipConfig(ComponentConfig):
    model: str = Field("ViT-B-32", description="open_clip architecture name (see open_clip.list_models()).")
    pretrained: str | None = Field(
        None,
        description="None (random frozen tower from `seed`), an open_clip pretrained tag already in the local "
        "cache, or a local weights file (.safetensors/.bin/.pt open_clip state dict). Nothing is downloaded.",
    )
    model_config_override: dict[str, Any] | None = Field(
        None,
        alias="model_config",
        description="A full open_clip model config (embed_dim, vision_cfg, text_cfg) used instead of `model`'s; "
        "for tiny test models.",
    )
    seed: int = Field(0, ge=0, description="Seed of the random initialisation (used when pretrained is none).")
    device: str = Field("cpu", description="Torch device of the encoder.")

    model_config = {**ComponentConfig.model_config, "populate_by_name": True}

    @field_validator("model_config_override")
    @classmethod
    def _cfg(cls, v):
        if v is not None and not all(k in v for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ValueError("model_config needs the keys embed_dim, vision_cfg and text_cfg (an open_clip model config)")
        return v


def _pretrained_file(model: str, tag: str) -> Path:
    """A local file for ``pretrained``: the path itself, or the cached download of a tag."""
    p = Path(tag).expanduser()
    if p.is_file():
        return p
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model, tag)
    if not cfg:
        if any(ch in tag for ch in "/\\.") or p.suffix:
            raise DataError(f"open_clip weights file not found: {p}")
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ConfigError(
            f"pretrained={tag!r} is neither a file nor an open_clip tag of {model!r}; tags: {', '.join(tags) or 'none'}"
        )
    found = None
    if cfg.get("file"):
        found = Path(cfg["file"])
    elif cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, fname = os.path.split(cfg["hf_hub"].rstrip("/")) if not cfg["hf_hub"].endswith("/") else (
            cfg["hf_hub"].rstrip("/"), "")
        for f in ([fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
            hit = try_to_load_from_cache(repo, f)
            if isinstance(hit, str):
                found = Path(hit)
                break
    elif cfg.get("url"):
        found = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
    if found is None or not found.is_file():
        raise C4SError(
            f"open_clip weights for {model!r} pretrained={tag!r} are not in the local cache and c4s never "
            "downloads. Provide them locally: download the checkpoint elsewhere and set "
            "pretrained=/path/to/open_clip_weights.safetensors (or pretrained=none for a random frozen tower)."
        )
    return found


def build_open_clip(config: OpenClipConfig, what: str):
    """(CLIP model in eval mode without grad, model config dict, weights hash)."""
    import torch
    from open_clip.factory import get_model_config, load_checkpoint
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = config.model_config_override
    if cfg is None:
        cfg = get_model_config(config.model)
        if cfg is None:
            import open_clip

            raise ConfigError(f"{what}: unknown open_clip model {config.model!r}; known: {', '.join(open_clip.list_models()[:30])}...")
    cfg = json.loads(json.dumps(cfg))
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    if "timm_model_name" in cfg.get("vision_cfg", {}) or "hf_model_name" in cfg.get("text_cfg", {}):
        raise ConfigError(f"{what}: open_clip model {config.model!r} needs timm/transformers towers; use a plain CLIP ViT/ResNet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = (CustomTextCLIP if custom else CLIP)(**cfg)
    weights = f"random-seed-{config.seed}"
    if config.pretrained is not None:
        path = _pretrained_file(config.model, config.pretrained)
        try:
            bad = load_checkpoint(model, str(path), strict=False)
        except Exception as err:
            raise DataError(f"{what}: cannot load open_clip weights {path}: {err}") from None
        missing = [k for k in bad.missing_keys if k != "attn_mask"]
        if missing or bad.unexpected_keys:
            raise DataError(
                f"{what}: weights {path} do not fit open_clip model {config.model!r}: "
                f"missing keys {missing[:10]}{'...' if len(missing) > 10 else ''}, "
                f"unexpected keys {bad.unexpected_keys[:10]}{'...' if len(bad.unexpected_keys) > 10 else ''}"
            )
        weights = _hash_file(path)
    model.eval().requires_grad_(False).to(config.device)
    return model, cfg, weights


class ClipImageConfig(OpenClipConfig):
    tokens: Literal["pooled", "patches"] = Field(
        "pooled", description="pooled: the projected image embedding (1 token); patches: the vision tower's patch tokens."
    )


class ClipImageConditioner(_FrozenPhotoTower):
    """Frozen open_clip image tower on the reference photo: pooled embedding or patch tokens."""

    name = "clip_image"
    Config = ClipImageConfig
    uses = "photo"
    role = "appearance"

    def __init__(self, config: ClipImageConfig):
        import torch

        self.config = config
        model, cfg, weights = build_open_clip(config, "conditioner 'clip_image'")
        self.visual = model.visual
        del model
        vc = cfg["vision_cfg"]
        size = vc.get("image_size", 224)
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)
        if config.tokens == "patches":
            if not hasattr(self.visual, "output_tokens"):
                raise ConfigError("conditioner 'clip_image': tokens='patches' needs a ViT image tower")
            self.visual.output_tokens = True
            patch = vc.get("patch_size", 16)
            self.num_tokens = (self.image_size[0] // patch) * (self.image_size[1] // patch)
            self.dim = int(vc["width"])
        else:
            self.num_tokens = 1
            self.dim = int(cfg["embed_dim"])
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self._mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
        self.identity = _identity_string(self.name, config, weights, {"device"})

    def preprocess(self, photos):
        import torch.nn.functional as F

        x = _photo_batch(photos, "conditioner 'clip_image'", square=True) / 255.0
        x = F.interpolate(x, size=self.image_size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return ((x - self._mean) / self._std).to(self.config.device)

    def tokens(self, x):
        """``[B, 1, embed_dim]`` (pooled) or ``[B, patches, width]``."""
        out = self.visual(x)
        if self.config.tokens == "patches":
            out = out[1]
        else:
            out = out[0] if isinstance(out, tuple) else out
            out = out.unsqueeze(1)
        return out.float().cpu()


def _square(p: np.ndarray) -> np.ndarray:
    """Centre crop to a square (CLIP's own preprocessing does the same)."""
    h, w = p.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return p[y:y + s, x:x + s]


class ClipTextConfig(OpenClipConfig):
    tokens: Literal["pooled", "sequence"] = Field(
        "pooled", description="pooled: the projected text embedding (1 token); sequence: every token of the text tower."
    )
    prompts: Literal["first", "mean"] = Field(
        "mean", description="A sketch-style name stands for its prompts: use the first, or the mean of all encodings."
    )
    default_prompt: str = Field("a sketch of a face", description="Prompt used for a sample with no style (None).")


class ClipTextConditioner:
    """Frozen open_clip text tower on the sketch-style prompt (style name or raw text)."""

    name = "clip_text"
    Config = ClipTextConfig
    uses = "style"
    role = "style"

    def __init__(self, config: ClipTextConfig):
        from open_clip.tokenizer import SimpleTokenizer

        self.config = config
        model, cfg, weights = build_open_clip(config, "conditioner 'clip_text'")
        del model.visual
        self.model = model
        tc = cfg["text_cfg"]
        self.context_length = int(tc.get("context_length", 77))
        self.tokenizer = SimpleTokenizer(context_length=self.context_length)
        if int(tc.get("vocab_size", 49408)) < len(self.tokenizer.encoder):
            raise ConfigError(
                f"conditioner 'clip_text': text vocab_size {tc.get('vocab_size')} is smaller than the "
                f"open_clip tokenizer's {len(self.tokenizer.encoder)}"
            )
        if config.tokens == "pooled":
            self.num_tokens, self.dim = 1, int(cfg["embed_dim"])
        else:
            self.num_tokens, self.dim = self.context_length, int(tc["width"])
        self.identity = _identity_string(self.name, config, weights, {"device"})
        self._memo: dict[str, Any] = {}

    def prompts_for(self, style: str | None) -> list[str]:
        """A registered sketch style's prompts (first or all), else the text itself."""
        if style is None:
            return [self.config.default_prompt]
        from c4s_core import get_registries

        reg = get_registries().sketch_style
        if style in reg:
            prompts = list(getattr(reg.get(style).cls, "prompts", ()) or ())
            if prompts:
                return prompts[:1] if self.config.prompts == "first" else prompts
        return [style]

    def _encode_texts(self, texts: list[str]):
        import torch

        m = self.model
        tok = self.tokenizer(texts).to(self.config.device)
        with torch.no_grad():
            if self.config.tokens == "pooled":
                return m.encode_text(tok).float().cpu().unsqueeze(1)
            cast = m.transformer.get_cast_dtype()
            x = m.token_embedding(tok).to(cast) + m.positional_embedding.to(cast)
            x = m.transformer(x, attn_mask=m.attn_mask)
            return m.ln_final(x).float().cpu()

    def encode(self, photos, styles=None):
        """``[B, 1, embed_dim]`` (pooled) or ``[B, context_length, width]``; photos give B only."""
        import torch

        n = len(styles) if styles is not None else len(photos)
        styles = list(styles) if styles is not None else [None] * n
        out = []
        for s in styles:
            key = "\x00none" if s is None else s
            if key not in self._memo:
                self._memo[key] = self._encode_texts(self.prompts_for(s)).mean(0)
            out.append(self._memo[key])
        return torch.stack(out) if out else torch.zeros(0, self.num_tokens, self.dim)


# -- AdaFace / IR identity -------------------------------------------------------------


class AdaFaceIdConfig(ComponentConfig):
    backbone: str = Field("ir_50", description="IR backbone from the backbone registry (ir_18, ir_34, ir_50, ir_101).")
    weights: Path | None = Field(
        None, description="AdaFace .ckpt (state_dict with 'model.' prefixes) or a c4s matcher checkpoint "
        "(.safetensors with 'backbone.' prefixes); none: random frozen backbone from `seed` (tests only)."
    )
    tokens: Literal["embedding", "embedding+map"] = Field(
        "embedding", description="embedding: the normalised 512-d embedding (1 token); "
        "embedding+map: plus the 7x7 feature map as 49 tokens (50 in all)."
    )
    seed: int = Field(0, ge=0, description="Seed of the random initialisation (weights none).")
    device: str = Field("cpu", description="Torch device of the encoder.")


class AdaFaceIdConditioner(_FrozenPhotoTower):
    """Frozen AdaFace/IR identity embedding (512-d), optionally with its 7x7 feature map."""

    name = "adaface_id"
    Config = AdaFaceIdConfig
    uses = "photo"
    role = "identity"

    def __init__(self, config: AdaFaceIdConfig):
        import torch

        from c4s_core import get_registries

        self.config = config
        reg = get_registries().backbone
        if config.backbone not in reg:
            raise ConfigError(
                f"conditioner 'adaface_id': backbone {config.backbone!r} is not registered "
                f"(backbones: {', '.join(reg.names()) or 'none'}); the IR backbones come from the 'backbones' plugin"
            )
        entry = reg.get(config.backbone)
        opts: dict[str, Any] = {}
        weights_hash = f"random-seed-{config.seed}"
        matcher_sd = None
        if config.weights is not None:
            if not config.weights.is_file():
                raise DataError(f"conditioner 'adaface_id': weights file not found: {config.weights}")
            weights_hash = _hash_file(config.weights)
            if config.weights.suffix == ".safetensors":
                matcher_sd = _matcher_backbone_state(config.weights)
            elif "weights" in entry.config_cls.model_fields:
                opts["weights"] = str(config.weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.backbone = reg.build(config.backbone, opts)
        model = getattr(self.backbone, "model", self.backbone)
        if matcher_sd is not None:
            bad = model.load_state_dict(matcher_sd, strict=False)
            if bad.missing_keys or bad.unexpected_keys:
                raise DataError(
                    f"conditioner 'adaface_id': {config.weights} does not fit backbone {config.backbone!r}: "
                    f"missing keys {bad.missing_keys[:10]}, unexpected keys {bad.unexpected_keys[:10]}"
                )
        self.model = model.eval().requires_grad_(False).to(config.device)
        self.input_size = tuple(getattr(self.backbone, "input_size", (112, 112)))
        self.color_order = getattr(self.backbone, "color_order", "BGR")
        self.dim = int(getattr(self.backbone, "embedding_dim", 512))
        self.num_tokens = 1 if config.tokens == "embedding" else 50
        if config.tokens == "embedding+map":
            body = getattr(self.model, "body", None)
            if body is None:
                raise ConfigError(f"conditioner 'adaface_id': backbone {config.backbone!r} has no `body` (feature map)")
            self._fmap = None

            def hook(_m, _i, out):
                self._fmap = out

            body.register_forward_hook(hook)
        self.identity = _identity_string(self.name, config, weights_hash, {"device", "weights"})

    def preprocess(self, photos):
        import torch.nn.functional as F

        x = _photo_batch(photos, "conditioner 'adaface_id'")
        if x.shape[-2:] != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        if self.color_order == "BGR":
            x = x.flip(1)
        return ((x / 255.0 - 0.5) / 0.5).to(self.config.device)

    def tokens(self, x):
        """``[B, 1, 512]`` normalised embedding, or ``[B, 50, 512]`` with the 49 map tokens."""
        import torch
        import torch.nn.functional as F

        out = self.model(x)
        emb = out[0] if isinstance(out, (tuple, list)) else out
        emb = F.normalize(emb.float(), dim=-1).unsqueeze(1)
        if self.config.tokens == "embedding":
            return emb.cpu()
        fmap = self._fmap.float()  # [B, C, 7, 7]
        if fmap.shape[1] != self.dim:
            raise C4SError(f"conditioner 'adaface_id': feature map has {fmap.shape[1]} channels, expected {self.dim}")
        return torch.cat([emb, fmap.flatten(2).transpose(1, 2)], 1).cpu()


class PhotoPatchesConfig(ComponentConfig):
    size: int = Field(32, ge=8, le=256, description="Side the photo is resized to (grey, area-averaged).")
    patch: int = Field(4, ge=1, le=64, description="Patch side in pixels: (size / patch)^2 tokens.")
    freqs: int = Field(4, ge=1, le=32, description="Sine/cosine frequencies per axis in each token's position code.")

    @field_validator("patch")
    @classmethod
    def _divides(cls, v, info):
        size = info.data.get("size")
        if size is not None and size % v:
            raise ValueError(f"patch={v} must divide size={size}")
        return v


class PhotoPatchesConditioner:
    """The reference photo as tokens: grey ``patch x patch`` pixel blocks of the
    photo resized to ``size``, each followed by a sine/cosine code of its row and
    column, so cross-attention can find what lies where."""

    name = "photo_patches"
    Config = PhotoPatchesConfig
    uses = "photo"
    role = "appearance"

    def __init__(self, config: PhotoPatchesConfig):
        self.config = config
        g = config.size // config.patch
        self.num_tokens = g * g
        self.dim = config.patch * config.patch + 4 * config.freqs
        ys, xs = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
        f = np.pi * 2.0 ** np.arange(config.freqs) / g
        ang = np.concatenate([ys.reshape(-1, 1) * f, xs.reshape(-1, 1) * f], 1)  # [tokens, 2 * freqs]
        self._pos = np.concatenate([np.sin(ang), np.cos(ang)], 1).astype(np.float32)
        self.identity = _identity_string(self.name, config, "none")

    def encode(self, photos, styles=None):
        """``[B, (size/patch)^2, patch^2 + 4 * freqs]``: pixels in [-1, 1] then the position code."""
        import torch
        from PIL import Image

        c, g = self.config, self.config.size // self.config.patch
        out = np.zeros((len(photos), self.num_tokens, self.dim), np.float32)
        for i, p in enumerate(_check_photos(photos, "conditioner 'photo_patches'")):
            grey = np.asarray(Image.fromarray(_square(p)).convert("L").resize((c.size, c.size), Image.BOX), np.float32)
            blocks = grey.reshape(g, c.patch, g, c.patch).transpose(0, 2, 1, 3).reshape(g * g, -1)
            out[i, :, : c.patch * c.patch] = blocks / 127.5 - 1.0
            out[i, :, c.patch * c.patch:] = self._pos
        return torch.from_numpy(out)


def _matcher_backbone_state(path: Path) -> dict:
    from safetensors.torch import load_file

    sd = load_file(str(path))
    for prefix in ("backbone.", "model.backbone.", ""):
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if sub and (prefix or not any(k.startswith("head.") for k in sd)):
            return sub
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


@hookimpl
def register_conditioners(register):
    register(ClipImageConditioner)
    register(ClipTextConditioner)
    register(AdaFaceIdConditioner)
    register(PhotoPatchesConditioner)
