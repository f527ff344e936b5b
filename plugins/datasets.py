"""Built-in dataset plugins: the folder layouts of the data layer."""

from c4s_core import hookimpl
from c4s_core.data.datasets import (
    ConcatDataset,
    IdentityFolderDataset,
    ImageFolderDataset,
    ManifestDataset,
    PairedFolderDataset,
)


@hookimpl
def register_datasets(register):
    register(PairedFolderDataset, aliases=("cufs",))
    register(IdentityFolderDataset)
    register(ImageFolderDataset)
    register(ManifestDataset)
    register(ConcatDataset)
