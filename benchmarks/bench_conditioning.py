"""Does each condition of a trained CLIP4Sketch generator matter? Prints JSON.

No pretrained CLIP weights exist offline, so c4s conditions on dlib's pretrained
identity descriptor (``dlib_id``) and a *frozen random* open_clip text tower
(``clip_text``: each style prompt becomes a fixed distinct vector; the learned
projection turns it into a style embedding). This measures, on reference
photos the generator never saw, whether those conditions steer the samples:

- **style**: a nearest-centroid classifier on simple stroke statistics (grey
  and gradient histograms), fitted on the real training sketches of each style,
  names the style of each generated sketch. Accuracy with the style condition
  kept vs dropped (its learned null tokens), chance = 1/styles. The classifier's
  own accuracy on held-out real sketches is reported beside it.
- **identity**: dlib ResNet cosine similarity of each generated sketch to its own
  reference photo (genuine) and to another identity's (impostor), with the
  identity (and appearance, e.g. ``photo_patches``) conditions kept vs dropped.
  The gap genuine - impostor is what a matcher can learn from. A lower bar,
  ``layout_gap``: the correlation of each sketch's 12x12 grey thumbnail with its
  own photo's minus with another's (does the sketch follow the photo's
  light/dark layout at all?).

    python benchmarks/bench_conditioning.py --generator OUT/02-generator-diffusion/generator \\
        --refs OUT/01-data/aligned-new-identities/manifest.jsonl --real OUT/01-data/train.jsonl \\
        --styles cufs fs2k_0 fs2k_1 fs2k_2 --n 48
"""

import argparse
import json
import os
import time

import numpy as np

from c4s_core.judge import NearestCentroid, stroke_features


def layout(images) -> np.ndarray:
    """Per image: the 12x12 grey thumbnail, centred and unit-norm (dot product = Pearson correlation)."""
    from PIL import Image

    t = np.stack([np.asarray(Image.fromarray(np.asarray(im)[..., :3]).convert("L").resize((12, 12), Image.BOX),
                             np.float32).ravel() for im in images])
    t -= t.mean(1, keepdims=True)
    return t / (np.linalg.norm(t, axis=1, keepdims=True) + 1e-6)


def load(manifest, modality, size, limit=None):
    from c4s_core.data.io import load_image, resize
    from c4s_core.data.manifest import read_manifest

    base = os.path.dirname(os.path.abspath(manifest))
    recs = [r for r in read_manifest(manifest) if r.get("modality", "sketch") == modality][:limit]
    imgs = [resize(load_image(os.path.join(base, r["path"])), size) for r in recs]
    return recs, np.stack(imgs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generator", required=True)
    ap.add_argument("--refs", required=True, help="Manifest of aligned reference photos of unseen people.")
    ap.add_argument("--real", required=True, help="Manifest of the real training sketches (with styles).")
    ap.add_argument("--styles", nargs="+", required=True)
    ap.add_argument("--n", type=int, default=48, help="Reference photos (identities) used.")
    ap.add_argument("--condition-size", type=int, default=112)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from c4s_plugins.diffusion import DiffusionGenerator

    from c4s_core import get_registries
    from c4s_core.data.io import resize

    t0 = time.time()
    gen = DiffusionGenerator.from_pretrained(a.generator, device="cpu")
    size = gen.unet_config["sample_size"]

    # style classifier on the real sketches: fit on 80 %, report accuracy on 20 %
    recs, real = load(a.real, "sketch", size)
    ys = [r.get("style") for r in recs]
    keep = [i for i, y in enumerate(ys) if y in a.styles]
    real, ys = real[keep], [ys[i] for i in keep]
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(ys))
    cut = int(0.8 * len(ys))
    fx = stroke_features(real)
    clf = NearestCentroid().fit(fx[perm[:cut]], [ys[i] for i in perm[:cut]])
    real_acc = float(np.mean([p == ys[i] for p, i in zip(clf.predict(fx[perm[cut:]]), perm[cut:], strict=True)]))
    clf = NearestCentroid().fit(fx, ys)

    _, photos = load(a.refs, "photo", a.condition_size, a.n)
    photos = list(photos)
    sampler = get_registries().sampler.build("dpmsolver++", {"steps": a.steps})
    bb = get_registries().backbone.build("dlib_resnet", {"cnn_fallback": False})  # whole image if no face found
    ref_emb = np.asarray(bb.embed([resize(p, tuple(bb.input_size)) for p in photos]), np.float32)
    ref_lay = layout(photos)
    roles = set(gen.roles.values()) if isinstance(gen.roles, dict) else set(gen.roles)
    # guidance {role: 0} samples with that role's null tokens and every other condition kept
    variants = {"all conditions": {}}
    for r in ("style", "identity", "appearance"):
        if r in roles:
            variants[f"{r} dropped"] = {r: 0.0}
    if {"identity", "appearance"} <= roles:
        variants["identity and appearance dropped"] = {"identity": 0.0, "appearance": 0.0}
    out = {}
    for name, guidance in variants.items():
        t = time.time()
        styles = [a.styles[i % len(a.styles)] for i in range(len(photos))]
        imgs = gen.sample(photos, styles, sampler=sampler, guidance=guidance, seed=1, batch_size=32)
        acc = float(np.mean([p == s for p, s in zip(clf.predict(stroke_features(imgs)), styles, strict=True)]))
        e = np.asarray(bb.embed([resize(im, tuple(bb.input_size)) for im in imgs]), np.float32)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        r = ref_emb / np.linalg.norm(ref_emb, axis=1, keepdims=True)
        genuine = (e * r).sum(1)
        impostor = (e * np.roll(r, 1, axis=0)).sum(1)
        rank1 = float(np.mean((e @ r.T).argmax(1) == np.arange(len(r))))
        # a lower bar than identity: does the sketch follow the photo's light/dark layout?
        sl = layout(imgs)
        lay_gen, lay_imp = (sl * ref_lay).sum(1), (sl * np.roll(ref_lay, 1, axis=0)).sum(1)
        out[name] = {"style_accuracy": round(acc, 3), "id_genuine": round(float(genuine.mean()), 4),
                     "id_impostor": round(float(impostor.mean()), 4),
                     "id_gap": round(float(genuine.mean() - impostor.mean()), 4),
                     "id_rank1_among_refs": round(rank1, 3), "layout_genuine": round(float(lay_gen.mean()), 4),
                     "layout_gap": round(float(lay_gen.mean() - lay_imp.mean()), 4),
                     "seconds": round(time.time() - t, 1)}
    print(json.dumps({"benchmark": "conditioning", "generator": a.generator, "identities": len(photos),
                      "styles": a.styles, "chance_style": round(1 / len(a.styles), 3),
                      "chance_rank1": round(1 / len(photos), 3), "style_classifier_real_accuracy": round(real_acc, 3),
                      "variants": out, "seconds": round(time.time() - t0, 1)}, indent=2))


if __name__ == "__main__":
    main()
