"""The issue-12 experiment config (examples/experiments/clip4sketch-real.yaml) run
end to end at a tiny size on synthfaces, so the shipped config cannot rot: same
arms, styles per identity, protocols, grey images, baselines and stage records."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from tinyclip import TINY_CLIP

from c4s_core.config import load_config
from c4s_core.pipelines import experiment as ex

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples/experiments/clip4sketch-real.yaml"
STYLES = ["pencil", "charcoal", "line"]


def synth(seed, prefix, n, sketches, styles=STYLES):
    return {"name": "synthfaces", "options": {"num_identities": n, "images_per_identity": 1,
                                              "sketches_per_identity": sketches, "seed": seed, "prefix": prefix,
                                              "size": 48, "styles": styles}}


def shrink(cfg: ex.Config, out: Path) -> ex.Config:
    """The shipped config with data swapped for synthfaces and every size made tiny;
    arms, protocols, grayscale, baselines, styles_per_identity and the split stay."""
    d = cfg.model_dump()
    diff = d["diffusion"]["options"]
    diff.update(preset="tiny", sample_size=32, block_out_channels=[8, 16], attention_levels=[False, True],
                cross_attention_dim=16, norm_num_groups=4, device="cpu", ema_decay=0.9,
                conditioners=[{"name": "clip_image", "options": {"model_config": TINY_CLIP}},
                              {"name": "clip_text", "options": {"model_config": TINY_CLIP}}])
    d["gan"]["options"].update(preset="tiny", size=32, device="cpu")
    d["procedural"]["options"]["size"] = 32
    d["generator_options"].update(batch_size=4, checkpoint_every=0, condition_size=32)
    # the pretrained network at its smallest input, from a random start (tests have no weights)
    d["matcher"]["backbone"]["options"].update(pretrained=False, input_size=112)
    d["matcher"].update(epochs=2, batch_size=8, images_per_epoch=40, threads=1)
    d["sampler"]["options"]["steps"] = 2
    baselines = [b for b in d["evaluation"]["baselines"] if b != "dlib_resnet" or importlib.util.find_spec("dlib")]
    d["evaluation"].update(worst=0, baselines=baselines)
    if not importlib.util.find_spec("dlib"):
        d["report_similarity"] = None
    d.update(out=out, train=synth(0, "tr", 10, 3), distractors=synth(3, "dx", 12, 0), new_identities=synth(2, "nw", 5, 0),
             new_limit=None, prealign={"name": "center"}, styles=STYLES, diffusion_steps=2, gan_steps=2)
    return ex.Config.model_validate(d)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from c4s_core.plugins import set_registries

    set_registries(None)
    shipped = load_config(ex.Config, CONFIG)
    cfg = shrink(shipped, tmp_path_factory.mktemp("real") / "run")
    res = ex.run(cfg, progress=False)
    set_registries(None)
    return shipped, cfg, res


def test_shipped_config_is_the_issue_12_design():
    cfg = load_config(ex.Config, CONFIG)
    assert cfg.arms == ["real", "diffusion", "gan", "procedural"] and cfg.test is None
    assert cfg.evaluation.protocols == ["aligned", "perturbed", "distractors", "forensic"]
    assert cfg.evaluation.grayscale and cfg.evaluation.baselines == ["hog", "dlib_resnet"]
    assert cfg.new_identities.options["limit"] >= 2000 and cfg.distractors.options["limit"] >= 1000
    assert set(cfg.styles) == {"cufs", "fs2k_0", "fs2k_1", "fs2k_2"} and cfg.styles_per_identity == 2
    assert cfg.prealign is not None and cfg.prealign.name == "dlib"
    # every arm fine-tunes the pretrained recogniser (issue 17)
    assert cfg.matcher.backbone.name == "dlib_r29" and cfg.matcher.options["loss"] == "pairs"


def test_tiny_run_of_the_shipped_config(run):
    shipped, cfg, res = run
    out = Path(res["out"])
    protocols = shipped.evaluation.protocols
    assert res["probes"] == protocols
    for name in [*cfg.arms, *cfg.evaluation.baselines]:
        assert set(res["metrics"][name]) == set(protocols), name
    # the distractor protocols search a larger gallery than the plain ones
    c = res["counts"]
    assert c["distractors"]["gallery_identities"] == c["aligned"]["gallery_identities"] + 12
    assert c["forensic"]["gallery_identities"] == c["distractors"]["gallery_identities"]
    md = (out / "report.md").read_text()
    assert all(f"## {p}" in md for p in protocols) and "All images grey." in md
    for p in protocols:
        rep = json.loads((out / f"05-evaluate-real-{p}" / "report.json").read_text())
        assert rep["grayscale"] is True and (rep["perturb"] is not None) == (p in ("perturbed", "forensic"))


def test_generator_never_sees_the_test_split(run):
    from c4s_core.data.manifest import read_manifest

    _, cfg, res = run
    out = Path(res["out"])
    test_ids = {r["identity"] for r in read_manifest(out / "01-data" / "test.jsonl")}
    for arm in ("diffusion", "gan"):
        gcfg = (out / f"02-generator-{arm}" / "config.yaml").read_text()
        assert str((out / "01-data" / "train.jsonl").resolve()) in gcfg, arm
    train_ids = {r["identity"] for r in read_manifest(out / "01-data" / "train.jsonl")}
    assert test_ids and not test_ids & train_ids


def test_each_new_identity_in_two_of_the_styles(run):
    from c4s_core.data.manifest import read_manifest

    _, cfg, res = run
    recs = [r for r in read_manifest(Path(res["out"]) / "03-generated-diffusion" / "manifest.jsonl")
            if r["modality"] == "sketch"]
    by: dict[str, set] = {}
    for r in recs:
        by.setdefault(r["identity"], set()).add(r["style"])
    assert len(by) == 5 and all(len(s) == 2 and s <= set(STYLES) for s in by.values())
    assert len({frozenset(s) for s in by.values()}) > 1  # the pick differs between identities


def test_each_generated_set_has_its_report(run):
    _, cfg, res = run
    for arm in ("diffusion", "gan", "procedural"):
        rep = json.loads((Path(res["out"]) / f"03-generated-{arm}" / "report" / "report.json").read_text())
        assert rep["identities"] == 5 and rep["sketches"] == 10, arm
        assert (Path(res["out"]) / f"03-generated-{arm}" / "report" / "contact_sheet.png").is_file()
        if cfg.report_similarity is not None:
            assert rep["identity_similarity"]["n"] == 10 and rep["impostor_similarity"]["n"] == 10
            assert -1 <= rep["impostor_similarity"]["mean"] <= 1
    # similarity on a sample of identities; counts still over the whole set
    from c4s_core.pipelines import report_dataset

    sdir = Path(res["out"]) / "03-generated-procedural"
    enc = cfg.report_similarity or {"name": "clip_image", "options": {"model_config": TINY_CLIP}}
    r = report_dataset.run(report_dataset.Config(path=sdir, out=sdir / "sampled", similarity_encoder=enc,
                                                 similarity_identities=2), progress=False)
    rep = json.loads((sdir / "sampled" / "report.json").read_text())
    assert rep["sketches"] == 10 and rep["identities"] == 5 and r["sketches"] == 10
    assert rep["identity_similarity"]["n"] == 4 and rep["impostor_similarity"]["n"] == 4


def test_every_stage_records_time_and_peak_memory(run):
    _, _, res = run
    out = Path(res["out"])
    marks = sorted(out.glob("*/stage.json")) + sorted(out.glob("*/*/stage.json"))
    # align train/new/distractors, 2 generators, 3 sets + their reports + their judges, 4 matchers,
    # 4 protocols x (arms + baselines)
    assert len(marks) == 3 + 2 + 3 + 3 + 3 + 4 + 4 * len(res["metrics"])
    for m in marks:
        rec = json.loads(m.read_text())
        assert rec["seconds"] >= 0 and rec["peak_rss_mb"] > 50, m


def test_claim_config_reuses_pretrained_real_and_trained_generators():
    """claim-pretrained.yaml (issue 19's rerun) is pretrained-real.yaml plus the
    synthetic arms: the same data, split, matcher and evaluation (so a copy of a
    finished pretrained-real run resumes with its real-only arm reused), and the
    two learnt generators trained outside, the diffusion one with the SDEdit start."""
    claim = load_config(ex.Config, ROOT / "examples/experiments/claim-pretrained.yaml")
    base = load_config(ex.Config, ROOT / "examples/experiments/pretrained-real.yaml")
    assert claim.arms == ["real", "diffusion", "gan", "procedural"]
    for field in ("seed", "train", "test", "test_fraction", "distractors", "prealign", "aligner", "evaluation"):
        assert getattr(claim, field) == getattr(base, field), field
    # real-only's budget, so pretrained-real's real-only arm is reused: its images per epoch = its training images
    assert claim.matcher.model_copy(update={"images_per_epoch": None}) == base.matcher
    assert base.matcher.images_per_epoch is None and claim.matcher.images_per_epoch == 1964
    assert set(claim.trained_generators) == {"diffusion", "gan"}
    assert 0 < claim.strength < 1 and claim.start_style == "pencil" and claim.guidance.get("identity", 0) > 0
    assert set(claim.styles) == {"cufs", "fs2k_0", "fs2k_1", "fs2k_2"} and claim.styles_per_identity == 2
    cfg = ex._generate_config(claim, "diffusion", Path("g"), Path("o"), condition_size=150)
    assert (cfg.strength, cfg.start_style, cfg.condition_size) == (claim.strength, "pencil", 150)


def test_claim_neg_config_is_the_claim_plus_the_stronger_recipe():
    """claim-neg.yaml differs from claim-pretrained.yaml only by what its header
    names: hard negatives from all 4,000 UTK people (600 drawn), flip fusion for the
    arms (baselines plain), the pretrain design, the 3,000-step generator and
    its style-guided pencil start."""
    claim = load_config(ex.Config, ROOT / "examples/experiments/claim-pretrained.yaml")
    neg = load_config(ex.Config, ROOT / "examples/experiments/claim-neg.yaml")
    changed = {f for f in ex.Config.model_fields if getattr(claim, f) != getattr(neg, f)}
    assert changed == {"out", "new_identities", "new_limit", "matcher", "evaluation", "trained_generators",
                       "guidance", "strength"}
    assert neg.matcher.negatives == 48 and neg.matcher.synthetic_use == "pretrain"
    assert neg.matcher.options["negatives_pool"] == 4
    plain = {k: v for k, v in neg.matcher.options.items() if k != "negatives_pool"}
    assert neg.matcher.model_copy(update={"negatives": 0, "synthetic_use": "mix", "options": plain}) == claim.matcher
    assert neg.evaluation.flip_fusion and neg.evaluation.flip_baselines == []
    assert neg.evaluation.model_copy(update={"flip_fusion": False}) == claim.evaluation
    assert neg.new_identities.options["limit"] == 4000 and neg.new_limit == 600
    assert neg.trained_generators["gan"] == claim.trained_generators["gan"]
    assert neg.guidance == {"identity": 2.0, "style": 3.0} and neg.strength == 0.4
