"""Samplers on a small trained diffusion generator: images/s, and steps vs the
mean identity similarity of the sketches to their photos.

Trains a tiny generator (32 px, clip_image + clip_text conditioners built from
small random towers, no download) for ``--train-steps`` steps on synthfaces,
then samples the same (photo, style) jobs with each sampler/step count through
``DiffusionGenerator.sample(seeds=...)``. Identity similarity: cosine between
the ``clip_image`` tokens (the generator's own appearance encoder; no trained
ID network is available offline) of each sketch and its photo. Prints one JSON
line. Small by default (CPU); ``--train-steps 2000 --preset small`` is a
better-trained comparison on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


def main(argv=None) -> int:
    import tempfile

    import torch

    import c4s_core
    from c4s_core.pipelines.generate import _Similarity, job_seed

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-steps", type=int, default=150)
    ap.add_argument("--identities", type=int, default=16)
    ap.add_argument("--images", type=int, default=16, help="sketches per sampler setting")
    ap.add_argument("--ddpm-steps", type=int, default=1000)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    regs = c4s_core.get_registries()
    ds = regs.dataset.build("synthfaces", {"num_identities": args.identities, "size": 32, "images_per_identity": 1,
                                           "sketches_per_identity": 2, "styles": ["line", "pencil"]})
    photos = {s.identity: s.image for s in ds if s.modality == "photo"}
    pairs = [(photos[s.identity], s.image, s.style) for s in ds if s.modality == "sketch"]
    gen = regs.generator.build("diffusion", {
        "preset": "tiny", "device": args.device, "ema_decay": 0.99,
        "conditioners": [{"name": "clip_image", "options": {"model_config": TINY_CLIP}},
                         {"name": "clip_text", "options": {"model_config": TINY_CLIP}}]})
    P = [p for p, _, _ in pairs]
    S = np.stack([s for _, s, _ in pairs])
    ST = [st for _, _, st in pairs]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = gen.fit(S, gen.encode_conditions(P, ST), out=tmp, steps=args.train_steps, batch_size=16, lr=1e-3,
                      warmup_steps=10, checkpoint_every=0, progress=False)
    t_train = time.perf_counter() - t0
    ids = sorted(photos)
    jobs = [(ids[i % len(ids)], ("line", "pencil")[i % 2]) for i in range(args.images)]
    jp = [photos[d] for d, _ in jobs]
    js = [st for _, st in jobs]
    seeds = [job_seed(0, d, st, 0) for d, st in jobs]
    sim = _Similarity(gen.conditioners[0], "clip_image")
    settings = [("ddpm", args.ddpm_steps), ("ddim", 10), ("ddim", 20), ("dpmsolver++", 10), ("dpmsolver++", 20),
                ("unipc", 10), ("unipc", 20), ("euler", 20)]
    rows = []
    for name, steps in settings:
        spec = c4s_core.ComponentSpec(name=name, options={"steps": steps})
        gen.sample(jp[:2], js[:2], sampler=spec, seeds=seeds[:2], guidance={"style": 2.0}, batch_size=16)  # warm-up
        t = time.perf_counter()
        imgs = gen.sample(jp, js, sampler=spec, seeds=seeds, guidance={"style": 2.0}, batch_size=16)
        dt = time.perf_counter() - t
        s = sim.scores(imgs, [d for d, _ in jobs], jp)
        rows.append({"sampler": name, "steps": steps, "images_per_s": len(jobs) / dt,
                     "mean_identity_similarity": float(np.mean(s)), "std_identity_similarity": float(np.std(s))})
    print(json.dumps({
        "bench": "samplers", "device": str(gen.device), "preset": "tiny", "train_steps": args.train_steps,
        "train_seconds": t_train, "final_loss": res["final_loss"], "images": len(jobs),
        "similarity_encoder": "clip_image (random tiny tower)", "guidance": {"style": 2.0}, "results": rows,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
