"""Benchmark the diffusion generator on this machine; prints one JSON line.

- training: steps/s and peak resident memory (ru_maxrss of a fresh child
  process per case) for the tiny and default UNet presets at 64 and 112 px,
  a few steps each, with condition tokens shaped like dlib_id (1x128) +
  clip_text pooled (1x512); cases ``small:64:spatial`` and ``small:64:spatial+id``
  are the identity designs of examples/experiments/idgen (a 1-channel photo map
  concatenated to the input, r29_id-shaped tokens 5x400, the style token,
  attention at 16 px only), without and with the identity loss through the
  pretrained dlib_r29 (needs `c4s weights fetch face_api_resnet`);
- condition encoding: one epoch over N synthfaces photos with ``clip_image``
  (ViT-B-32 image tower, random frozen weights: the compute of the real one)
  and ``dlib_id`` (if dlib is installed), uncached (fresh cache: encode + write)
  vs cached (read back).

    .venv/bin/python benchmarks/bench_generator.py [--steps 3] [--batch 8] [--photos 64] [--device cpu]
        [--mixed-precision bf16] [--cases default:112] [--sample-images 256 --sample-steps 20]
    .venv/bin/python benchmarks/bench_generator.py --cases small:64:spatial,small:64:spatial+id --batch 16 \
        --sample-images 64 --guidance ""
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def train_case(preset: str, size: int, steps: int, batch: int, device: str, precision: str = "no",
               sample_images: int = 0, sample_steps: int = 20, guidance: dict | None = None, design: str = "") -> dict:
    import resource

    import numpy as np
    import torch
    from c4s_plugins.diffusion import DiffusionConfig, DiffusionGenerator

    from c4s_core import get_registries

    class Stand:
        def __init__(self, name, n, d, role, kind="tokens"):
            self.name, self.num_tokens, self.dim, self.role, self.identity, self.kind = name, n, d, role, name, kind
            self.channels, self.size = d, n

    n = max(batch * 2, 16, sample_images)
    rng = np.random.default_rng(0)
    sk = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    if design:  # photo map (1 channel) + r29_id tokens (5 x 400) + style token, as examples/experiments/idgen
        stands = [Stand("photo_map", size, 1, "identity", "spatial"), Stand("r29_id", 5, 400, "identity"),
                  Stand("clip_text", 1, 512, "style")]
        extra = {"attention_levels": [False, False, True], "prediction_type": "v_prediction"}
        if design == "spatial+id":
            extra["identity_loss"] = {"weight": 0.5, "max_timestep": 300}
        tok = [rng.uniform(-1, 1, (n, 1, size, size)).astype(np.float32),
               rng.standard_normal((n, 5, 400)).astype(np.float32), rng.standard_normal((n, 1, 512)).astype(np.float32)]
    else:
        stands, extra = [Stand("dlib_id", 1, 128, "identity"), Stand("clip_text", 1, 512, "style")], {}
        tok = [rng.standard_normal((n, 1, 128)).astype(np.float32), rng.standard_normal((n, 1, 512)).astype(np.float32)]
    cfg = DiffusionConfig(preset=preset, sample_size=size, device=device, mixed_precision=precision,
                          conditioners=[{"name": c.name} for c in stands], **extra)
    gen = DiffusionGenerator(cfg, conditioners=stands)
    get_registries()
    with tempfile.TemporaryDirectory() as tmp:
        # fit writes a checkpoint at its end: timed on its own, not as part of the steps
        save, ck = gen._save_checkpoint, {}

        def timed_save(*a, **kw):
            t = time.perf_counter()
            r = save(*a, **kw)
            ck["s"] = time.perf_counter() - t
            return r

        gen._save_checkpoint = timed_save
        gen.fit(sk, tok, out=tmp, steps=1, batch_size=batch, checkpoint_every=0, progress=False)  # warm-up
        t0 = time.perf_counter()
        gen.fit(sk, tok, out=tmp, steps=steps, batch_size=batch, checkpoint_every=0, progress=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0 - ck["s"]
    sampled = {}
    if sample_images:  # DPM-Solver++ with compositional guidance, as `c4s generate` runs it
        from c4s_core.config import ComponentSpec

        spec = ComponentSpec(name="dpmsolver++", options={"steps": sample_steps})
        kw = dict(sampler=spec, guidance=guidance, batch_size=min(sample_images, 256))
        gen.sample(list(sk[:2]), None, tokens=[t[:2] for t in tok], **kw)  # warm-up
        t1 = time.perf_counter()
        gen.sample(list(sk[:sample_images]), None, tokens=[t[:sample_images] for t in tok], **kw)
        ds = time.perf_counter() - t1
        sampled = {"sample_images": sample_images, "sample_steps": sample_steps, "guidance": guidance or {},
                   "sample_images_per_s": round(sample_images / ds, 2)}
    rec = {"preset": preset, "size": size, "design": design or "tokens", "identity_loss": design == "spatial+id",
           "batch": batch, "steps": steps, "device": str(gen.device),
           "mixed_precision": precision,
           "params_m": round(sum(p.numel() for p in gen.model.parameters()) / 1e6, 3),
           "steps_per_s": round(steps / dt, 4), "images_per_s": round(steps * batch / dt, 2),
           "checkpoint_s": round(ck["s"], 3), **sampled,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.startswith("cuda"):
        rec["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return rec


def encode_case(n: int) -> list[dict]:
    import numpy as np

    from c4s_core import get_registries
    from c4s_core.cache import EmbeddingCache, conditioner_identity, encode_cached

    regs = get_registries()
    ds = regs.dataset.build("synthfaces", {"num_identities": n, "images_per_identity": 1, "sketches_per_identity": 0})
    photos = [ds[i].image for i in range(n)]
    styles = ["pencil"] * n
    out = []
    conds = [("clip_image", {"model": "ViT-B-32"})]
    if "dlib_id" in regs.conditioner:
        conds.append(("dlib_id", {}))
    for name, opts in conds:
        try:
            c = regs.conditioner.build(name, opts)
        except Exception as err:  # a missing extra: report, keep going
            out.append({"conditioner": name, "error": str(err)[:200]})
            continue
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            a = encode_cached(c, photos, styles, EmbeddingCache(tmp, conditioner_identity(c)))
            t1 = time.perf_counter()
            b = encode_cached(c, photos, styles, EmbeddingCache(tmp, conditioner_identity(c)))
            t2 = time.perf_counter()
        out.append({"conditioner": name, "photos": n, "uncached_s": round(t1 - t0, 3), "cached_s": round(t2 - t1, 3),
                    "speedup": round((t1 - t0) / max(t2 - t1, 1e-9), 1), "same": bool(np.array_equal(a, b))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--photos", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    ap.add_argument("--sample-images", type=int, default=0, help="also time sampling this many images (0: no)")
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--guidance", default="identity=2,style=2", help="role=scale,...; empty: plain conditional")
    ap.add_argument("--cases", default="tiny:64,tiny:112,default:64,default:112")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        preset, size, *design = args.one.split(":")
        guidance = {k: float(v) for k, v in (kv.split("=") for kv in args.guidance.split(",") if kv)}
        print(json.dumps(train_case(preset, int(size), args.steps, args.batch, args.device, args.mixed_precision,
                                    args.sample_images, args.sample_steps, guidance, design[0] if design else "")))
        return
    train = []
    for case in args.cases.split(","):
        res = subprocess.run(
            [sys.executable, __file__, "--one", case, "--steps", str(args.steps), "--batch", str(args.batch),
             "--device", args.device, "--mixed-precision", args.mixed_precision,
             "--sample-images", str(args.sample_images), "--sample-steps", str(args.sample_steps),
             "--guidance", args.guidance],
            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        train.append(json.loads(lines[-1]) if res.returncode == 0 and lines else
                     {"case": case, "error": res.stderr.strip().splitlines()[-1:] or ["?"]})
    enc = encode_case(args.photos)
    import torch

    print(json.dumps({"bench": "generator", "torch_threads": torch.get_num_threads(), "train": train,
                      "encode_epoch": enc}))


if __name__ == "__main__":
    main()
