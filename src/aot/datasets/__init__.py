"""Kedro datasets that kedro-datasets does not have (see each class's docstring)."""

from aot.datasets.images import ImageFolderDataset
from aot.datasets.model_folder import ModelFolder, ModelFolderDataset, atomic_folder
from aot.datasets.tables import TableDataset

__all__ = [
    "ImageFolderDataset",
    "ModelFolder",
    "ModelFolderDataset",
    "TableDataset",
    "atomic_folder",
]
