"""The experiment's stages: each one's config (train-generator, generate,
train-matcher, evaluate), built from the experiment's ``Config``; the hash that
tells a finished stage from a changed one; the same-budget plan of the matchers;
the validation identities carved out of the training split."""

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


def _trained_generator(folder: Path, arm: str, test_spec: dict) -> dict[str, Any]:
    """A generator trained outside this experiment (``trained_generators``): its
    weights folder, the condition size it learnt at, and proof that none of the
    people it learnt from is in this experiment's test split. ``folder``: a
    train-generator out folder, its ``generator/`` or one of its
    ``checkpoints/step_N/``; the training data is read from the run's run.json."""
    from ..errors import ConfigError, DataError
    from ..plugins import get_registries
    from .experiment_data import _identities

    folder = Path(folder)
    if (folder / "run.json").is_file():
        run_dir, weights = folder, folder / "generator"
        if not (weights / "generator.json").is_file():
            raise ConfigError(f"trained_generators.{arm}: {folder} has no finished generator/ (training stopped "
                              "early?); name one of its checkpoints/step_N folders instead")
    elif (folder / "generator.json").is_file() and (folder.parent / "run.json").is_file():  # its generator/
        run_dir, weights = folder.parent, folder
    elif (folder / "generator.json").is_file() and (folder.parent.parent / "run.json").is_file():  # a checkpoint
        run_dir, weights = folder.parent.parent, folder
    else:
        raise ConfigError(f"trained_generators.{arm}: {folder} is neither a train-generator out folder (run.json + "
                          "generator/) nor one of its checkpoints/step_N folders")
    try:
        run = json.loads((run_dir / "run.json").read_text())
        tcfg = run["config"]
        dataset = ComponentSpec.model_validate(tcfg["dataset"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"trained_generators.{arm}: {run_dir / 'run.json'} does not record the training dataset "
                        f"({err}); the experiment cannot check it never saw a test identity") from None
    if run.get("pipeline") != "train-generator":
        raise DataError(f"trained_generators.{arm}: {run_dir / 'run.json'} is from {run.get('pipeline')!r}, "
                        "not train-generator")
    regs = get_registries()
    learnt = _identities(regs.dataset.build(dataset))
    tested = _identities(regs.dataset.build(ComponentSpec.model_validate(test_spec)))
    leak = sorted(learnt & tested)
    if leak:
        raise DataError(f"trained_generators.{arm}: {weights} learnt from {len(leak)} people of this experiment's "
                        f"test split (e.g. {', '.join(leak[:5])}): its sketches would leak the test; train it on the "
                        "experiment's 01-data/train.jsonl instead")
    return {"weights": weights, "condition_size": int(tcfg.get("condition_size", 112)),
            "summary": {"trained": str(weights), "steps": tcfg.get("steps"), "learnt_identities": len(learnt),
                        "test_identities_checked": len(tested), "shared_with_test": 0}}


def _generate_config(cfg: Config, arm: str, checkpoint: Path | None, out: Path, condition_size: int | None = None):
    from .generate import Config as G

    csize = condition_size or cfg.generator_options.get("condition_size", 112)
    return G(
        checkpoint=checkpoint, generator=cfg.procedural if arm == "procedural" else ComponentSpec(name="procedural"),
        dataset=cfg.new_identities, num_identities=cfg.new_limit,
        styles=cfg.procedural_styles or cfg.styles if arm == "procedural" else cfg.styles,
        num_per_style=cfg.num_per_style, styles_per_identity=cfg.styles_per_identity, sampler=cfg.sampler, guidance=cfg.guidance,
        guidance_mode=cfg.guidance_mode if arm == "diffusion" else "compositional", seed=cfg.seed,
        strength=cfg.strength if arm == "diffusion" else 1.0,
        start_style=cfg.start_style if arm == "diffusion" else None, batch_size=cfg.generate_batch_size, aligner=cfg.generator_aligner, condition_size=csize,
        similarity=False, out=out,
    )


# stage-config fields added after experiments were run, and the values that mean
# "as before" (None: any value; the stage is rerun, see experiment.run's `legacy`)
_ADDED_FIELDS: dict[str, Any] = {"val_data": [], "bootstrap": None, "bootstrap_seed": None, "strength": 1.0,
                                 "start_style": None, "pair_negatives": 0, "guidance_mode": "compositional",
                                 "negatives_pool": 1}


def _stage_hash(stage_cfg, out: Path | None = None, legacy: bool = False) -> str:
    """Hash of a stage's settings. Paths inside the experiment folder ``out`` are
    hashed relative to it, so a copied or moved experiment resumes there: copy a
    finished one, change the matcher settings, and only the matcher and
    evaluation stages run again. ``out=None``: the raw settings (stage.json
    files written before relative hashing; upgraded when they match).
    ``legacy``: without the fields added since (``_ADDED_FIELDS``), the hash a
    stage.json written before them holds."""
    import hashlib

    data = json.loads(stage_cfg.model_dump_json(exclude={"resume", "stop_after"}))
    if legacy:
        data = {k: v for k, v in data.items()
                if not (k in _ADDED_FIELDS and (_ADDED_FIELDS[k] is None or v == _ADDED_FIELDS[k]))}
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
        if arm not in n_synth:  # no generated set (real, detour): the real data alone
            real = ipe
        else:
            share = cfg.matcher.real_share if cfg.matcher.real_share is not None else n_real / (n_real + n_synth[arm])
            real = int(round(share * ipe))
        syn = ipe - real
        ratios = [real / n_real] + ([syn / n_synth[arm]] if arm in n_synth else [])
        if arm in n_synth and (real < 1 or syn < 1):
            raise ConfigError(f"arm {arm!r}: images_per_epoch={ipe} with real_share leaves {real} real and {syn} "
                              "synthetic images per epoch; raise images_per_epoch or change real_share")
        if max(ratios) > 100:
            raise ConfigError(f"arm {arm!r}: images_per_epoch={ipe} repeats a source {max(ratios):.1f} times per epoch "
                              "(train-matcher allows 100); lower matcher.images_per_epoch")
        plan[arm] = {"real_images": real, "synthetic_images": syn, "ratios": ratios}
    steps = cfg.matcher.epochs * math.ceil(ipe / cfg.matcher.batch_size)
    return {"images_per_epoch": ipe, "steps": steps, "arms": plan}


def _matcher_config(cfg: Config, arm: str, train_spec: dict | None, gen_manifest: Path | None, ratios: list[float],
                    out: Path, val_spec: dict | None = None, backbone: ComponentSpec | None = None):
    """train-matcher's config: the real data (``train_spec``, none: left out) then the generated
    set, one ratio each in that order; ``val_spec``: the validation identities (never trained on)
    that pick best/; ``backbone``: instead of the matcher's (a matcher folder to fine-tune)."""
    from .train_matcher import Config as TM

    data = [] if train_spec is None else [{"dataset": train_spec}]
    if gen_manifest is not None:
        data.append({"dataset": {"name": "manifest", "options": {"path": str(gen_manifest.resolve())}}})
    for d, r in zip(data, ratios, strict=True):
        d["ratio"] = r
    m = cfg.matcher
    if m.negatives:  # strangers' photos: negatives only (a photo-only source gives no pairs)
        data.append({"dataset": cfg.new_identities, "modality": "photo"})
    return TM.model_validate({
        **m.options, "data": data, "pair_negatives": m.negatives, "aligner": cfg.aligner, "backbone": backbone or m.backbone, "head": m.head,
        "epochs": m.epochs, "batch_size": m.batch_size, "lr": m.lr, "device": m.device, "threads": m.threads,
        "val_fraction": 0.0, "val_data": [{"dataset": val_spec}] if val_spec else [],
        "seed": cfg.seed if m.seed is None else m.seed, "out": out,
    })


def _eval_spec(cfg: Config, name: str, flip: bool = True, **options) -> ComponentSpec:
    """The backbone an evaluation stage embeds with; ``evaluation.flip_fusion`` where ``flip``
    and the backbone has the option."""
    from ..plugins import get_registries

    if (cfg.evaluation.flip_fusion and flip
            and "flip_fusion" in get_registries().backbone.get(name).config_cls.model_fields):
        options["flip_fusion"] = True
    return ComponentSpec(name=name, options=options)


def _evaluate_config(cfg: Config, test_spec: dict, backbone: ComponentSpec, protocol: str,
                     baseline: Path | None, out: Path):
    from .evaluate import Config as E

    ev = cfg.evaluation
    perturbed, enlarged = _PROTOCOL[protocol]
    return E(probes=test_spec, gallery=test_spec, distractors=cfg.distractors if enlarged else None,
             backbone=backbone, aligner=cfg.aligner, perturb=ev.perturb if perturbed else None,
             grayscale=ev.grayscale, batch_size=ev.batch_size, subset_pattern=ev.subset_pattern, worst=ev.worst,
             bootstrap=ev.bootstrap, bootstrap_seed=ev.bootstrap_seed, baseline=baseline, out=out)


# -- validation identities ---------------------------------------------------------------


def _validation_split(cfg: Config, data: dict[str, Any], folder: Path, say) -> dict[str, Any]:
    """Carve ``matcher.val_fraction`` of the training identities (with a photo and
    a sketch; seeded) out of the training split for checkpoint selection:
    ``folder/val.jsonl`` (never trained on by any matcher) and
    ``folder/matcher-train.jsonl`` (the rest, what every matcher trains on).
    The test split is never touched. Adds ``matcher_train``, ``val`` and their
    counts to ``data``; without validation both point at the training split."""
    from ..plugins import get_registries
    from .experiment_data import _hold_out_identities, _materialize

    f = cfg.matcher.val_fraction
    if not f:
        return {**data, "matcher_train": data["train"], "val": None, "matcher_train_images": data["train_images"]}
    regs = get_registries()
    train_ds = regs.dataset.build(ComponentSpec.model_validate(data["train"]))
    val_ids, fit_ids, n_both = _hold_out_identities(
        train_ds, f, cfg.seed, 0x7A11D, "the training split", f"matcher.val_fraction={f} for validation",
        "lower it or set it to 0")
    n_fit = _materialize(train_ds, fit_ids, folder / "matcher-train", folder / "matcher-train.jsonl")
    n_val_images = _materialize(train_ds, val_ids, folder / "val", folder / "val.jsonl")
    say(f"held out {len(val_ids)} of {n_both} training identities to pick each matcher's best epoch")
    spec = lambda name: ComponentSpec(name="manifest", options={"path": str((folder / name).resolve())}).model_dump()  # noqa: E731
    return {**data, "matcher_train": spec("matcher-train.jsonl"), "val": spec("val.jsonl"),
            "matcher_train_images": n_fit,
            "validation": {"val_fraction": f, "identities": len(val_ids), "images": n_val_images,
                           "matcher_train_identities": len(fit_ids)},
            "identities": {**data["identities"], "val": len(val_ids)}}


def _real_subset(cfg: Config, data: dict[str, Any], folder: Path, say) -> dict[str, Any]:
    """Keep ``matcher.real_identities`` of the matchers' real training people (with
    a photo and a sketch; seeded by the experiment's seed, so every arm and every
    matcher seed gets the same people): ``folder/matcher-train-N.jsonl``. Nothing
    else changes; without the option ``data`` is returned as is."""
    from ..errors import DataError
    from ..plugins import get_registries
    from .experiment_data import _draw, _identities, _materialize

    n = cfg.matcher.real_identities
    if n is None:
        return data
    ds = get_registries().dataset.build(ComponentSpec.model_validate(data["matcher_train"]))
    both = sorted(_identities(ds, "photo") & _identities(ds, "sketch"))
    if n > len(both):
        raise DataError(f"matcher.real_identities={n}: the matchers' training split has only {len(both)} people "
                        "with a photo and a sketch; lower it")
    kept = _draw(both, n, cfg.seed, 0x5CA4CE)
    name = f"matcher-train-{n}"
    images = _materialize(ds, kept, folder / name, folder / f"{name}.jsonl")
    say(f"the matchers train on {n} of the {len(both)} real training people ({images} images)")
    spec = ComponentSpec(name="manifest", options={"path": str((folder / f"{name}.jsonl").resolve())}).model_dump()
    return {**data, "matcher_train": spec, "matcher_train_images": images,
            "real_subset": {"identities": n, "of": len(both), "images": images},
            "identities": {**data["identities"], "matcher_train": n}}
