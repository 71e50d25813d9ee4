"""A Kedro dataset for model folders written by `save_pretrained`.

kedro-datasets has no dataset that *saves* a transformers / diffusers / peft folder
(`huggingface.HFTransformerPipelineDataset` is load-only; kedro-plugins#612), so this one is ours.

Saves are atomic: the object is written to a sibling temporary folder, then swapped in by rename.
If the process dies while writing, the previous complete folder is untouched; if it dies between
the two renames of the swap, the previous folder is found under `<name>.previous` and restored by
the next load or save.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from kedro.utils import load_obj

from aot.validation import pickle_only_weights

logger = logging.getLogger(__name__)

_MARKERS = ("config.json", "model_index.json", "adapter_config.json")


@dataclass(frozen=True)
class ModelFolder:
    """A reference to a model folder on disk: what nodes exchange instead of in-memory models."""

    path: Path

    def __fspath__(self) -> str:
        return str(self.path)

    def save_pretrained(self, target: str | os.PathLike) -> None:
        """Copies the folder, so a `ModelFolder` can be saved like a model."""
        shutil.copytree(self.path, target, dirs_exist_ok=True)


def _takes_use_safetensors(loader: Any) -> bool:
    """Whether a `from_pretrained` accepts `use_safetensors` (transformers and diffusers do;
    `aot.defender.Defender.from_pretrained` sets it itself and takes no such argument)."""
    try:
        parameters = inspect.signature(loader).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "use_safetensors" or p.kind is p.VAR_KEYWORD for p in parameters)


def _backup(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def _recover(path: Path) -> None:
    """Restores a complete folder left aside by a swap that was interrupted."""
    backup = _backup(path)
    if backup.exists() and not path.exists():
        logger.warning("Restoring %s from %s (an earlier save was interrupted)", path, backup)
        os.replace(backup, path)
    elif backup.exists():
        shutil.rmtree(backup, ignore_errors=True)


class atomic_folder:  # noqa: N801 - used like a function: `with atomic_folder(path) as tmp:`
    """Context manager yielding a temporary folder that replaces `path` only on success."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _recover(self.path)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        # mkdtemp makes the folder private (0700); a model folder gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        self.tmp.chmod(0o777 & ~umask)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        backup = _backup(self.path)
        if self.path.exists():
            os.replace(self.path, backup)
        os.replace(self.tmp, self.path)
        shutil.rmtree(backup, ignore_errors=True)


class ModelFolderDataset(AbstractDataset[Any, Any]):
    """Loads with `<loader>.from_pretrained(path)` and saves with `obj.save_pretrained(tmp)`.

    Example catalog entry::

        base_defender:
          type: aot.datasets.ModelFolderDataset
          path: data/06_models/defender_base
          loader: aot.defender.Defender          # or transformers.AutoModelForImageTextToText,
                                                 # diffusers.DiffusionPipeline, ...
          lazy: false                            # true: load returns a ModelFolder reference
          external: copy                         # saving a ModelFolder from elsewhere: copy | link

    Loading only reads safetensors weights: a folder whose weights exist only as pickles
    (`pytorch_model.bin`, `diffusion_pytorch_model.bin`, ...) is refused before any loader runs,
    and `use_safetensors=True` is passed to loaders that take it. `trust_remote_code` is
    refused in `load_args`.
    """

    def __init__(
        self,
        *,
        path: str,
        loader: str = "aot.defender.Defender",
        load_args: dict[str, Any] | None = None,
        lazy: bool = False,
        external: str = "copy",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if external not in ("copy", "link"):
            raise DatasetError(
                f"ModelFolderDataset({path}): external must be 'copy' or 'link', got {external!r}"
            )
        self._path = Path(path)
        self._loader = loader
        self._load_args = dict(load_args or {})
        if self._load_args.get("trust_remote_code"):
            raise DatasetError(f"ModelFolderDataset({path}): trust_remote_code is never allowed")
        if self._load_args.get("use_safetensors", True) is not True:
            raise DatasetError(
                f"ModelFolderDataset({path}): use_safetensors must stay true (pickled weights "
                "can run code when loaded)"
            )
        self._lazy = lazy
        self._external = external
        self.metadata = metadata

    @property
    def path(self) -> Path:
        return self._path

    def load(self) -> Any:
        _recover(self._path)
        if not self._exists():
            raise DatasetError(
                f"Model folder '{self._path}' does not exist or holds no "
                f"{' / '.join(_MARKERS)}; run the pipeline that produces it first."
            )
        pickled = pickle_only_weights(self._path)
        if pickled:
            names = ", ".join(p.relative_to(self._path).as_posix() for p in pickled[:3])
            raise DatasetError(
                f"Model folder '{self._path}' holds weights only as pickle files ({names}); "
                "only .safetensors weights are loaded (unpickling can run code). Re-save it "
                "with save_pretrained(..., safe_serialization=True)."
            )
        if self._lazy:
            return ModelFolder(self._path.resolve())
        cls = load_obj(self._loader)
        logger.info("Loading %s from %s", self._loader, self._path)
        load_args = dict(self._load_args)
        if _takes_use_safetensors(cls.from_pretrained):
            load_args["use_safetensors"] = True
        else:  # the loader enforces it itself (Defender.from_pretrained)
            load_args.pop("use_safetensors", None)
        return cls.from_pretrained(str(self._path), **load_args)

    def save(self, data: Any) -> None:
        if isinstance(data, ModelFolder) and self._external == "link":
            self._path.parent.mkdir(parents=True, exist_ok=True)
            if self._path.is_symlink() or self._path.exists():
                if self._path.is_symlink() or self._path.is_file():
                    self._path.unlink()
                else:
                    shutil.rmtree(self._path)
            self._path.symlink_to(Path(data.path).resolve(), target_is_directory=True)
            return
        if isinstance(data, ModelFolder) and Path(data.path).resolve() == self._path.resolve():
            return  # already in place
        if not hasattr(data, "save_pretrained"):
            raise DatasetError(
                f"ModelFolderDataset({self._path}) can only save objects with save_pretrained(), "
                f"got {type(data).__name__}"
            )
        with atomic_folder(self._path) as tmp:
            data.save_pretrained(str(tmp))
            if not any((tmp / m).exists() for m in _MARKERS):
                raise DatasetError(f"save_pretrained wrote none of {_MARKERS} into {self._path}")

    def _exists(self) -> bool:
        return any((self._path / m).exists() for m in _MARKERS)

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "loader": self._loader, "lazy": self._lazy}

    def preview(self) -> dict[str, Any]:
        """Kedro-Viz JSON preview: the folder's files and the model config's key sizes."""
        import json

        if not self._exists():
            return {"path": str(self._path), "exists": False}
        files = sorted(p.name for p in self._path.iterdir())
        info: dict[str, Any] = {"path": str(self._path), "files": files}
        config = self._path / "config.json"
        if config.exists():
            cfg = json.loads(config.read_text())
            info["model_type"] = cfg.get("model_type")
            info["architectures"] = cfg.get("architectures")
        return info
