"""Built-in generator ``gan``: the pix2pix baseline (Isola et al. 2017).

A U-Net generator maps the photo (plus one one-hot channel per style) to the
sketch; a PatchGAN discriminator judges (photo, sketch) pairs patch by patch.
Loss: ``L_G = BCE(D(x, G(x)), 1) + lambda_l1 * |G(x) - y|_1`` (lambda_l1 = 100,
the paper's), ``L_D = (BCE(D(x, y), 1) + BCE(D(x, G(x)), 0)) / 2``; Adam with
betas (0.5, 0.999). Trained by ``c4s train-generator --set generator.name=gan``
on the same aligned pairs as the diffusion generator (the pipeline calls
:meth:`GanGenerator.fit_pairs`).

Sampling keeps dropout on, as the paper does at test time, and draws each
image's dropout masks from its own generator seeded by ``(seed, i, j)`` (or
the caller's ``seeds``), so K sketches of one photo differ and none depends on
the batch. torch is imported inside methods (see ``_pix2pix``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from c4s_core import ComponentConfig, hookimpl
from c4s_core.errors import C4SError, ConfigError, DataError

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"size": 32, "ngf": 8, "ndf": 8, "num_downs": 4, "d_layers": 2},  # tests
    "small": {"size": 64, "ngf": 32, "ndf": 32, "num_downs": 5, "d_layers": 3},  # CPU demo
    "default": {"size": 112, "ngf": 64, "ndf": 64, "num_downs": 4, "d_layers": 3},  # 112 px, 7x7 bottleneck
}


class GanConfig(ComponentConfig):
    preset: Literal["tiny", "small", "default"] = Field(
        "default", description="Network size preset: tiny (32 px, tests), small (64 px), default (112 px)."
    )
    size: int | None = Field(None, ge=16, le=1024, description="Image side in pixels; none: the preset's.")
    ngf: int | None = Field(None, ge=1, le=512, description="Generator channels at the first level; none: the preset's.")
    ndf: int | None = Field(None, ge=1, le=512, description="Discriminator channels at the first level; none: the preset's.")
    num_downs: int | None = Field(None, ge=2, le=9, description="U-Net stride-2 levels (size must divide by 2**num_downs).")
    d_layers: int | None = Field(None, ge=1, le=5, description="PatchGAN stride-2 layers (3: 70x70 patches at 256 px).")
    styles: list[str] = Field(
        default_factory=list, description="Style vocabulary (one input channel each); empty: the training data's styles."
    )
    lambda_l1: float = Field(100.0, ge=0.0, le=10_000.0, description="Weight of the L1 reconstruction loss (paper: 100).")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout in the innermost decoder layers (also at sampling).")
    dropout_layers: int = Field(3, ge=0, le=8, description="Decoder layers with dropout, innermost first (paper: 3).")
    beta1: float = Field(0.5, ge=0.0, lt=1.0, description="Adam beta1 (paper: 0.5).")
    device: str = Field("auto", description="Torch device: auto (cuda if available), cpu, cuda, cuda:1...")
    seed: int = Field(0, ge=0, description="Seed of the weight initialisation.")

    @model_validator(mode="after")
    def _sizes(self):
        o = self.net_options()
        if o["size"] % (2 ** o["num_downs"]):
            raise ValueError(f"size={o['size']} must be divisible by 2**num_downs = {2 ** o['num_downs']}")
        if o["size"] // (2 ** o["d_layers"]) < 2:
            raise ValueError(f"d_layers={o['d_layers']} is too deep for size={o['size']}")
        if len(set(self.styles)) != len(self.styles):
            raise ValueError(f"styles has duplicates: {self.styles}")
        return self

    def net_options(self) -> dict[str, int]:
        base = dict(PRESETS[self.preset])
        for k in base:
            v = getattr(self, k)
            if v is not None:
                base[k] = v
        return base


def _seed_int(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def _versions() -> dict[str, str]:
    import torch

    import c4s_core

    return {"c4s": c4s_core.__version__, "torch": torch.__version__}


class GanGenerator:
    """pix2pix baseline: U-Net photo->sketch generator with a PatchGAN discriminator (Isola et al. 2017)."""

    name = "gan"
    aliases = ("pix2pix",)
    Config = GanConfig

    def __init__(self, config: GanConfig):
        import torch

        self.config = config
        dev = config.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        self.meta: dict[str, Any] = {}
        self.step = 0
        self.G = self.D = None
        if config.styles:
            self._build()

    # -- networks -------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(self.config.net_options()["size"])

    @property
    def styles(self) -> list[str]:
        return list(self.config.styles)

    def _build(self) -> None:
        import torch

        from ._pix2pix import PatchDiscriminator, UNetGenerator, init_weights

        o = self.config.net_options()
        ns = len(self.config.styles)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.G = UNetGenerator(3 + ns, o["ngf"], o["num_downs"], self.config.dropout, self.config.dropout_layers)
            self.D = PatchDiscriminator(3 + ns + 3, o["ndf"], o["d_layers"])
            init_weights(self.G)
            init_weights(self.D)
        self.G.to(self.device)
        self.D.to(self.device)

    def conditioner_records(self) -> list[dict[str, Any]]:
        return []

    def _style_index(self, styles: Sequence[str | None]) -> list[int]:
        known = self.config.styles
        out = []
        for s in styles:
            if s not in known:
                raise ConfigError(f"generator 'gan' was trained on styles {known}; {s!r} is not one of them")
            out.append(known.index(s))
        return out

    def _inputs(self, photos, style_idx):
        import torch

        from c4s_core.data.io import resize

        from ._pix2pix import style_planes

        x = np.stack([resize(np.asarray(p, np.uint8), self.size) for p in photos])
        x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        planes = style_planes(torch.as_tensor(style_idx, dtype=torch.long), len(self.config.styles), self.size)
        return torch.cat([x, planes], 1).to(self.device)

    # -- training -------------------------------------------------------------------
    def fit_pairs(
        self,
        photos: Sequence[np.ndarray],
        sketches: np.ndarray,
        styles: Sequence[str],
        *,
        out: str | Path,
        steps: int,
        batch_size: int = 16,
        lr: float = 2e-4,
        seed: int = 0,
        checkpoint_every: int = 500,
        keep_checkpoints: int = 2,
        val: tuple[Sequence[np.ndarray], np.ndarray, Sequence[str]] | None = None,
        val_every: int = 0,
        sample_every: int = 0,
        grid: tuple[Sequence[np.ndarray], Sequence[str]] | None = None,
        resume: bool = False,
        stop_after: int | None = None,
        progress: bool = True,
        **_ignored: Any,
    ) -> dict[str, Any]:
        """Train on aligned (photo, sketch, style) triples. Data order: a
        permutation per epoch from ``(seed, epoch)``; checkpoints
        ``out/checkpoints/step_N/`` (G, D, both optimisers) make ``resume``
        continue a killed run. History rows: ``loss`` (the L1 term, mean
        absolute error in [-1, 1] units), ``g_gan``, ``d_loss``."""
        import torch
        import torch.nn.functional as F
        from tqdm import tqdm

        from c4s_core.data.io import resize
        from c4s_core.training import latest_checkpoint

        out = Path(out)
        n = len(photos)
        if n == 0 or len(sketches) != n or len(styles) != n:
            raise DataError(f"gan.fit_pairs: got {n} photos, {len(sketches)} sketches, {len(styles)} styles; need equal, > 0")
        if not self.config.styles:
            self.config.styles = sorted(set(styles))
        if self.G is None:
            self._build()
        idx_all = self._style_index(styles)
        x_all = self._inputs(photos, idx_all).cpu()
        y_all = torch.from_numpy(np.stack([resize(np.asarray(s, np.uint8), self.size) for s in sketches]))
        y_all = y_all.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        betas = (self.config.beta1, 0.999)
        opt_g = torch.optim.Adam(self.G.parameters(), lr=lr, betas=betas)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=lr, betas=betas)
        ckdir = out / "checkpoints"
        history: list[dict] = []
        start = 0
        if resume:
            last = latest_checkpoint(ckdir)
            if last is not None:
                start, history = self._load_training_state(last, opt_g, opt_d)
        end = steps if stop_after is None else min(steps, stop_after)
        bce = torch.nn.BCEWithLogitsLoss()
        self.G.train()
        self.D.train()
        bar = tqdm(total=steps, initial=start, desc="train-generator (gan)", unit="step", disable=not progress)
        t0 = time.perf_counter()
        perms: dict[int, np.ndarray] = {}
        for step in range(start, end):
            first = step * batch_size
            ids = []
            for j in range(first, first + batch_size):
                e = j // n
                if e not in perms:
                    perms.clear()
                    perms[e] = np.random.default_rng([seed, 0xDA7A, e]).permutation(n)
                ids.append(perms[e][j % n])
            ids_t = torch.as_tensor(np.asarray(ids))
            # torch's dropout RNG: seeded per step, so a resumed run draws the same masks
            torch.manual_seed(_seed_int(seed, 0x6A4, step))
            x = x_all[ids_t].to(self.device)
            y = y_all[ids_t].to(self.device)
            fake = self.G(x)
            # discriminator
            opt_d.zero_grad(set_to_none=True)
            pr, pf = self.D(x, y), self.D(x, fake.detach())
            d_loss = 0.5 * (bce(pr, torch.ones_like(pr)) + bce(pf, torch.zeros_like(pf)))
            d_loss.backward()
            opt_d.step()
            # generator
            opt_g.zero_grad(set_to_none=True)
            pf = self.D(x, fake)
            g_gan = bce(pf, torch.ones_like(pf))
            l1 = F.l1_loss(fake, y)
            (g_gan + self.config.lambda_l1 * l1).backward()
            opt_g.step()
            self.step = step + 1
            rec: dict[str, Any] = {"step": self.step, "loss": float(l1.detach()), "g_gan": float(g_gan.detach()),
                                   "d_loss": float(d_loss.detach())}
            if not all(np.isfinite(v) for v in (rec["loss"], rec["g_gan"], rec["d_loss"])):
                raise C4SError(f"gan.fit_pairs: loss became non-finite at step {self.step}; lower lr (now {lr})")
            if val is not None and val_every and (self.step % val_every == 0 or self.step == steps):
                rec["val_loss"] = self.validation_loss(*val, seed=seed)
            if grid is not None and sample_every and (self.step % sample_every == 0 or self.step == steps):
                self.save_grid(out / "samples" / f"step_{self.step:07d}.png", grid)
            history.append(rec)
            bar.set_postfix(l1=f"{rec['loss']:.4f}", d=f"{rec['d_loss']:.3f}")
            bar.update(1)
            if (checkpoint_every and self.step % checkpoint_every == 0) or self.step == end:
                self._save_checkpoint(ckdir, opt_g, opt_d, history, keep_checkpoints)
        bar.close()
        self.G.eval()
        self.D.eval()
        elapsed = time.perf_counter() - t0
        done = max(0, end - start)
        return {"step": self.step, "steps_run": done, "steps_per_s": done / elapsed if elapsed > 0 else None,
                "final_loss": history[-1]["loss"] if history else None, "history": history,
                "stopped_early": end < steps}

    def validation_loss(self, photos, sketches, styles, seed: int = 0, batch_size: int = 32) -> float:
        """Mean L1 (in [-1, 1] units) between held-out sketches and seeded samples."""
        imgs = self.sample(photos, styles, seed=_seed_int(seed, 0x7A2), batch_size=batch_size)
        from c4s_core.data.io import resize

        ref = np.stack([resize(np.asarray(s, np.uint8), self.size) for s in sketches]).astype(np.float64)
        return float(np.abs(imgs.astype(np.float64) - ref).mean() / 127.5)

    def save_grid(self, path, grid, **_ignored) -> None:
        """Rows: the grid photos; columns: the photo, then one sample per style."""
        from c4s_core.data.io import grid as tile
        from c4s_core.data.io import resize, save_image

        photos, styles = grid
        styles = [s for s in styles if s in self.config.styles]
        rows = []
        for i, p in enumerate(photos):
            imgs = self.sample([p] * len(styles), styles, seed=i) if styles else []
            rows.append([resize(np.asarray(p), self.size)] + list(imgs))
        save_image(path, tile(rows))

    # -- sampling ---------------------------------------------------------------------
    def sample(
        self,
        photos: Sequence[np.ndarray],
        styles: Sequence[str],
        seed: int = 0,
        num_per_input: int = 1,
        batch_size: int = 16,
        seeds: Sequence[int] | None = None,
        dropout: bool = True,
    ) -> np.ndarray:
        """Sketches uint8 ``[len(photos) * num_per_input, size, size, 3]``, input-major.
        With ``dropout`` (default, as in the paper) image ``j`` of input ``i`` draws
        its dropout masks from a generator seeded from ``(seed, i, j)``, or from
        ``seeds[i * num_per_input + j]`` when ``seeds`` is given."""
        import torch

        from ._diffusion_model import to_uint8

        if self.G is None:
            raise C4SError("generator 'gan' is untrained: train it with `c4s train-generator --set generator.name=gan` "
                           "and load it with from_pretrained")
        if len(photos) != len(styles):
            raise DataError(f"gan.sample: {len(photos)} photos but {len(styles)} styles")
        sidx = self._style_index(styles)
        jobs = [(i, j) for i in range(len(photos)) for j in range(num_per_input)]
        if seeds is not None and len(seeds) != len(jobs):
            raise ConfigError(f"gan.sample: {len(seeds)} seeds for {len(jobs)} images")
        seed_ints = [_seed_int(seed, i, j) for i, j in jobs] if seeds is None else [_seed_int(int(s)) for s in seeds]
        out = np.zeros((len(jobs), self.size, self.size, 3), np.uint8)
        was = self.G.training
        self.G.eval()
        drops = self.G.dropouts()
        try:
            with torch.no_grad():
                for a in range(0, len(jobs), batch_size):
                    chunk = jobs[a:a + batch_size]
                    rows = [i for i, _ in chunk]
                    x = self._inputs([photos[i] for i in rows], [sidx[i] for i in rows])
                    gens = [torch.Generator().manual_seed(s) for s in seed_ints[a:a + len(chunk)]]
                    for d in drops:
                        d.generators = gens if dropout else None
                    out[a:a + len(chunk)] = to_uint8(self.G(x))
        finally:
            for d in drops:
                d.generators = None
            self.G.train(was)
        return out

    # -- persistence ------------------------------------------------------------------
    def generator_json(self) -> dict[str, Any]:
        return {
            "format": "c4s-gan-generator",
            "format_version": 1,
            "generator": self.name,
            "config": json.loads(self.config.model_dump_json()),
            "net": self.config.net_options(),
            "styles": self.styles,
            "step": self.step,
            "versions": _versions(),
            **self.meta,
        }

    def save_pretrained(self, path: str | Path) -> Path:
        """``path/generator.json``, ``model.safetensors`` (the U-Net) and
        ``discriminator.safetensors``; generator.json records each file's sha256
        (checked on load). Written to a temp folder and renamed."""
        return self._save_folder(path)

    def _save_folder(self, path: str | Path, files: dict[str, bytes] | None = None) -> Path:
        from c4s_core.training import save_verified_folder

        if self.G is None:
            raise C4SError("generator 'gan' has no networks yet (no styles known): train it before saving")
        weights = {"model.safetensors": self.G.state_dict(), "discriminator.safetensors": self.D.state_dict()}
        return save_verified_folder(path, weights, self.generator_json(), "generator.json", files)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None):
        """Load a folder written by :meth:`save_pretrained`."""
        from c4s_core.training import (
            folder_has,
            load_verified_into,
            read_format_json,
            recorded_config,
        )

        path = Path(path)
        meta_p = path / "generator.json"
        meta = read_format_json(path, "generator.json", "c4s-gan-generator", "generator")
        self = cls(recorded_config(GanConfig, meta, f"generator config in {meta_p}", device))
        if self.G is None:
            raise DataError(f"{meta_p}: records no styles; the checkpoint is incomplete")
        for net, fname in ((self.G, "model.safetensors"), (self.D, "discriminator.safetensors")):
            if fname == "discriminator.safetensors" and not folder_has(path, meta, fname):
                continue
            # checked against the sha256 generator.json records for it
            load_verified_into(net, path, fname, meta, "generator.json")
        self.G.eval()
        self.D.eval()
        self.step = int(meta.get("step", 0))
        self.meta = {k: meta[k] for k in ("dataset",) if k in meta}
        return self

    def _save_checkpoint(self, ckdir: Path, opt_g, opt_d, history, keep: int) -> Path:
        from c4s_core.training import save_training_checkpoint

        state = {"step": self.step, "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict()}
        return save_training_checkpoint(ckdir, self.step, self._save_folder, state, history, keep)

    def _load_training_state(self, d: Path, opt_g, opt_d) -> tuple[int, list[dict]]:
        """Restore checkpoint ``d`` (every file checked against the hashes its
        generator.json records); returns the step and the history."""
        from c4s_core.training import read_training_checkpoint

        ck = read_training_checkpoint(d, ["model.safetensors", "discriminator.safetensors"])
        state = ck["trainer"]
        self.G.load_state_dict(ck["weights"]["model.safetensors"])
        self.D.load_state_dict(ck["weights"]["discriminator.safetensors"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
        return self.step, ck["history"]


@hookimpl
def register_generators(register):
    register(GanGenerator, aliases=GanGenerator.aliases)
