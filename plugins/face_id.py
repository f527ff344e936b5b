"""Identity tokens from dlib's pretrained ResNet-29 (``dlib_r29``) for the generator.

Registers the conditioner ``r29_id`` (role ``identity``): the frozen
``dlib_r29`` network (face-api's conversion of dlib's descriptor, ``c4s weights
fetch face_api_resnet``) run once per photo, giving

- ``global``: the L2-normalised 128-d descriptor as 1 token (what ``dlib_id``
  gives, without dlib and on a torch network that a matcher may fine-tune);
- ``spatial``: the last feature map (256 channels, 2x2 at 150 px; or the
  4x4 map before the last down unit with ``map: penultimate``) as ``h*w``
  tokens, each L2-normalised and followed by a sine/cosine code of its row and
  column (the code ``photo_patches`` uses), so cross-attention knows where each
  came from;
- ``global+spatial`` (default): both, in disjoint channel blocks
  ``[global 128 | map 256 | position 4*freqs]`` (zeros elsewhere), so the
  generator's one linear projection per conditioner acts as two.

Alignment. The generator hands conditioners aligned crops at its
``condition_size`` on the c4s ArcFace template; dlib trained the network on its
own 5-point chip (``dlib_chip``: eyes higher and closer to the edges). With
``input_template: arcface`` (default) each photo is warped by the fixed
similarity between the two templates straight onto the chip (no detection; the
chip reaches about 7 % below an ArcFace crop's lower edge, filled by edge
replication). ``realign: true`` instead runs dlib's 5-point detector on the
photo (extra ``clip4sketch[dlib]``) and cuts the chip from what it finds,
falling back to the template warp where it finds no face.

Caching: ``cache_dir`` stores each photo's tokens (``c4s_core.cache``), keyed by
``identity``: name, token options and the weights' sha256, so a refetched or
fine-tuned network never reads stale tokens. torch is imported inside methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from c4s_core import ComponentConfig, hookimpl
from c4s_core.errors import ConfigError, DataError

WEIGHTS = "face_api_resnet"


def grid_position_code(h: int, w: int, freqs: int) -> np.ndarray:
    """``[h*w, 4*freqs]`` sine/cosine code of each cell's (row, column), row-major;
    frequencies ``pi * 2**k / side``. For a square grid this is exactly
    ``photo_patches``' code (plugins/conditioners.py builds the same inline)."""
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    k = 2.0 ** np.arange(freqs)
    ang = np.concatenate([ys.reshape(-1, 1) * (np.pi * k / h), xs.reshape(-1, 1) * (np.pi * k / w)], 1)
    return np.concatenate([np.sin(ang), np.cos(ang)], 1).astype(np.float32)


class R29IdConfig(ComponentConfig):
    tokens: Literal["global", "spatial", "global+spatial"] = Field(
        "global+spatial", description="global: the 128-d descriptor (1 token); spatial: the feature map's h*w "
        "tokens; global+spatial: both (1 + h*w tokens, disjoint channel blocks).")
    map: Literal["last", "penultimate"] = Field(
        "last", description="Feature map of the spatial tokens: last (256 ch, 2x2 at 150 px, what the descriptor "
        "pools) or penultimate (256 ch, 4x4 at 150 px, before the last down unit).")
    position_code: bool = Field(True, description="Append a sine/cosine code of each spatial token's row and column.")
    freqs: int = Field(4, ge=1, le=16, description="Frequencies per axis of the position code (4*freqs channels).")
    input_template: Literal["arcface", "dlib_chip", "none"] = Field(
        "arcface", description="Template the incoming photos are aligned to (the generator's: arcface). arcface: "
        "warped onto dlib's chip by the similarity between the templates; dlib_chip: already chips, resized; "
        "none: the whole photo resized (template mismatch).")
    realign: bool = Field(
        False, description="Detect dlib's 5 points on each photo and cut dlib's own chip (needs the dlib extra; "
        "photos without a detected face use input_template).")
    input_size: int = Field(150, ge=112, le=448, description="Side of the network input (dlib's chip: 150).")
    pretrained: bool = Field(True, description="dlib's trained weights (`c4s weights fetch face_api_resnet`); "
                             "false: random frozen network from `seed` (tests only).")
    weights: Path | None = Field(
        None, description="A dlib_r29 state dict (.safetensors, e.g. a fine-tuned matcher's; backbone./model. "
        "prefixes and head.* keys are handled) used instead of the fetched weights.")
    seed: int = Field(0, ge=0, description="Seed of the random initialisation (pretrained false, no weights).")
    cache_dir: Path | None = Field(
        None, description="Cache tokens here, keyed by photo content + conditioner identity; none: no cache.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the network runs.")
    batch_size: int = Field(64, ge=1, le=4096, description="Photos per forward pass.")


