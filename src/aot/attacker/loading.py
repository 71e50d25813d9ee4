"""One loader and one saver for every Attacker folder the catalog holds.

Our `BoxEditPipeline` saves and loads its edit planner itself. A stock diffusers pipeline such as
`QwenImageEditPipeline` knows nothing of the planner, so `AttackerPipeline.from_pretrained`
reads the class from `model_index.json`, loads it (safetensors only, never remote code) and
attaches `planner/` when there is one; `with_planner` wraps such a pipeline so that one
`save_pretrained` writes both, into one atomic catalog folder. diffusers has no module type for
a non-diffusers sub-model, hence this small layer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from aot.attacker.pipeline import PLANNER_FOLDER, BoxEditPipeline


class PipelineWithPlanner:
    """A diffusers pipeline and its trained edit planner, saved as one folder (`planner/`)."""

    def __init__(self, pipe: Any, planner: Any) -> None:
        self.pipe = pipe
        self.planner = planner

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.pipe.save_pretrained(path)
        if self.planner is not None:
            self.planner.save(Path(path) / PLANNER_FOLDER)


def with_planner(pipe: Any) -> Any:
    """What a node returns for the catalog: the box editor as it is (it saves its planner), any
    other pipeline wrapped so its planner is saved beside it."""
    if isinstance(pipe, BoxEditPipeline):
        return pipe
    return PipelineWithPlanner(pipe, getattr(pipe, "planner", None))


class AttackerPipeline:
    """Catalog loader (`loader: aot.attacker.AttackerPipeline`) for any saved Attacker folder."""

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, use_safetensors: bool = True, **kwargs: Any
    ) -> Any:
        """``torch_dtype`` may be a name ("bfloat16", as YAML gives it); ``device`` moves the
        loaded pipeline there (e.g. ``cuda`` in ``paper``)."""
        if not use_safetensors:
            raise ValueError("AttackerPipeline: only safetensors weights are loaded")
        device = kwargs.pop("device", None)
        if isinstance(kwargs.get("torch_dtype"), str):
            import torch

            kwargs["torch_dtype"] = getattr(torch, kwargs["torch_dtype"])
        pipe = cls._load(Path(path), **kwargs)
        return pipe.to(device) if device else pipe

    @staticmethod
    def _load(path: Path, **kwargs: Any) -> Any:
        index_file = path / "model_index.json"
        if not index_file.is_file():
            raise FileNotFoundError(
                f"{path} is not a diffusers pipeline folder (no model_index.json)"
            )
        name = str(json.loads(index_file.read_text()).get("_class_name"))
        if name == "BoxEditPipeline":
            return BoxEditPipeline.from_pretrained(path, use_safetensors=True, **kwargs)
        if kwargs.pop("trust_remote_code", False):
            raise ValueError("AttackerPipeline: trust_remote_code is never used")
        import diffusers

        pipeline_class = getattr(diffusers, name, None)
        if pipeline_class is None:
            raise ValueError(f"{path}: unknown pipeline class {name!r} in model_index.json")
        pipe = pipeline_class.from_pretrained(path, use_safetensors=True, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        pipe.planner = None
        if (path / PLANNER_FOLDER).is_dir():
            from aot.attacker.planner import EditPlanner

            pipe.planner = EditPlanner.load(path / PLANNER_FOLDER)
        return pipe
