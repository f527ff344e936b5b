"""The generate pipeline: checkpoints of any generator kind, samplers, per-job
seeds, shards, resume (stop_after and a real kill -9) and the manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tinyclip import TINY_CLIP

from c4s_core import get_registries
from c4s_core.data.manifest import read_manifest
from c4s_core.errors import ConfigError, DataError
from c4s_core.pipelines import get_pipeline

ID_ENCODER = {"name": "clip_image", "options": {"model_config": TINY_CLIP}}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny diffusion generator trained a few steps, saved with save_pretrained."""
    from c4s_core.plugins import set_registries

    set_registries(None)
    regs = get_registries()
    gen = regs.generator.build("diffusion", {
        "preset": "tiny", "device": "cpu", "ema_decay": 0.0,
        "conditioners": [{"name": "clip_image", "options": {"model_config": TINY_CLIP}},
                         {"name": "clip_text", "options": {"model_config": TINY_CLIP}}]})
    ds = regs.dataset.build("synthfaces", {"num_identities": 6, "size": 32, "images_per_identity": 1,
                                           "sketches_per_identity": 1, "styles": ["line", "pencil"]})
    photos = [ds[2 * i].image for i in range(6)]
    sketches = np.stack([ds[2 * i + 1].image for i in range(6)])
    styles = [ds[2 * i + 1].style for i in range(6)]
    d = tmp_path_factory.mktemp("ck")
    gen.fit(sketches, gen.encode_conditions(photos, styles), out=d / "train", steps=3, batch_size=4, lr=1e-3,
            checkpoint_every=0, progress=False)
    gen.save_pretrained(d / "generator")
    set_registries(None)
    return d / "generator"


def cfg(out, **kw):
    g = get_pipeline("generate")
    base = dict(
        dataset={"name": "synthfaces", "options": {"num_identities": 3, "size": 32, "sketches_per_identity": 0}},
        styles=["pencil", "line"], num_per_style=2, batch_size=4, condition_size=32,
        sampler={"name": "ddim", "options": {"steps": 2}}, guidance={"style": 2.0},
        id_conditioner=ID_ENCODER, out=out,
    )
    base.update(kw)
    return g, g.Config(**base)


def files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name not in ("config.yaml", "run.json")}


def test_manifest_fields_and_manifest_dataset(checkpoint, tmp_path):
    from c4s_core.pipelines.generate import checkpoint_hash, job_seed

    g, c = cfg(tmp_path / "o", checkpoint=checkpoint)
    s = g.run(c, progress=False)
    assert s["complete"] and s["written"] == 3 * 2 * 2 and s["generator"] == "diffusion"
    recs = read_manifest(tmp_path / "o" / "manifest.jsonl")
    assert [r["path"] for r in recs] == sorted(r["path"] for r in recs)
    sk = [r for r in recs if r["modality"] == "sketch"]
    assert len(sk) == 12 and sum(r["modality"] == "photo" for r in recs) == 3
    r = sk[0]
    assert r["path"] == f"{r['identity']}/{r['style']}_{r['k']}.png"
    assert r["sampler"] == "ddim" and r["steps"] == 2 and r["guidance"] == {"style": 2.0}
    assert r["conditioners"] == ["clip_image", "clip_text"]
    assert r["checkpoint_hash"] == checkpoint_hash(checkpoint) and r["seed"] == job_seed(0, r["identity"], r["style"], r["k"])
    assert {p["source_sha"] for p in recs if p["identity"] == r["identity"]} == {r["source_sha"]}
    # identity similarity: the cosine of the encoder's tokens for the sketch and the aligned photo
    from c4s_core.data import load_image

    enc = get_registries().conditioner.build(ID_ENCODER["name"], ID_ENCODER["options"])
    out = tmp_path / "o"
    e = enc.encode([load_image(out / r["path"]), load_image(out / r["identity"] / "photo.png")])[:, 0].numpy()
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert r["identity_similarity"] == pytest.approx(float(e[0] @ e[1]), abs=1e-4)
    assert all(-1 <= x["identity_similarity"] <= 1 for x in sk) and r["similarity_encoder"] == "clip_image"
    # train-matcher reads the set through the manifest dataset
    ds = get_registries().dataset.build("manifest", {"path": str(out / "manifest.jsonl")})
    assert len(ds) == 15 and {x.modality for x in ds} == {"photo", "sketch"}
    assert ds[0].image.shape == (32, 32, 3)


