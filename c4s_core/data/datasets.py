"""Dataset contract and the folder layouts c4s reads.

A dataset is a sequence of :class:`Sample`. Folder datasets index file names at
construction (cheap, and mismatches are reported at once) and decode images on
access, so one corrupt file is reported by name when it is read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..config import ComponentConfig, ComponentSpec
from ..errors import DataError, ImageReadError
from .io import list_images, load_image

Modality = Literal["photo", "sketch"]


@dataclass
class Sample:
    image: np.ndarray  # uint8 H x W x 3, RGB
    identity: str
    modality: Modality
    style: str | None = None
    path: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SampleRef:
    """A sample's label without its pixels."""

    path: str
    identity: str
    modality: Modality
    style: str | None = None


class Dataset:
    """Base: subclasses fill ``self.refs`` or override ``__getitem__``."""

    name = "base"
    refs: list[SampleRef]

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> Sample:
        r = self.refs[i]
        return Sample(load_image(r.path), r.identity, r.modality, r.style, r.path)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def identities(self) -> list[str]:
        return sorted({r.identity for r in self.refs})


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def summary(self) -> str:
        s = f"{self.loaded} images loaded"
        if self.skipped:
            s += f", {len(self.skipped)} skipped (unreadable)"
        return s


def load_samples(
    ds: Dataset, on_error: Literal["raise", "skip"] = "raise", indices: Sequence[int] | None = None
) -> tuple[list[Sample], LoadReport]:
    """Decode samples; with ``on_error="skip"``, unreadable files are reported
    in the :class:`LoadReport` instead of stopping the run."""
    out, rep = [], LoadReport()
    for i in range(len(ds)) if indices is None else indices:
        try:
            out.append(ds[i])
            rep.loaded += 1
        except ImageReadError as err:
            if on_error == "raise":
                raise
            refs = getattr(ds, "refs", None)
            rep.skipped.append((refs[i].path if refs else str(i), str(err)))
    return out, rep


class PairedFolderConfig(ComponentConfig):
    root: Path = Field(description="Folder holding photos/ and sketches/ with matching file stems.")
    photos: str = Field("photos", description="Sub-folder of photos.")
    sketches: str = Field("sketches", description="Sub-folder of sketches.")
    on_unpaired: Literal["error", "skip"] = Field(
        "error", description="A photo without a sketch (or the reverse): stop, or leave it out."
    )
    style: str | None = Field(None, description="Style label given to every sketch.")
    styles_csv: Path | None = Field(
        None, description="CSV with a `name` column (file stem) and a style column: each sketch's own style label "
        "(FS2K's pairs.csv). Relative paths are under root.")
    style_column: str = Field("sketch_style", description="Column of styles_csv holding the style.")
    style_prefix: str = Field("", description="Prefix of the labels read from styles_csv (FS2K: 'fs2k_' gives fs2k_0...).")
    exclude: str | None = Field(
        None, description="Regular expression: leave out pairs whose name matches (FS2K: '^fs2k_s2_', 98 pairs of "
        "only 8 people, which would break one-identity-per-name).")


def _csv_styles(config: PairedFolderConfig) -> dict[str, str]:
    import csv

    path = config.styles_csv if config.styles_csv.is_absolute() else config.root / config.styles_csv
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise DataError(f"{path}: cannot read styles_csv ({err.strerror or err})") from None
    for col in ("name", config.style_column):
        if rows and col not in rows[0]:
            raise DataError(f"{path}: no column {col!r} (columns: {', '.join(rows[0])})")
    return {r["name"]: config.style_prefix + r[config.style_column].strip() for r in rows}


class PairedFolderDataset(Dataset):
    """Photo/sketch pairs: ``ROOT/photos/NAME.*`` with ``ROOT/sketches/NAME.*``; one identity per NAME."""

    name = "paired_folder"
    Config = PairedFolderConfig

    def __init__(self, config: PairedFolderConfig):
        self.config = config
        pdir, sdir = config.root / config.photos, config.root / config.sketches
        for d in (pdir, sdir):
            if not d.is_dir():
                raise DataError(f"{d}: folder not found (paired_folder expects {config.root}/{{{config.photos},{config.sketches}}}/)")
        photos = _by_stem(list_images(pdir), pdir)
        sketches = _by_stem(list_images(sdir), sdir)
        if not photos and not sketches:
            raise DataError(f"{config.root}: no images in {pdir} or {sdir}")
        only_p, only_s = sorted(set(photos) - set(sketches)), sorted(set(sketches) - set(photos))
        self.unpaired = [str(photos[n]) for n in only_p] + [str(sketches[n]) for n in only_s]
        if self.unpaired and config.on_unpaired == "error":
            raise DataError(
                f"{config.root}: {len(only_p)} photo(s) without a sketch and {len(only_s)} sketch(es) "
                f"without a photo, e.g. {_examples(only_p, only_s)}. Names must match "
                "(set on_unpaired=skip to leave them out)"
            )
        names = sorted(set(photos) & set(sketches))
        if config.exclude:
            import re

            names = [n for n in names if not re.search(config.exclude, n)]
        styles = _csv_styles(config) if config.styles_csv else {}
        if styles:
            missing = [n for n in names if n not in styles]
            if missing:
                raise DataError(f"{config.styles_csv}: no row for {len(missing)} pair(s), e.g. {', '.join(missing[:3])}")
        self.refs = []
        for n in names:
            self.refs.append(SampleRef(str(photos[n]), n, "photo"))
            self.refs.append(SampleRef(str(sketches[n]), n, "sketch", styles.get(n, config.style)))


