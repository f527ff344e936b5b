"""Render a dataset (by default the embedded ``synthfaces``) to an identity folder.

Output: ``OUT/IDENTITY/photo_K.png`` and ``OUT/IDENTITY/STYLE_K.png`` for
sketches, ``OUT/manifest.jsonl`` (readable by the ``manifest`` dataset),
``OUT/contact_sheet.png``, ``OUT/config.yaml``. Files already present are kept,
so a killed run resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..config import C4SModel, ComponentSpec


class Config(C4SModel):
    dataset: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="synthfaces", options={"num_identities": 50}),
        description="Dataset to render (any dataset plugin).",
    )
    out: Path = Field(Path("c4s-out/synth"), description="Output folder.")
    sheet_identities: int = Field(8, ge=0, le=64, description="Identities in the contact sheet (0: none).")


def run(config: Config, progress: bool = True) -> dict:
    from tqdm import tqdm

    from ..data.io import array_hash, grid, save_image
    from ..data.manifest import write_manifest
    from ..plugins import get_registries
    from .common import prepare_out, remove_partial_files, save_run_config

    out = prepare_out(config.out)
    removed = remove_partial_files(out)
    ds = get_registries().dataset.build(config.dataset)
    save_run_config(out, "synth", config)
    counts: dict[tuple[str, str], int] = {}
    records, written, kept = [], 0, 0
    sheet: dict[str, list] = {}
    for i in tqdm(range(len(ds)), desc="synth", disable=not progress, unit="img"):
        s = ds[i]
        tag = "photo" if s.modality == "photo" else (s.style or "sketch")
        k = counts.get((s.identity, tag), 0)
        counts[(s.identity, tag)] = k + 1
        rel = Path(s.identity) / f"{tag}_{k}.png"
        if (out / rel).exists():
            kept += 1
        else:
            save_image(out / rel, s.image)
            written += 1
        records.append({"path": rel.as_posix(), "identity": s.identity, "modality": s.modality,
                        "style": s.style, "sha": array_hash(s.image)})
        if len(sheet) < config.sheet_identities or s.identity in sheet:
            sheet.setdefault(s.identity, []).append(s.image)
    write_manifest(out / "manifest.jsonl", records)
    if sheet:
        save_image(out / "contact_sheet.png", grid(list(sheet.values())))
    return {"out": str(out), "images": len(records), "written": written, "kept": kept,
            "partial_files_removed": removed, "identities": len({r["identity"] for r in records})}