def test_sampler_swap_and_settings_guard(checkpoint, tmp_path):
    g, a = cfg(tmp_path / "a", checkpoint=checkpoint, styles=["pencil"], num_per_style=1, similarity=False)
    _, b = cfg(tmp_path / "b", checkpoint=checkpoint, styles=["pencil"], num_per_style=1, similarity=False,
               sampler={"name": "dpmsolver++", "options": {"steps": 3}})
    g.run(a, progress=False)
    g.run(b, progress=False)
    ra, rb = (read_manifest(tmp_path / x / "manifest.jsonl") for x in "ab")
    assert {r["sampler"] for r in rb if r["modality"] == "sketch"} == {"dpmsolver++"}
    pa = [np.asarray(__import__("PIL.Image").Image.open(tmp_path / "a" / r["path"]), int) for r in ra if r["modality"] == "sketch"]
    pb = [np.asarray(__import__("PIL.Image").Image.open(tmp_path / "b" / r["path"]), int) for r in rb if r["modality"] == "sketch"]
    assert np.mean([np.abs(x - y).mean() for x, y in zip(pa, pb, strict=True)]) > 0.5
    # a different setting into the same folder is refused, naming the setting
    with pytest.raises(DataError, match="sampler"):
        g.run(b.model_copy(update={"out": tmp_path / "a"}), progress=False)


def test_guidance_mode_is_recorded_guarded_and_refused_without_roles(checkpoint, tmp_path):
    from c4s_core.data import load_image

    g, a = cfg(tmp_path / "a", checkpoint=checkpoint, styles=["pencil"], num_per_style=1, similarity=False)
    _, n = cfg(tmp_path / "n", checkpoint=checkpoint, styles=["pencil"], num_per_style=1, similarity=False,
               guidance_mode="nested")
    g.run(a, progress=False)
    g.run(n, progress=False)
    ra, rn = ([r for r in read_manifest(tmp_path / x / "manifest.jsonl") if r["modality"] == "sketch"] for x in "an")
    assert {r["guidance_mode"] for r in ra} == {"compositional"} and {r["guidance_mode"] for r in rn} == {"nested"}
    # one guided role: both forms are u + s (style - u), the same images
    assert max(np.abs(load_image(tmp_path / "a" / x["path"]).astype(int) - load_image(tmp_path / "n" / y["path"])).max()
               for x, y in zip(ra, rn, strict=True)) <= 1
    with pytest.raises(DataError, match="guidance_mode"):
        g.run(n.model_copy(update={"out": tmp_path / "a"}), progress=False)
    _, p = cfg(tmp_path / "p", generator={"name": "procedural"}, guidance_mode="nested", similarity=False)
    with pytest.raises(ConfigError, match="guidance_mode"):
        g.run(p, progress=False)


def test_same_images_whatever_the_batch_size(checkpoint, tmp_path):
    g, a = cfg(tmp_path / "a", checkpoint=checkpoint, batch_size=12, similarity=False,
               sampler={"name": "ddpm", "options": {"steps": 3}})
    _, b = cfg(tmp_path / "b", checkpoint=checkpoint, batch_size=5, similarity=False,
               sampler={"name": "ddpm", "options": {"steps": 3}})
    g.run(a, progress=False)
    g.run(b, progress=False)
    fa, fb = files(tmp_path / "a"), files(tmp_path / "b")
    assert fa.keys() == fb.keys()
    from c4s_core.data import load_image

    pngs = [k for k in fa if k.endswith(".png") and "photo" not in k]
    diffs = [np.abs(load_image(tmp_path / "a" / k).astype(int) - load_image(tmp_path / "b" / k)).max() for k in pngs]
    assert max(diffs) <= 1  # float rounding only
    imgs = [load_image(tmp_path / "a" / k).astype(int) for k in pngs]
    assert np.abs(imgs[0] - imgs[1]).mean() > 1  # k=0 and k=1 differ


def test_union_of_shards_equals_one_run(checkpoint, tmp_path):
    g, one = cfg(tmp_path / "one", checkpoint=checkpoint, batch_size=3)
    g.run(one, progress=False)
    s1 = g.run(cfg(tmp_path / "sh", checkpoint=checkpoint, batch_size=3, shard="1/2")[1], progress=False)
    assert not s1["complete"] and (tmp_path / "sh" / "manifest.shard-1-of-2.jsonl").is_file()
    s2 = g.run(cfg(tmp_path / "sh", checkpoint=checkpoint, batch_size=3, shard="2/2")[1], progress=False)
    assert s2["complete"] and s1["batches"] + s2["batches"] == 4
    assert files(tmp_path / "one") == files(tmp_path / "sh")  # same files, same bytes, same manifest
    with pytest.raises(Exception, match="shard"):
        cfg(tmp_path / "x", shard="3/2")


def test_stopped_then_resumed_equals_one_run(checkpoint, tmp_path):
    g, one = cfg(tmp_path / "one", checkpoint=checkpoint, batch_size=4)
    g.run(one, progress=False)
    s = g.run(cfg(tmp_path / "r", checkpoint=checkpoint, batch_size=4, stop_after=6)[1], progress=False)
    assert s["stopped_early"] and s["written"] == 6 and not (tmp_path / "r" / "manifest.jsonl").exists()
    s = g.run(cfg(tmp_path / "r", checkpoint=checkpoint, batch_size=4)[1], progress=False)
    assert s["written"] == 6 and s["kept"] == 6 and s["complete"]
    assert files(tmp_path / "one") == files(tmp_path / "r")  # no leftovers, no duplicates


