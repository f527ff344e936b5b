"""Align a dataset: ``OUT/<identity>/<modality>_<k>.png`` + ``manifest.jsonl``.

Every image of the input dataset goes through the aligner (by default
``center``; use ``dlib`` for photos that are not pre-aligned). ``k`` counts the
images of one identity and modality in dataset order. The manifest (readable by
the ``manifest`` dataset) records, per crop, its source, status ("ok" or
"fallback"), landmarks, face box, score and transform. Images the aligner skips
(``on_no_face=skip``) are listed in ``skipped.jsonl``; unreadable files are
listed in ``summary.json`` (with ``on_error=skip``).

The run is resumable: crops already written and recorded are kept, so a killed
run continues where it stopped. Writes are atomic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..config import C4SModel, ComponentSpec


class Config(C4SModel):
    input: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="synthfaces", options={}),
        description="Dataset to align (any dataset plugin).",
    )
    aligner: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="center"), description="Aligner (center, dlib, ...)."
    )
    out: Path = Field(Path("c4s-out/aligned"), description="Output folder.")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="An unreadable image: stop, or leave it out and list it in the summary."
    )
    batch_size: int = Field(16, ge=1, le=4096, description="Images per aligner call (and manifest append).")


def _safe(part: str) -> str:
    part = str(part).replace("/", "_").replace("\\", "_").strip()
    return part if part not in ("", ".", "..") else f"_{part}_"


def run(config: Config, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    from ..align import summarize
    from ..data.io import array_hash, save_image
    from ..data.manifest import append_manifest, read_manifest
    from ..errors import ImageReadError
    from ..plugins import get_registries
    from .common import prepare_out, save_run_config, write_json

    out = prepare_out(config.out)
    regs = get_registries()
    ds = regs.dataset.build(config.input)
    aligner = regs.aligner.build(config.aligner)
    save_run_config(out, "align", config, {"aligner": aligner.fingerprint()})
    manifest, skipped_path = out / "manifest.jsonl", out / "skipped.jsonl"
    done = {r["path"] for r in read_manifest(manifest)} if manifest.exists() else set()
    done_skipped = {r["path"] for r in read_manifest(skipped_path)} if skipped_path.exists() else set()

    refs = getattr(ds, "refs", None)
    counter: dict[tuple[str, str], int] = {}
    kept, unreadable, results = 0, [], []
    batch: list[tuple[str, Any]] = []  # (rel path, sample)

    def flush():
        if not batch:
            return
        res = aligner.align([s.image for _, s in batch], [s.path or rel for rel, s in batch])
        records, skipped = [], []
        for (rel, s), r in zip(batch, res, strict=True):
            rec = {"path": rel, "identity": s.identity, "modality": s.modality, "style": s.style,
                   "source": s.path, "source_sha": array_hash(s.image), **r.to_record()}
            if r.image is None:
                skipped.append(rec)
            else:
                save_image(out / rel, r.image)
                records.append(rec)
        append_manifest(manifest, records)
        if skipped:
            append_manifest(skipped_path, skipped)
        results.extend(res)
        batch.clear()

    for i in tqdm(range(len(ds)), desc="align", disable=not progress, unit="img"):
        if refs is not None:
            ident, modality = refs[i].identity, refs[i].modality
        else:
            s = ds[i]
            ident, modality = s.identity, s.modality
        k = counter.get((ident, modality), 0)
        counter[(ident, modality)] = k + 1
        rel = f"{_safe(ident)}/{modality}_{k}.png"
        if (rel in done and (out / rel).is_file()) or rel in done_skipped:
            kept += 1
            continue
        try:
            sample = ds[i] if refs is not None else s
        except ImageReadError as err:
            if config.on_error == "raise":
                raise
            unreadable.append({"path": refs[i].path if refs is not None else str(i), "reason": str(err)})
            continue
        batch.append((rel, sample))
        if len(batch) >= config.batch_size:
            flush()
    flush()

    counts = summarize(results)
    summary = {
        "out": str(out),
        "aligner": config.aligner.name,
        "images": len(ds),
        "written": counts["ok"] + counts["fallback"],
        "kept": kept,
        **counts,
        "unreadable": len(unreadable),
        "unreadable_files": unreadable,
    }
    write_json(out / "summary.json", summary)
    return summary
