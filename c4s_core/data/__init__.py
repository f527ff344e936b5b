"""Data layer: image I/O, datasets, manifests."""

from .datasets import (
    Dataset,
    IdentityFolderDataset,
    ImageFolderDataset,
    LoadReport,
    ManifestDataset,
    PairedFolderDataset,
    Sample,
    SampleRef,
    load_samples,
)
from .io import array_hash, file_hash, grey3, list_images, load_image, resize, save_image
from .manifest import append_manifest, iter_manifest, read_manifest, write_manifest

__all__ = [
    "Dataset", "IdentityFolderDataset", "ImageFolderDataset", "LoadReport", "ManifestDataset", "PairedFolderDataset",
    "Sample", "SampleRef", "load_samples", "array_hash", "file_hash", "grey3", "list_images", "load_image",
    "resize", "save_image", "append_manifest", "iter_manifest", "read_manifest", "write_manifest",
]