def test_procedural_needs_no_checkpoint_and_survives_kill_9(tmp_path):
    common = ["--set", "generator.options.size=48", "--set", "dataset.options.num_identities=6",
              "--set", "dataset.options.size=64", "--set", "num_per_style=3", "--set", "batch_size=1",
              "--set", "condition_size=64", "--set", "similarity=false", "--no-progress"]
    g = get_pipeline("generate")
    from c4s_core.config import load_config

    ref = load_config(g.Config, None, [a for a in common[1::2] if "=" in a] + [f"out={tmp_path / 'one'}"])
    s = g.run(ref, progress=False)
    assert s["generator"] == "procedural" and s["complete"] and s["jobs"] == 6 * 3 * 3
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "c4s_core", "generate", "--out", str(out), *common], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while time.time() - t0 < 60 and proc.poll() is None and len(list(out.rglob("*_*.png"))) < 10:
        time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    g.run(load_config(g.Config, None, [a for a in common[1::2] if "=" in a] + [f"out={out}"]), progress=False)
    assert files(tmp_path / "one") == files(out)
    # sketches differ between k (seeded jitter); a diffusion generator without a checkpoint is refused
    m = read_manifest(tmp_path / "one" / "manifest.jsonl")
    assert len({r["sha"] for r in m if r["modality"] == "sketch"}) == 6 * 3 * 3
    with pytest.raises(ConfigError, match="checkpoint"):
        g.run(g.Config(generator={"name": "diffusion"}, out=tmp_path / "d"), progress=False)


def test_load_generator_reads_the_kind(tmp_path):
    from c4s_core.pipelines.generate import load_generator

    gen = get_registries().generator.build("procedural", {"size": 40, "jitter": 0.5})
    gen.save_pretrained(tmp_path / "p")
    back = load_generator(tmp_path / "p")
    assert back.name == "procedural" and back.config.size == 40
    (tmp_path / "bad").mkdir()
    with pytest.raises(DataError, match="generator.json"):
        load_generator(tmp_path / "bad")
    (tmp_path / "bad" / "generator.json").write_text(json.dumps({"generator": "nope"}))
    with pytest.raises(KeyError):
        load_generator(tmp_path / "bad")


def test_strength_starts_from_the_photo_or_its_rendering(checkpoint, tmp_path):
    """strength 0.05 of 20 DDIM steps keeps only the last step (t = 0, noise scale
    sqrt(1 - abar_0) = 0.01), so each sketch is its start image up to a few grey
    levels: the grey reference photo, or its plain pencil rendering."""
    from c4s_core.data import load_image

    spec = {"name": "ddim", "options": {"steps": 20}}
    g, a = cfg(tmp_path / "a", checkpoint=checkpoint, styles=["pencil"], num_per_style=1, similarity=False,
               sampler=spec, strength=0.05)
    _, b = cfg(tmp_path / "b", checkpoint=checkpoint, styles=["pencil"], num_per_style=1, similarity=False,
               sampler=spec, strength=0.05, start_style="pencil")
    g.run(a, progress=False)
    g.run(b, progress=False)
    render = get_registries().generator.build("procedural", {"size": 32, "jitter": 0.0})
    far = []
    for d, start in (("a", None), ("b", "pencil")):
        recs = [r for r in read_manifest(tmp_path / d / "manifest.jsonl") if r["modality"] == "sketch"]
        assert len(recs) == 3 and {(r["strength"], r["start_style"]) for r in recs} == {(0.05, start)}
        for r in recs:
            photo = load_image(tmp_path / d / r["identity"] / "photo.png")
            want = photo if start is None else render.sample([photo], [start])[0]
            grey = np.asarray(__import__("PIL.Image").Image.fromarray(want).convert("L"), float)
            got = load_image(tmp_path / d / r["path"]).astype(float)
            assert np.abs(got - grey[..., None]).mean() < 4.0, (d, r["path"])
            far.append(np.abs(load_image(tmp_path / "a" / r["path"]).astype(float) - got).mean())
    assert np.mean(far[3:]) > 10  # the two starts give different sketches
    with pytest.raises(DataError, match="strength"):  # another strength into the same folder
        g.run(a.model_copy(update={"strength": 0.5}), progress=False)
    with pytest.raises(ConfigError, match="strength"):
        g.run(cfg(tmp_path / "c", checkpoint=checkpoint, start_style="pencil")[1], progress=False)
    with pytest.raises(ConfigError, match="strength"):
        g.run(cfg(tmp_path / "d", generator={"name": "procedural"}, strength=0.5)[1], progress=False)
