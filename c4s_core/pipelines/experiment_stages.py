"""The experiment's stages: each one's config (train-generator, generate,
train-matcher, evaluate), built from the experiment's ``Config``; the hash that
tells a finished stage from a changed one; the same-budget plan of the matchers."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ComponentSpec
from .experiment_protocols import _PROTOCOL

if TYPE_CHECKING:
    from .experiment import Config


def _generator_config(cfg: Config, arm: str, out: Path, train_spec: dict | None = None):
    """train-generator's config: the generator learns from the real training pairs
    only (``train_spec``: the split's train manifest), never from the test split."""
    from .train_generator import Config as TG

    return TG.model_validate({
        **cfg.generator_options, "dataset": train_spec or cfg.train.model_dump(), "generator": getattr(cfg, arm).model_dump(),
        "steps": cfg.diffusion_steps if arm == "diffusion" else cfg.gan_steps, "aligner": cfg.generator_aligner,
        "seed": cfg.seed, "out": out,
    })


def _generate_config(cfg: Config, arm: str, checkpoint: Path | None, out: Path):
    from .generate import Config as G

    csize = cfg.generator_options.get("condition_size", 112)
    return G(
        checkpoint=checkpoint, generator=cfg.procedural if arm == "procedural" else ComponentSpec(name="procedural"),
        dataset=cfg.new_identities, num_identities=cfg.new_limit,
        styles=cfg.procedural_styles or cfg.styles if arm == "procedural" else cfg.styles,
        num_per_style=cfg.num_per_style, styles_per_identity=cfg.styles_per_identity, sampler=cfg.sampler, guidance=cfg.guidance, seed=cfg.seed,
        batch_size=cfg.generate_batch_size, aligner=cfg.generator_aligner, condition_size=csize,
        similarity=False, out=out,
    )


def _stage_hash(stage_cfg, out: Path | None = None) -> str:
    """Hash of a stage's settings. Paths inside the experiment folder ``out`` are
    hashed relative to it, so a copied or moved experiment resumes there: copy a
    finished one, change the matcher settings, and only the matcher and
    evaluation stages run again. ``out=None``: the raw settings (stage.json
    files written before relative hashing; upgraded when they match)."""
    import hashlib

    data = json.loads(stage_cfg.model_dump_json(exclude={"resume", "stop_after"}))
    text = json.dumps(data, sort_keys=True, default=str)
    if out is not None:  # the absolute form first: the relative one is a substring of it
        for root in dict.fromkeys((str(out.resolve()), str(out))):
            text = re.sub(re.escape(root) + r"(?=[/\\\"]|$)", "<out>", text)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- the budget --------------------------------------------------------------------------


def _budget(cfg: Config, n_real: int, n_synth: dict[str, int]) -> dict[str, Any]:
    """Per arm, the train-matcher ratio of each source, so that every arm sees
    ``images_per_epoch`` images per epoch (hence the same optimizer steps)."""
    from ..errors import ConfigError

    ipe = cfg.matcher.images_per_epoch or max([n_real] + [n_real + n for n in n_synth.values()])
    plan: dict[str, Any] = {}
    for arm in cfg.arms:
        if arm == "real":
            real = ipe
        else:
            share = cfg.matcher.real_share if cfg.matcher.real_share is not None else n_real / (n_real + n_synth[arm])
            real = int(round(share * ipe))
        syn = ipe - real
        ratios = [real / n_real] + ([syn / n_synth[arm]] if arm != "real" else [])
        if arm != "real" and (real < 1 or syn < 1):
            raise ConfigError(f"arm {arm!r}: images_per_epoch={ipe} with real_share leaves {real} real and {syn} "
                              "synthetic images per epoch; raise images_per_epoch or change real_share")
        if max(ratios) > 100:
            raise ConfigError(f"arm {arm!r}: images_per_epoch={ipe} repeats a source {max(ratios):.1f} times per epoch "
                              "(train-matcher allows 100); lower matcher.images_per_epoch")
        plan[arm] = {"real_images": real, "synthetic_images": syn, "ratios": ratios}
    steps = cfg.matcher.epochs * math.ceil(ipe / cfg.matcher.batch_size)
    return {"images_per_epoch": ipe, "steps": steps, "arms": plan}


def _matcher_config(cfg: Config, arm: str, train_spec: dict, gen_manifest: Path | None, ratios: list[float], out: Path):
    from .train_matcher import Config as TM

    data = [{"dataset": train_spec, "ratio": ratios[0]}]
    if gen_manifest is not None:
        data.append({"dataset": {"name": "manifest", "options": {"path": str(gen_manifest.resolve())}},
                     "ratio": ratios[1]})
    m = cfg.matcher
    return TM.model_validate({
        **m.options, "data": data, "aligner": cfg.aligner, "backbone": m.backbone, "head": m.head,
        "epochs": m.epochs, "batch_size": m.batch_size, "lr": m.lr, "device": m.device, "threads": m.threads,
        "val_fraction": 0.0, "seed": cfg.seed, "out": out,
    })


def _evaluate_config(cfg: Config, test_spec: dict, backbone: ComponentSpec, protocol: str,
                     baseline: Path | None, out: Path):
    from .evaluate import Config as E

    ev = cfg.evaluation
    perturbed, enlarged = _PROTOCOL[protocol]
    return E(probes=test_spec, gallery=test_spec, distractors=cfg.distractors if enlarged else None,
             backbone=backbone, aligner=cfg.aligner, perturb=ev.perturb if perturbed else None,
             grayscale=ev.grayscale, batch_size=ev.batch_size, subset_pattern=ev.subset_pattern, worst=ev.worst,
             baseline=baseline, out=out)