class IdentityFolderConfig(ComponentConfig):
    root: Path = Field(description="Folder of identity sub-folders: ROOT/IDENTITY/*.png.")
    modality: Literal["photo", "sketch"] = Field("photo", description="Modality of every image.")
    style: str | None = Field(None, description="Style label (sketches).")
    min_images: int = Field(1, ge=1, description="Leave out identities with fewer images.")


class IdentityFolderDataset(Dataset):
    """One folder per identity: ``ROOT/IDENTITY/*.{png,jpg,...}``."""

    name = "identity_folder"
    Config = IdentityFolderConfig

    def __init__(self, config: IdentityFolderConfig):
        self.config = config
        if not config.root.is_dir():
            raise DataError(f"{config.root}: folder not found")
        self.refs = []
        for d in sorted(p for p in config.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = list_images(d)
            if len(files) >= config.min_images:
                self.refs += [SampleRef(str(f), d.name, config.modality, config.style) for f in files]
        if not self.refs:
            raise DataError(f"{config.root}: no identity folders with images (expected ROOT/IDENTITY/*.png)")


class ImageFolderConfig(ComponentConfig):
    root: Path = Field(description="Flat folder of images; each file is one identity (its stem).")
    modality: Literal["photo", "sketch"] = Field("photo", description="Modality of every image.")
    limit: int | None = Field(None, ge=1, description="Use only the first N files (sorted by name).")


class ImageFolderDataset(Dataset):
    """A flat folder of images, one identity per file: galleries and distractors."""

    name = "image_folder"
    Config = ImageFolderConfig

    def __init__(self, config: ImageFolderConfig):
        self.config = config
        files = list_images(config.root)
        if config.limit:
            files = files[: config.limit]
        if not files:
            raise DataError(f"{config.root}: no images")
        self.refs = [SampleRef(str(f), f.stem, config.modality) for f in files]


class ConcatConfig(ComponentConfig):
    datasets: list[ComponentSpec] = Field(min_length=1, description="Datasets to pool, in order (e.g. CUFS and FS2K).")


class ConcatDataset(Dataset):
    """Several datasets as one; identity names must not repeat across them."""

    name = "concat"
    Config = ConcatConfig

    def __init__(self, config: ConcatConfig):
        from ..plugins import get_registries

        self.config = config
        reg = get_registries().dataset
        self.parts = [reg.build(spec) for spec in config.datasets]
        self.refs, self._starts, seen = [], [], {}
        for k, (spec, ds) in enumerate(zip(config.datasets, self.parts, strict=True)):
            refs = getattr(ds, "refs", None)
            ids = {r.identity for r in refs} if refs is not None else set(ds.identities())
            for other, names in seen.items():
                if ids & names:
                    ex = ", ".join(sorted(ids & names)[:3])
                    raise DataError(f"concat: datasets {other} and {k} ({spec.name}) share identity names, e.g. {ex}")
            seen[k] = ids
            self._starts.append(len(self.refs))
            self.refs += refs if refs is not None else [SampleRef("", s.identity, s.modality, s.style) for s in ds]

    def __getitem__(self, i: int) -> Sample:
        if i < 0:
            i += len(self.refs)
        if not 0 <= i < len(self.refs):
            raise IndexError(i)
        k = max(j for j, start in enumerate(self._starts) if start <= i)
        return self.parts[k][i - self._starts[k]]


def _by_stem(files: list[Path], folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise DataError(f"{folder}: two files share the name {f.stem!r}: {out[f.stem].name}, {f.name}")
        out[f.stem] = f
    return out


def _examples(only_p: list[str], only_s: list[str]) -> str:
    ex = [f"photos/{n}" for n in only_p[:3]] + [f"sketches/{n}" for n in only_s[:3]]
    return ", ".join(ex)


class ManifestConfig(ComponentConfig):
    path: Path = Field(description="manifest.jsonl; each record has path (relative to its folder), identity, modality, style.")
    modality: Literal["photo", "sketch"] | None = Field(None, description="Keep only this modality.")


class ManifestDataset(Dataset):
    """Images listed in a manifest.jsonl (generated sets, aligned crops)."""

    name = "manifest"
    Config = ManifestConfig

    def __init__(self, config: ManifestConfig):
        from .manifest import read_manifest

        self.config = config
        base = config.path.parent
        self.refs = []
        for i, rec in enumerate(read_manifest(config.path), 1):
            missing = [k for k in ("path", "identity") if k not in rec]
            if missing:
                raise DataError(f"{config.path}: record {i} lacks {', '.join(missing)}")
            mod = rec.get("modality", "sketch")
            if config.modality and mod != config.modality:
                continue
            self.refs.append(SampleRef(str(base / rec["path"]), str(rec["identity"]), mod, rec.get("style")))
        if not self.refs:
            raise DataError(f"{config.path}: no records" + (f" with modality {config.modality}" if config.modality else ""))
