"""The paper's comparison in one command: does a matcher trained with generated
sketches beat one trained on the few real sketches, and do both beat HOG?

Arms (``arms``), each training the **same** matcher (backbone, head, optimizer)
with the **same budget**, then evaluated on the **same** test split:

- ``real``: the real training pairs only;
- ``diffusion``: real + sketches of *new* identities drawn by the CLIP4Sketch
  diffusion generator trained (``diffusion_steps``) on the real pairs;
- ``gan``: real + sketches of the same new identities by the pix2pix baseline
  (``gan_steps``, same pairs);
- ``procedural``: real + procedural renderings of the same new identities (no training);
- ``detour``: a control of the pretrain design (``matcher.synthetic_use:
  pretrain``, needs ``real``): real-only's finished matcher fine-tuned once more
  on the real data with real-only's budget. A synthetic arm's detour is its
  pretraining on a generated set; this one's is the real data itself, so
  detour - real-only is what a second training costs or gains without any
  synthetic content (a restart of the schedule, twice the steps on real pairs).

``trained_generators`` swaps a generator's training stage for one trained
outside (a train-generator run folder, its ``generator/`` or a checkpoint);
the run's recorded training data must share no person with the test split.

Every generated set holds, per new identity, its reference photo and
``len(styles) x num_per_style`` sketches, so the three synthetic sets have the
same identities and the same number of images.

**Same budget.** Every arm's matcher sees exactly ``matcher.images_per_epoch``
images per epoch for ``matcher.epochs`` epochs, so every arm takes the same
number of optimizer steps: ``epochs x ceil(images_per_epoch / batch_size)``.
The real-only arm repeats its real images to fill the epoch; a mixed arm draws
``real_share`` of the epoch from the real data and the rest from its synthetic
set (train-matcher's per-source ``ratio`` = wanted images / images in the
source: 2.5 means twice over plus a random half). Defaults: ``images_per_epoch``
= the largest arm's pooled data (real + synthetic), ``real_share`` = the real
data's natural share of it, so a mixed arm sees each image once per epoch.
**Checkpoint selection.** With ``matcher.val_fraction`` 0 (the default) the
matcher of the last epoch is evaluated. With ``matcher.val_fraction`` > 0 that
share of the *training* identities (never the test split) is carved out in
``01-data/val.jsonl``; no matcher trains on them (every arm trains on
``01-data/matcher-train.jsonl``, the rest), each arm's train-matcher ranks their
sketches against their photos after every epoch and keeps the best epoch in
``best/``, and that checkpoint is evaluated. The report gives each arm's chosen
epoch and the optimizer steps it had taken. The generators still learn from the
whole training split (they draw new people, never the validation ones). Choosing
an epoch on the test split would flatter the matcher; validation identities do not.

**Data.** ``train`` gives the real training pairs (photos + sketches sharing
identities), ``test`` the probes (sketches) and gallery (photos) of other
people, ``distractors`` optional extra gallery photos, ``new_identities`` the
reference photos of the new people to draw. With ``test: null`` an
identity-disjoint test split of ``test_fraction`` of the ``train`` identities is
carved out (written as manifests in ``01-data/``). The run refuses identity
names shared between train, test, new identities and distractors.

**Evaluation.** Each matcher, and the training-free ``baselines`` (HOG;
``dlib_resnet``, a pretrained photo face recogniser), is evaluated under each
of ``protocols``: ``aligned`` (probes as drawn), ``perturbed`` (probes shifted,
scaled and rotated a little: real forensic sketches are never pixel-aligned),
``distractors`` (gallery enlarged with the distractor photos) and
``forensic`` (both); ``grayscale`` turns every image grey first.

**Statistics.** Every evaluation reports 95 % bootstrap intervals over probe
identities (``evaluation.bootstrap`` resamples, seeded; evaluate's
``probes.jsonl`` holds each probe's rank). Each arm's rank-1 minus real-only's
(and minus each baseline's) gets a *paired* bootstrap interval: both
evaluations are resampled with the same probe identities, so the people they
share cancel. A verdict "beats" needs that interval above zero, "loses to" below
it; an interval holding zero "does not beat" (not shown). With
``evaluation.bootstrap: 0`` verdicts compare point values as before (rank-1,
then AUC, then TAR).

Output (``OUT``): one folder per stage, each with its ``config.yaml`` (rerun a
stage alone with ``c4s <stage> --config``) and ``stage.json`` (written when it
finished: its summary, config hash, seconds and peak memory), ``results.json``,
``report.md`` (a table per protocol, one sentence per arm) and ``cmc.png`` (a
CMC panel per protocol).
``--resume`` skips finished stages and continues unfinished trainings from
their checkpoints.

This module holds the settings and the run; its parts live beside it:
``experiment_data`` (split and identity checks), ``experiment_stages`` (each
stage's config, its hash, the budget), ``experiment_protocols`` and
``experiment_report`` (metrics, verdicts, ``report.md``, ``cmc.png``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import C4SModel, ComponentSpec
from .evaluate import Perturb
from .experiment_data import SYNTHETIC, _prealign, _prepare_data, _uses_new_identities
from .experiment_protocols import _PROTOCOL, PROTOCOLS, Protocol
from .experiment_report import _alone, _differences, _intervals, _metrics, _plot, _report, _verdicts
from .experiment_stages import (
    _budget,
    _eval_spec,
    _evaluate_config,
    _generate_config,
    _generator_config,
    _matcher_config,
    _real_subset,
    _stage_hash,
    _trained_generator,
    _validation_split,
)
from .filter_set import Settings as FilterSettings

ARMS = ("real", "detour", "diffusion", "gan", "procedural")
Arm = Literal["real", "detour", "diffusion", "gan", "procedural"]
# train-generator / train-matcher fields the experiment sets itself
_GEN_OWN = {"dataset", "generator", "steps", "out", "resume", "seed", "aligner", "stop_after"}
_MATCHER_OWN = {"data", "aligner", "backbone", "head", "epochs", "batch_size", "lr", "device", "threads",
                "out", "resume", "seed", "val_fraction", "stop_after", "pair_negatives"}


def _synth(seed: int, prefix: str, n: int, sketches: int, size: int = 64, styles=("pencil",)) -> ComponentSpec:
    return ComponentSpec(name="synthfaces", options={
        "num_identities": n, "images_per_identity": 1, "sketches_per_identity": sketches, "seed": seed,
        "prefix": prefix, "size": size, "styles": list(styles)})


def _whole() -> ComponentSpec:
    return ComponentSpec(name="center", options={"box": [0.0, 0.0, 1.0, 1.0]})


def _pass_through(v: dict[str, Any], label: str, own: set[str], stage_model, stage: str) -> dict[str, Any]:
    """Fields handed to a stage config: neither ones the experiment sets itself nor unknown ones."""
    bad = sorted(set(v) & own)
    if bad:
        raise ValueError(f"{label} may not set {bad}: the experiment sets them (use the fields above)")
    unknown = sorted(set(v) - set(stage_model.model_fields))
    if unknown:
        raise ValueError(f"{label}: {unknown} are not {stage} fields")
    return v


class MatcherSettings(C4SModel):
    backbone: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="ir_18", options={
            "widths": [16, 32, 64, 128], "input_size": 64, "embedding_dim": 128}),
        description="Backbone trained by every arm (a torch backbone such as ir_18).",
    )
    head: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="adaface", options={"s": 16.0}), description="Margin head."
    )
    epochs: int = Field(20, ge=1, le=10_000, description="Epochs of every arm.")
    batch_size: int = Field(32, ge=2, le=4096, description="Images per optimizer step.")
    lr: float = Field(0.1, gt=0.0, le=10.0, description="Peak learning rate.")
    images_per_epoch: int | None = Field(
        None, ge=2, description="Images each arm sees per epoch (the budget); none: the largest arm's data.")
    real_share: float | None = Field(
        None, gt=0.0, lt=1.0, description="Share of a mixed arm's epoch drawn from the real data; none: its natural share.")
    seed: int | None = Field(
        None, ge=0, description="Seed of every matcher training (initialisation, batch order, augmentation); none: the "
        "experiment's seed. Set it on a copy of a finished experiment to repeat only the matchers and evaluations.")
    synthetic_use: Literal["mix", "pretrain"] = Field(
        "mix", description="How a synthetic arm uses its set: mix: one training on real + synthetic (real_share); "
        "pretrain: train on the synthetic set alone (stage 04-matcher-ARM-pretrain, same epochs and images per "
        "epoch), then fine-tune that matcher on the real data alone with real-only's budget.")
    real_identities: int | None = Field(
        None, ge=2, description="Train every matcher on only this many of the real training people (seeded pick, "
        "after validation is carved out): the few-real-sketches regime. The test split, generators and generated "
        "sets are unchanged (a generator trained on the whole training split still saw the others); none: all.")
    val_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="Share of the real training identities (never test) held out to pick each "
        "arm's best epoch by validation rank-1 (train-matcher's best/), which is then evaluated; 0: no validation, "
        "the last epoch is evaluated.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda if available.")
    threads: int | None = Field(None, ge=1, le=512, description="torch CPU threads (None: torch's default).")
    negatives: int = Field(
        0, ge=0, le=4096, description="Photos of the new identities (new_identities: their photos only, never a "
        "sketch) added to every batch of every matcher training as extra negatives of each sketch (train-matcher "
        "pair_negatives; needs loss pairs): strangers' faces, as a gallery's distractors are. All of "
        "new_identities' people serve, new_limit aside. 0: none.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="More train-matcher fields (optimizer, warmup_epochs, augment...); not the ones set above.",
    )

    @field_validator("options")
    @classmethod
    def _options(cls, v):
        from .train_matcher import Config as TM

        return _pass_through(v, "matcher.options", _MATCHER_OWN, TM, "train-matcher")

    @model_validator(mode="after")
    def _negatives_need_pairs(self):
        if self.negatives and self.options.get("loss", "margin") == "margin":
            raise ValueError(f"negatives={self.negatives} are negatives of the pairs loss: set matcher.options.loss "
                             "to pairs or margin+pairs")
        return self


class Evaluation(C4SModel):
    protocols: list[Protocol] = Field(
        default_factory=lambda: ["aligned", "perturbed"],
        description="aligned: probes as drawn; perturbed: probes shifted, scaled and rotated (perturb); "
        "distractors: as drawn, gallery + the distractors; forensic: perturbed and distractors.")
    perturb: Perturb = Field(default_factory=Perturb, description="The perturbation of the perturbed protocols.")
    grayscale: bool = Field(False, description="Turn every probe and gallery image grey before embedding.")
    baselines: list[str] = Field(
        default_factory=lambda: ["hog"],
        description="Backbones evaluated beside the arms without training (hog; dlib_resnet with the dlib extra).")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per align/embed batch.")
    subset_pattern: str | None = Field(None, description="evaluate's subset_pattern (CUFS: '^(?P<subset>[^_]+)_').")
    worst: int = Field(12, ge=0, le=200, description="Rows of each evaluation's worst-failures sheet (0: none).")
    bootstrap: int = Field(
        1000, ge=0, le=100_000, description="Bootstrap resamples over probe identities: 95 % intervals of every "
        "rank-k and TAR, and paired intervals of each arm's rank-1 difference that the verdicts use; 0: none "
        "(verdicts compare point values).")
    bootstrap_seed: int = Field(0, ge=0, description="Seed of the bootstrap resamples (the same draws for every arm).")
    flip_fusion: bool = Field(
        False, description="Embed each probe and gallery image and its mirror image, summed (AdaFace's evaluation "
        "habit), with every arm's matcher, and with the baselines named in flip_baselines.")
    flip_baselines: list[str] = Field(
        default_factory=list, description="Baselines flip-fused too under flip_fusion (those with the option: hog "
        "and the torch backbones; dlib_resnet has not). None by default: a baseline is shown at its plain best "
        "(flip fusion cost HOG 12-13 points rank-1, session 12).")
    synthetic_only: list[Protocol] = Field(
        default_factory=list, description="Protocols on which each synthetic arm's matcher after pretraining on its "
        "generated set alone (04-matcher-ARM-pretrain, before any real sketch) is also evaluated: what the set "
        "teaches on its own, a cheap figure to compare sets by; needs matcher.synthetic_use: pretrain.")

    @field_validator("protocols")
    @classmethod
    def _protocols(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError(f"protocols must be a non-empty list without duplicates, got {v}")
        return [p for p in PROTOCOLS if p in v]

    @field_validator("synthetic_only")
    @classmethod
    def _synthetic_only(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"synthetic_only has duplicates: {v}")
        return [p for p in PROTOCOLS if p in v]

    @model_validator(mode="after")
    def _alone_in_protocols(self):
        extra = [p for p in self.synthetic_only if p not in self.protocols]
        if extra:
            raise ValueError(f"synthetic_only {extra} are not in protocols {self.protocols}: each figure is read "
                             "beside the arms' own")
        return self

    @model_validator(mode="after")
    def _flip_baselines_listed(self):
        extra = [b for b in self.flip_baselines if b not in self.baselines]
        if extra:
            raise ValueError(f"flip_baselines {extra} are not in baselines {self.baselines}")
        return self

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, v):
        if len(set(v)) != len(v) or set(v) & set(ARMS):
            raise ValueError(f"baselines must be distinct backbone names other than the arms, got {v}")
        return v


class Config(C4SModel):
    out: Path = Field(Path("c4s-out/experiment"), description="Output folder; one sub-folder per stage.")
    seed: int = Field(0, ge=0, description="Seed of the split, generator and matcher training, generation.")
    resume: bool = Field(False, description="Skip finished stages; continue unfinished trainings from checkpoints.")
    arms: list[Arm] = Field(
        default_factory=lambda: ["real", *SYNTHETIC],
        description="Arms to run: real, diffusion, gan, procedural; detour (a control of synthetic_use: pretrain: "
        "real-only's matcher fine-tuned again on the real data, no synthetic set).")
    train: ComponentSpec = Field(
        default_factory=lambda: _synth(0, "tr", 50, 1),
        description="Real training pairs (photos + sketches sharing identities): few real sketches.")
    test: ComponentSpec | None = Field(
        default_factory=lambda: _synth(1, "te", 100, 1),
        description="Test probes (sketches) and gallery (photos) of other people; null: carve test_fraction out of train.")
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="With test: null, share of train identities held out.")
    distractors: ComponentSpec | None = Field(None, description="Optional extra gallery photos (people with no probe).")
    new_identities: ComponentSpec = Field(
        default_factory=lambda: _synth(2, "nw", 100, 0),
        description="Reference photos of NEW identities to draw sketches of (their first photo each).")
    new_limit: int | None = Field(None, ge=1, description="Draw only the first N new identities (sorted).")
    prealign: ComponentSpec | None = Field(
        None, description="Align every dataset (train, test, new identities, distractors) once with this aligner "
        "(e.g. dlib) into 01-data/aligned-*; later stages read the crops (aligner/generator_aligner: center, whole "
        "box). Probes are then perturbed after alignment, so a matcher must cope with the misalignment itself.")
    diffusion: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="diffusion", options={"preset": "small",
                                                                         "prediction_type": "v_prediction"}),
        description="Diffusion generator (CLIP4Sketch) and its options.")
    diffusion_steps: int = Field(400, ge=1, le=10_000_000, description="Optimizer steps of the diffusion generator.")
    gan: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="gan", options={"preset": "small"}),
        description="GAN baseline (pix2pix) and its options.")
    gan_steps: int = Field(400, ge=1, le=10_000_000, description="Optimizer steps of the GAN.")
    procedural: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="procedural", options={"size": 64}),
        description="Procedural generator (no training) and its options.")
    generator_options: dict[str, Any] = Field(
        default_factory=lambda: {"batch_size": 16, "checkpoint_every": 200, "sample_every": 0, "val_every": 0,
                                 "grid_identities": 0, "condition_size": 64, "val_fraction": 0.0},
        description="More train-generator fields for both trained generators (batch_size, lr, condition_size...).")
    generator_aligner: ComponentSpec | None = Field(
        default_factory=_whole,
        description="Aligner of the generator stages (pairs and reference photos); none: plain resize.")
    styles: list[str] = Field(
        default_factory=lambda: ["pencil"],
        description="Sketch styles to generate (learnt generators know only the styles of the training sketches; "
        "paired_folder sketches are 'pencil').")
    procedural_styles: list[str] | None = Field(
        None, description="Styles of the procedural arm (styles that render, e.g. pencil, charcoal); none: `styles`.")
    num_per_style: int = Field(2, ge=1, le=10_000, description="Sketches per new identity and style.")
    styles_per_identity: int | None = Field(
        None, ge=1, description="Draw each new identity in this many of `styles` (seeded pick); none: all of them.")
    sampler: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="dpmsolver++", options={"steps": 20}),
        description="Sampler of the diffusion generator.")
    guidance: dict[str, float] = Field(
        default_factory=lambda: {"identity": 2.0, "style": 2.0}, description="Per-role guidance of the diffusion generator.")
    guidance_mode: Literal["compositional", "nested"] = Field(
        "compositional", description="How the guided roles combine (generate's `guidance_mode`): compositional or "
        "nested (each role given the ones before it in `guidance`'s order).")
    strength: float = Field(
        1.0, gt=0.0, le=1.0, description="Diffusion arm: start sampling this far up the schedule from the noised "
        "grey reference photo (SDEdit, generate's `strength`); 1: pure noise.")
    start_style: str | None = Field(
        None, description="Diffusion arm with strength < 1: start from the procedural rendering of the photo in this "
        "style (generate's `start_style`, e.g. pencil) instead of the grey photo.")
    trained_generators: dict[Literal["diffusion", "gan"], Path] = Field(
        default_factory=dict, description="Generators trained outside this experiment, per arm: a train-generator out "
        "folder, its generator/ or one of its checkpoints/step_N. That arm's training stage is skipped. The run's "
        "recorded training data must share no person with this experiment's test split (checked, else an error). "
        "Entries for arms not in `arms` are ignored.")
    report_similarity: ComponentSpec | None = Field(
        None, description="Encoder measuring identity similarity (genuine and impostor) in each generated set's "
        "report (report-dataset; e.g. dlib_id); none: the report has diversity and the contact sheet only.")
    report_identities: int = Field(200, ge=2, le=100_000, description="Identities sampled for report_similarity.")
    judge: bool = Field(
        True, description="Judge each generated set's identity fidelity with the real-only arm's matcher (trained on "
        "the real training split only; needs arm real) against the test split's real sketches (report-dataset judge).")
    judge_identities: int | None = Field(
        None, ge=2, description="Identities per judge gallery; none: as many as the set and the test split share.")
    identity_filter: FilterSettings | None = Field(
        None, description="Keep only the generated sketches a recogniser still matches to their photo (`c4s "
        "filter-set`: a far or a min_similarity, and the encoder; use one other than the judge), for every synthetic "
        "arm; the matchers and the judge see the kept set (03-filtered-ARM). none: every sketch.")
    generate_batch_size: int = Field(16, ge=1, le=4096, description="Images per sampling batch.")
    aligner: ComponentSpec = Field(
        default_factory=_whole,
        description="Aligner of the matcher stages (training and evaluation); CUFS: center with its default box.")
    matcher: MatcherSettings = Field(default_factory=MatcherSettings, description="The matcher every arm trains.")
    evaluation: Evaluation = Field(default_factory=Evaluation, description="Evaluation settings.")

    @field_validator("arms")
    @classmethod
    def _arms(cls, v):
        if not v:
            raise ValueError(f"give at least one arm from {', '.join(ARMS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"arms has duplicates: {v}")
        return [a for a in ARMS if a in v]

    @model_validator(mode="after")
    def _detour(self):
        if "detour" in self.arms and ("real" not in self.arms or self.matcher.synthetic_use != "pretrain"):
            raise ValueError("arm detour fine-tunes real-only's matcher again, the pretrain design's control: it "
                             "needs arm real and matcher.synthetic_use: pretrain")
        return self

    @model_validator(mode="after")
    def _distractors(self):
        need = [p for p in self.evaluation.protocols if _PROTOCOL[p][1]]
        if need and self.distractors is None:
            raise ValueError(f"evaluation.protocols {need} enlarge the gallery: give distractors")
        return self

    @model_validator(mode="after")
    def _synthetic_only_needs_pretrain(self):
        if self.evaluation.synthetic_only and self.matcher.synthetic_use != "pretrain":
            raise ValueError("evaluation.synthetic_only evaluates the pretrain stage: set matcher.synthetic_use: pretrain")
        return self

    @model_validator(mode="after")
    def _start_style(self):
        if self.start_style is not None and self.strength >= 1.0:
            raise ValueError(f"start_style={self.start_style!r} needs strength < 1 (at 1 sampling starts from noise)")
        return self

    @field_validator("generator_options")
    @classmethod
    def _gen_options(cls, v):
        from .train_generator import Config as TG

        return _pass_through(v, "generator_options", _GEN_OWN, TG, "train-generator")

    @field_validator("styles")
    @classmethod
    def _styles(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError(f"styles must be a non-empty list without duplicates, got {v}")
        return v

    @model_validator(mode="after")
    def _stage_configs(self):
        # build every stage config and generator options once, so a bad option fails at
        # load time naming the field, not an hour into the run
        from pydantic import ValidationError

        from ..errors import C4SError
        from ..plugins import get_registries

        for arm in ("diffusion", "gan", "procedural"):
            if arm not in self.arms:
                continue
            try:
                if arm != "procedural":
                    _generator_config(self, arm, Path("."))
                spec = getattr(self, arm)
                get_registries().generator.config(spec.name, spec.options)
            except ValidationError as err:
                raise ValueError(f"{arm} training settings: {err}") from None
            except C4SError as err:
                raise ValueError(f"{arm}: {err}") from None
        return self


# -- the run ---------------------------------------------------------------------------------


def _selection(summary: dict[str, Any], hist: list[dict[str, Any]], steps: int | None, validated: bool) -> dict[str, Any]:
    """The checkpoint an arm's evaluation uses: its epoch, the optimizer steps
    taken by then, and its validation rank-1 (best/ with validation, else last/)."""
    done = summary.get("epochs_done") or len(hist)
    epoch = summary.get("best_epoch") if validated else done
    rec = hist[epoch - 1] if epoch and 0 < epoch <= len(hist) else {}
    at = rec.get("step")
    if at is None and steps is not None and done:  # histories written before "step": every epoch is as long
        at = round(steps * epoch / done) if epoch else None
    return {"selected": "best" if validated else "last", "selected_epoch": epoch, "selected_steps": at,
            "selected_val_rank1": rec.get("val_rank1"),
            "val_probes": summary.get("val_probes") if validated else None}


def run(config: Config, progress: bool = True) -> dict[str, Any]:
    import sys
    import time

    from ..errors import ConfigError, DataError
    from . import evaluate, filter_set, generate, report_dataset, train_generator, train_matcher
    from .common import PeakRSS, prepare_out, save_run_config, write_json

    t0 = time.time()
    cfg = config
    out = Path(cfg.out)
    if not cfg.resume and out.is_dir() and any(p.is_dir() and p.name[:2].isdigit() for p in out.iterdir()):
        raise DataError(f"{out} already holds an experiment; pass --resume to finish it (finished stages are "
                        "skipped), or pick another --out")
    out = prepare_out(out)
    save_run_config(out, "experiment", cfg)
    say = (lambda m: print(f"c4s experiment: {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)
    n_eval = len(cfg.evaluation.protocols)
    judged = cfg.judge and "real" in cfg.arms
    total = (1 + 3 * sum(a in ("diffusion", "gan") and a not in cfg.trained_generators for a in cfg.arms)
             + 2 * sum(a in cfg.trained_generators for a in cfg.arms) + 2 * sum(a == "procedural" for a in cfg.arms)
             + len(cfg.arms) * (1 + n_eval) + n_eval * len(cfg.evaluation.baselines)
             + (sum(a in SYNTHETIC for a in cfg.arms) if judged else 0)
             + (sum(a in SYNTHETIC for a in cfg.arms) if cfg.matcher.synthetic_use == "pretrain" else 0)
             + sum(a in SYNTHETIC for a in cfg.arms) * len(cfg.evaluation.synthetic_only)
             + (sum(a in SYNTHETIC for a in cfg.arms) if cfg.identity_filter else 0))
    count = [0]
    skipped: list[str] = []

    def stage(name: str, folder: Path, stage_cfg, runner, resumable=None, legacy: str | None = None):
        """Run one stage, or skip it when its stage.json says it finished with this config.
        ``legacy``: a stage.json written before the stage config gained fields
        (``_ADDED_FIELDS``) and otherwise the same: "accept" it (the new fields'
        values mean what ran) or "rerun" the stage (cheap, and it now writes more)."""
        count[0] += 1
        h = _stage_hash(stage_cfg, out)
        marker = folder / "stage.json"
        rerun = False
        if marker.is_file():
            done = json.loads(marker.read_text())
            old = done.get("config_hash")
            if old != h and old == _stage_hash(stage_cfg):  # written before relative hashing
                done["config_hash"] = h
                write_json(marker, done)
            if (old != h and legacy is not None
                    and old in (_stage_hash(stage_cfg, out, legacy=True), _stage_hash(stage_cfg, legacy=True))):
                if legacy == "accept":
                    done["config_hash"] = h
                    write_json(marker, done)
                else:
                    rerun = True
            if done.get("config_hash") != h and not rerun:
                raise ConfigError(f"{folder} holds stage {name!r} finished with other settings; delete that folder "
                                  "or use another --out")
            if not rerun:
                say(f"[{count[0]}/{total}] {name}: done already, skipped")
                skipped.append(str(folder.relative_to(out)))
                return done["summary"]
            say(f"  {folder} was finished by an older c4s: running it again for its new outputs")
        say(f"[{count[0]}/{total}] {name} -> {folder}")
        if resumable is not None and resumable():
            stage_cfg = stage_cfg.model_copy(update={"resume": True})
            say(f"  continuing from the checkpoint in {folder}")
        t = time.time()
        with PeakRSS() as mem:
            summary = runner(stage_cfg, progress=progress)
        summary = json.loads(json.dumps(summary, default=str))
        write_json(marker, {"stage": name, "config_hash": h, "seconds": round(time.time() - t, 1),
                            "peak_rss_mb": None if mem.peak_mb is None else round(mem.peak_mb, 1), "summary": summary})
        return summary

    # 1. data
    count[0] += 1
    say(f"[{count[0]}/{total}] data: datasets, split and identity checks")
    data_dir = out / "01-data"
    data_dir.mkdir(exist_ok=True)
    save_run_config(data_dir, "experiment", cfg)
    if cfg.prealign is not None:
        total += sum(x is not None for x in (cfg.train, cfg.test, cfg.distractors)) + _uses_new_identities(cfg)
        cfg = _prealign(cfg, data_dir, stage)
    data = _real_subset(cfg, _validation_split(cfg, _prepare_data(cfg, data_dir, say), data_dir, say), data_dir, say)
    write_json(data_dir / "data.json", data)

    # 2. generators, 3. generated sets
    gen_sets: dict[str, Path] = {}
    gen_summaries: dict[str, Any] = {}
    for arm in cfg.arms:
        if arm not in SYNTHETIC:
            continue
        checkpoint, csize = None, None
        if arm in cfg.trained_generators:
            given = _trained_generator(cfg.trained_generators[arm], arm, data["test"])
            checkpoint, csize = given["weights"], given["condition_size"]
            gen_summaries[f"generator-{arm}"] = given["summary"]
            say(f"[-] train-generator ({arm}): using {checkpoint} (trained outside; shares no person with the test)")
        elif arm in ("diffusion", "gan"):
            gdir = out / f"02-generator-{arm}"
            tg = _generator_config(cfg, arm, gdir, data["train"])
            s = stage(f"train-generator ({arm})", gdir, tg, train_generator.run,
                      lambda d=gdir: any((d / "checkpoints").glob("step_*")))
            gen_summaries[f"generator-{arm}"] = {k: s.get(k) for k in ("step", "final_loss", "val_loss", "steps_per_s")}
            checkpoint = gdir / "generator"
        sdir = out / f"03-generated-{arm}"
        s = stage(f"generate ({arm})", sdir, _generate_config(cfg, arm, checkpoint, sdir, csize), generate.run)
        if not s.get("complete"):
            raise DataError(f"generate ({arm}) did not finish the set in {sdir}; rerun with --resume")
        gen_sets[arm] = sdir / "manifest.jsonl"
        gen_summaries[f"generated-{arm}"] = {k: s.get(k) for k in ("identities", "jobs", "manifest_records", "seconds")}
        rc = report_dataset.Config(path=sdir, out=sdir / "report", similarity_encoder=cfg.report_similarity,
                                   similarity_identities=cfg.report_identities)
        r = stage(f"report-dataset ({arm})", sdir / "report", rc, report_dataset.run)
        gen_summaries[f"generated-{arm}"]["report"] = {
            k: r.get(k) for k in ("identity_similarity_mean", "impostor_similarity_mean", "diversity_within_style")}
        if cfg.identity_filter is not None:
            fdir = out / f"03-filtered-{arm}"
            fc = filter_set.Config(**cfg.identity_filter.model_dump(), path=sdir, out=fdir)
            f = stage(f"filter-set ({arm})", fdir, fc, filter_set.run)
            gen_sets[arm] = fdir / "manifest.jsonl"
            gen_summaries[f"generated-{arm}"]["filter"] = {
                k: f.get(k) for k in ("threshold", "kept_sketches", "sketches", "kept_identities", "identities",
                                      "impostor_share_accepted")}

    # 4. matchers, same budget
    from ..data.manifest import read_manifest

    n_synth = {arm: len(read_manifest(p)) for arm, p in gen_sets.items()}
    budget = _budget(cfg, data["matcher_train_images"], n_synth)
    write_json(out / "budget.json", budget)
    say(f"budget: {budget['images_per_epoch']} images per epoch, {budget['steps']} optimizer steps per arm")
    matchers: dict[str, Path] = {}
    pretrained: dict[str, Path] = {}  # a synthetic arm's matcher before its real fine-tune (synthetic_use: pretrain)
    train_summaries: dict[str, Any] = {}
    real_ratios = (budget["arms"]["real"]["ratios"] if "real" in budget["arms"]
                   else [budget["images_per_epoch"] / data["matcher_train_images"]])
    for arm in cfg.arms:
        mdir = out / f"04-matcher-{arm}"
        start = None  # the matcher this arm fine-tunes on the real data alone
        if arm == "detour":  # real-only's matcher (trained just before: arms run in ARMS order) once more on real
            start = matchers["real"]
        elif arm != "real" and cfg.matcher.synthetic_use == "pretrain":
            pdir = out / f"04-matcher-{arm}-pretrain"
            ratio = budget["images_per_epoch"] / n_synth[arm]
            tp = _matcher_config(cfg, arm, None, gen_sets[arm], [min(ratio, 100.0)], pdir, data["val"])
            stage(f"train-matcher ({arm}, pretrain on synthetic)", pdir, tp, train_matcher.run,
                  lambda d=pdir: (d / "last" / "state.json").is_file())
            start = pretrained[arm] = pdir / ("best" if data["val"] is not None else "last")
        if start is not None:
            tm = _matcher_config(cfg, arm, data["matcher_train"], None, real_ratios, mdir, data["val"],
                                 backbone=ComponentSpec(name="matcher", options={"path": str(start.resolve())}))
        else:
            tm = _matcher_config(cfg, arm, data["matcher_train"], gen_sets.get(arm), budget["arms"][arm]["ratios"], mdir,
                                 data["val"])
        s = stage(f"train-matcher ({arm})", mdir, tm, train_matcher.run,
                  lambda d=mdir: (d / "last" / "state.json").is_file(), legacy="accept")
        validated = data["val"] is not None
        matchers[arm] = mdir / ("best" if validated else "last")
        train_summaries[arm] = {k: s.get(k) for k in ("epochs_done", "train_images", "classes", "seconds")}
        hist = s.get("history") or []
        train_summaries[arm]["final_loss"] = hist[-1]["loss"] if hist else None
        state = mdir / "last" / "state.json"  # the optimizer steps actually taken
        doc = json.loads(state.read_text()) if state.is_file() else {}
        steps = train_summaries[arm]["optimizer_steps"] = doc.get("state", doc).get("step")  # hashed or older layout
        train_summaries[arm].update(_selection(s, hist, steps, validated))
        if arm == "detour":
            train_summaries[arm]["pretrain_steps"] = train_summaries["real"]["optimizer_steps"]
            train_summaries[arm]["pretrained_from"] = str(start.relative_to(out))
        elif arm != "real" and cfg.matcher.synthetic_use == "pretrain":
            doc = json.loads((pdir / "last" / "state.json").read_text())
            train_summaries[arm]["pretrain_steps"] = doc.get("state", doc).get("step")
            train_summaries[arm]["pretrained_from"] = str(start.relative_to(out))

    # 4b. identity fidelity of each generated set, judged by the real-only matcher (never trained on synthetic data)
    judges: dict[str, Any] = {}
    if judged:
        for arm, man in gen_sets.items():
            jdir = man.parent / "judge"
            jc = report_dataset.Config(path=man.parent, out=jdir, judge=matchers["real"].resolve(),
                                       judge_real=ComponentSpec.model_validate(data["test"]),
                                       judge_distractors=cfg.distractors, judge_identities=cfg.judge_identities,
                                       judge_grey=cfg.evaluation.grayscale, sheet_identities=0)
            stage(f"judge ({arm})", jdir, jc, report_dataset.run)
            judges[arm] = json.loads((jdir / "report.json").read_text())["judge"]

    # 5. evaluation: baselines first (the first one is each arm's report.md comparison)
    probes = cfg.evaluation.protocols
    reports: dict[str, dict[str, Any]] = {}
    per_probe: dict[str, dict[str, Any]] = {}
    first: dict[str, Path] = {}
    for name in cfg.evaluation.baselines:
        for p in probes:
            edir = out / f"05-evaluate-{name}-{p}"
            ec = _evaluate_config(cfg, data["test"], _eval_spec(cfg, name, flip=name in cfg.evaluation.flip_baselines),
                                  p, None, edir)
            stage(f"evaluate ({name}, {p})", edir, ec, evaluate.run, legacy="rerun")
            reports.setdefault(name, {})[p] = json.loads((edir / "report.json").read_text())
            per_probe.setdefault(name, {})[p] = evaluate.read_probes(edir)
            first.setdefault(p, edir / "report.json")
    for arm in cfg.arms:
        for p in probes:
            edir = out / f"05-evaluate-{arm}-{p}"
            bb = _eval_spec(cfg, "matcher", path=str(matchers[arm].resolve()))
            ec = _evaluate_config(cfg, data["test"], bb, p, first.get(p), edir)
            stage(f"evaluate ({arm}, {p})", edir, ec, evaluate.run, legacy="rerun")
            reports.setdefault(arm, {})[p] = json.loads((edir / "report.json").read_text())
            per_probe.setdefault(arm, {})[p] = evaluate.read_probes(edir)
    # what each generated set teaches alone: its pretrain checkpoint, before any real sketch
    alone: dict[str, dict[str, Any]] = {}
    alone_probes: dict[str, dict[str, Any]] = {}
    for arm, start in pretrained.items():
        for p in cfg.evaluation.synthetic_only:
            edir = out / f"05-evaluate-{arm}-pretrain-{p}"
            bb = _eval_spec(cfg, "matcher", path=str(start.resolve()))
            ec = _evaluate_config(cfg, data["test"], bb, p, first.get(p), edir)
            stage(f"evaluate ({arm} pretrain only, {p})", edir, ec, evaluate.run)
            alone.setdefault(arm, {})[p] = json.loads((edir / "report.json").read_text())
            alone_probes.setdefault(arm, {})[p] = evaluate.read_probes(edir)

    # 6. table, plot, sentences
    rows = {name: {p: _metrics(r) for p, r in by.items()} for name, by in reports.items()}
    ev = cfg.evaluation
    diffs = _differences(cfg.arms, ev.baselines, per_probe, ev.bootstrap, ev.bootstrap_seed) if ev.bootstrap else {}
    verdicts = _verdicts(cfg.arms, ev.baselines, reports, diffs)
    _plot(reports, out / "cmc.png")
    results = {
        "out": str(out), "arms": cfg.arms, "probes": probes, "data": data, "budget": budget,
        "generators": gen_summaries, "matchers": train_summaries, "metrics": rows,
        "intervals": {name: {p: _intervals(r) for p, r in by.items()} for name, by in reports.items()},
        "differences": diffs, "verdicts": verdicts,
        "judges": judges,
        "synthetic_only": _alone(alone, alone_probes, per_probe, [n for n in ("real", *ev.baselines) if n in per_probe],
                                 ev.bootstrap, ev.bootstrap_seed),
        "counts": {p: {k: reports[n][p]["counts"].get(k) for k in ("probes_used", "gallery_identities")}
                   for n in list(reports)[:1] for p in probes},
        "skipped_stages": skipped, "seconds": round(time.time() - t0, 1),
        "files": {"report": "report.md", "cmc": "cmc.png"},
    }
    write_json(out / "results.json", results)
    (out / "report.md").write_text(_report(cfg, results))
    say(f"report: {out / 'report.md'}")
    return results
