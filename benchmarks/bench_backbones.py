"""Backbone speed on this machine: training (fine-tuning) images/s (forward,
backward, SGD step with an AdaFace head) in fp32 eager and in channels_last +
bf16 autocast, and embedding images/s in torch eager, torch channels_last and
onnxruntime (CPU, the exported graph). Pretrained backbones are timed from a
random start (the same network and cost; no weights needed). Prints one JSON
line per backbone; no assertions.

    python benchmarks/bench_backbones.py [--backbone ir_50 dlib_r29] [--batch 16] [--iters 3] [--threads N] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", nargs="+", default=["ir_50", "dlib_r29"], help="Registered backbone names.")
    ap.add_argument("--batch", type=int, default=16, help="Images per step.")
    ap.add_argument("--iters", type=int, default=3, help="Timed steps per mode (after one warm-up step).")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    ap.add_argument("--classes", type=int, default=1000, help="Head classes.")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on the device in the second mode).")
    a = ap.parse_args()

    import torch

    import c4s_core

    if a.threads:
        torch.set_num_threads(a.threads)
    regs = c4s_core.get_registries()

    def sync():  # CUDA runs ahead of the host: time finished work only
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    for name in a.backbone:
        print(json.dumps(bench(regs, name, a, sync)))


def bench(regs, name, a, sync) -> dict:
    import torch
    import torch.nn.functional as F

    entry = regs.backbone.get(name)
    opts = {"device": a.device}
    if "pretrained" in entry.config_cls.model_fields:
        opts["pretrained"] = False
    result = {"backbone": name, "batch": a.batch, "iters": a.iters, "threads": torch.get_num_threads(),
              "device": a.device, "torch": torch.__version__}
    for mode in ("fp32_eager", "channels_last_bf16"):
        torch.manual_seed(0)
        bb = regs.backbone.build(name, opts)
        head = regs.head.build("adaface").build(bb.embedding_dim, a.classes).to(a.device)
        model = bb.model.train()
        cl = mode != "fp32_eager"
        if cl:
            model.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
        h, w = bb.input_size
        x = torch.randn(a.batch, 3, h, w, device=a.device)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, a.classes, (a.batch,), device=a.device)

        def step(model=model, head=head, opt=opt, x=x, y=y, cl=cl):
            with torch.autocast(torch.device(a.device).type, dtype=torch.bfloat16, enabled=cl):
                feat = model(x)
            feat = feat.float()
            norms = feat.norm(dim=1, keepdim=True)
            loss = F.cross_entropy(head(feat / norms, norms, y), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        sync()
        t = time.perf_counter()
        for _ in range(a.iters):
            step()
        sync()
        dt = time.perf_counter() - t
        result[f"train_images_per_s_{mode}"] = round(a.batch * a.iters / dt, 2)

    bb = regs.backbone.build(name, {**opts, "batch_size": a.batch})
    imgs = [np.random.default_rng(i).integers(0, 256, (*bb.input_size, 3), dtype=np.uint8) for i in range(a.batch)]

    def rate(fn) -> float:
        fn(imgs[:2])
        t = time.perf_counter()
        for _ in range(a.iters):
            fn(imgs)
        return round(a.batch * a.iters / (time.perf_counter() - t), 2)

    result["embed_images_per_s_fp32"] = rate(bb.embed)
    bb.model.to(memory_format=torch.channels_last)
    result["embed_images_per_s_channels_last"] = rate(bb.embed)
    bb.model.to(memory_format=torch.contiguous_format)
    if a.device == "cpu":
        import tempfile
        from pathlib import Path

        from c4s_core.export import ExportMeta, export_onnx
        from c4s_core.runtime import OnnxEmbedder

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            export_onnx(bb.model, ExportMeta.from_backbone(bb, name), path, np.stack(imgs[:4]), check_batches=[1])
            emb = OnnxEmbedder(path, device="cpu", batch_size=a.batch)
            result["embed_images_per_s_onnxruntime"] = rate(lambda ims: emb.run(np.stack(ims)))
    return result


if __name__ == "__main__":
    main()