class R29IdConditioner:
    """Frozen dlib ResNet-29 identity tokens: global descriptor and/or feature-map tokens."""

    name = "r29_id"
    Config = R29IdConfig
    uses = "photo"
    role = "identity"
    what = "conditioner 'r29_id'"

    def __init__(self, config: R29IdConfig):
        import torch

        from c4s_core import weights as store

        from .conditioners import _identity_string
        from .face_api import DlibR29, DlibR29Config

        self.config = config
        if config.weights is not None:
            if not config.weights.is_file():
                raise DataError(f"{self.what}: weights file not found: {config.weights} (option `weights`)")
            from c4s_core.data.io import file_hash

            weights_id = "file-" + file_hash(config.weights, 64)
        elif config.pretrained:
            try:
                weights_id = store.verify(WEIGHTS)["weights_sha256"]
            except store.WeightsError as err:
                raise store.WeightsError(
                    f"{self.what}: pretrained=true needs dlib's ResNet weights; run `c4s weights fetch {WEIGHTS}` "
                    f"once (or set pretrained: false for a random network, tests only). {err}") from None
        else:
            weights_id = f"random-seed-{config.seed}"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.backbone = DlibR29(DlibR29Config(
                pretrained=config.pretrained and config.weights is None, weights=config.weights,
                input_size=config.input_size, device=config.device, batch_size=config.batch_size))
        self.backbone.model.eval().requires_grad_(False)
        self.device = self.backbone.device
        self.size = config.input_size
        self.forward_calls = 0  # network passes run (tests check the cache with it)
        self.last_no_face = 0  # photos of the last realign pass where dlib found no face

        with torch.no_grad():  # the map's side at this input size
            fmap = self._features(torch.zeros(1, 3, self.size, self.size, device=self.device))[1]
        self.map_hw = (int(fmap.shape[2]), int(fmap.shape[3]))
        n_map = self.map_hw[0] * self.map_hw[1]
        pos_dim = 4 * config.freqs if config.position_code else 0
        self._pos = grid_position_code(*self.map_hw, config.freqs) if config.position_code else None
        g = 128 if config.tokens != "spatial" else 0
        s = 256 + pos_dim if config.tokens != "global" else 0
        self._blocks = (g, s)  # channel widths: [global | map + position]
        self.dim = g + s
        self.num_tokens = (1 if g else 0) + (n_map if s else 0)
        self._aligner = self._dlib_aligner() if config.realign else None
        self.identity = _identity_string(self.name, config, weights_id, {"device", "batch_size", "cache_dir", "weights"})

    # -- input ------------------------------------------------------------------------
    def _dlib_aligner(self):
        from c4s_core import get_registries

        reg = get_registries().aligner
        if "dlib" not in reg:
            raise ConfigError(f"{self.what}: realign=true needs the 'dlib' aligner (plugin c4s_plugins.dlib_models, "
                              "extra clip4sketch[dlib]); it is not registered")
        # the CNN fallback costs seconds per photo on CPU; misses use the template warp instead
        return reg.build("dlib", {"template": "dlib_chip", "size": self.size, "on_no_face": "skip",
                                  "cnn_fallback": False})

    def chips(self, photos) -> list[np.ndarray]:
        """uint8 ``input_size`` squares on dlib's chip (see the module docstring)."""
        from c4s_core.align import estimate_similarity, template_points, warp_affine
        from c4s_core.data.io import resize

        from .conditioners import _check_photos, _square

        ims = [_square(p) for p in _check_photos(photos, self.what)]
        found: list[np.ndarray | None] = [None] * len(ims)
        if self._aligner is not None:
            found = [r.image for r in self._aligner.align(ims)]
            self.last_no_face = sum(f is None for f in found)
        out = []
        for im, chip in zip(ims, found, strict=True):
            if chip is None:
                t = self.config.input_template
                if t == "arcface":
                    keys = ("left_eye", "right_eye", "nose_base")  # measured on both templates
                    src, dst = template_points("arcface", im.shape[0]), template_points("dlib_chip", self.size)
                    m = estimate_similarity(np.array([src[k] for k in keys]), np.array([dst[k] for k in keys]))
                    chip = warp_affine(im, m, self.size, "edge")
                else:
                    chip = resize(im, self.size)
            out.append(np.ascontiguousarray(chip))
        return out

    # -- network ----------------------------------------------------------------------
    def _features(self, x):
        """(descriptor [B, 128], chosen map [B, 256, h, w]) of model input ``x``."""
        m = self.backbone.model
        seen = {}
        # the penultimate map is the last down unit's input: caught by a pre-hook
        hook = m.conv256_down_out.register_forward_pre_hook(lambda _m, inp: seen.update(pen=inp[0]))
        try:
            last = m.features(self.backbone.to_input(x))
        finally:
            hook.remove()
        emb = m.fc(last.mean(dim=(2, 3)))  # = DlibResNet.forward
        return emb, (seen["pen"] if self.config.map == "penultimate" else last)

    def _encode_uncached(self, photos) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        g, s = self._blocks
        n_map = self.map_hw[0] * self.map_hw[1]
        out = np.zeros((len(photos), self.num_tokens, self.dim), np.float32)
        bs = self.config.batch_size
        for a in range(0, len(photos), bs):
            chips = self.chips(photos[a:a + bs])
            x = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float().div_(255.0).to(self.device)
            with torch.no_grad():
                self.forward_calls += 1
                emb, fmap = self._features(x)
            blk = out[a:a + len(chips)]
            if g:
                blk[:, 0, :128] = F.normalize(emb.float(), dim=1).cpu().numpy()
            if s:
                t0 = 1 if g else 0
                tok = F.normalize(fmap.float().flatten(2).transpose(1, 2), dim=2).cpu().numpy()  # [b, h*w, 256]
                blk[:, t0:t0 + n_map, g:g + 256] = tok
                if self._pos is not None:
                    blk[:, t0:t0 + n_map, g + 256:] = self._pos
        return out

    def encode(self, photos, styles=None):
        """``photos``: uint8 HxWx3 RGB (aligned on ``input_template``); styles are
        ignored. float32 torch tensor ``[B, num_tokens, dim]``, no gradient."""
        import torch

        photos = list(photos)
        if not photos:
            return torch.zeros(0, self.num_tokens, self.dim)
        if self.config.cache_dir is None:
            return torch.from_numpy(self._encode_uncached(photos))
        from c4s_core.cache import EmbeddingCache

        cache = EmbeddingCache(self.config.cache_dir, self.identity)
        arrs = [np.asarray(p) for p in photos]
        vals = cache.map([(p,) for p in arrs], lambda idx: self._encode_uncached([arrs[i] for i in idx]))
        return torch.from_numpy(np.stack(vals).astype(np.float32))


@hookimpl
def register_conditioners(register):
    register(R29IdConditioner)
