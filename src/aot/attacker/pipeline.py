"""``BoxEditPipeline``: the Attacker as a diffusers pipeline that edits images inside a box.

A ``DiffusionPipeline`` subclass so that ``save_pretrained`` / ``from_pretrained`` (safetensors,
``model_index.json``), device moves and generators behave like any diffusers model. The UNet
(``UNet2DModel``) and scheduler (``FlowMatchEulerDiscreteScheduler``) are stock diffusers; the
crop/paste-back and known-region loop (``aot.attacker.editing``) are ours. Load a saved folder
with ``BoxEditPipeline.from_pretrained(path)``: the generic ``DiffusionPipeline.from_pretrained``
cannot resolve a class that lives outside diffusers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, UNet2DModel
from diffusers.configuration_utils import FrozenDict
from PIL import Image

from aot.attacker.config import AttackerConfig, build_unet
from aot.attacker.crops import paste_back, to_crops
from aot.attacker.editing import sample_crops
from aot.attacker.prompts import prompt_to_class

PLANNER_FOLDER = "planner"

_OUTPUT_TYPES = ("pil", "pt")


def _as_list(value: Any, is_single: bool) -> list[Any]:
    return [value] if is_single else list(value)


def _broadcast(name_to_list: dict[str, list[Any]]) -> None:
    """Repeat length-1 arguments (in place) to the common batch size; other mismatches fail."""
    lengths = {name: len(v) for name, v in name_to_list.items()}
    n = max(lengths.values())
    bad = {name: k for name, k in lengths.items() if k not in (1, n)}
    if bad or n == 0:
        raise ValueError(f"image/box/prompt batch sizes do not match: {lengths}")
    for v in name_to_list.values():
        if len(v) == 1:
            v *= n


def _pil_to_uint8(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def _is_single_box(box: Any) -> bool:
    return len(box) == 4 and all(isinstance(v, int | np.integer) for v in box)


@contextmanager
def _without_source_path(*configurables: Any) -> Iterator[None]:
    """Leaves out ``_name_or_path`` while saving: diffusers' ``from_pretrained`` records the
    folder a model was loaded from, and ``save_pretrained`` writes it, so a checkpoint trained
    from another would hold an absolute path and its bytes (and DVC hash) would depend on where
    the project lives. Restored afterwards."""
    kept = []
    for obj in configurables:
        config = getattr(obj, "_internal_dict", None)
        if config is not None and "_name_or_path" in config:
            kept.append((obj, config))
            obj._internal_dict = FrozenDict(
                {k: v for k, v in config.items() if k != "_name_or_path"}
            )
    try:
        yield
    finally:
        for obj, config in kept:
            obj._internal_dict = config


class BoxEditPipeline(DiffusionPipeline):
    """Edits each image only inside its box, as the prompt ("a red star", "remove") asks.

    The box's neighbourhood (``crop_scale`` x the box side, square) is resized to ``crop_size``,
    sampled with the source held fixed outside the box, resized back and pasted into the box
    alone: pixels outside the box are returned byte-identical.
    """

    model_cpu_offload_seq = "unet"

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        crop_size: int = 32,
        crop_scale: float = 1.5,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(crop_size=crop_size, crop_scale=crop_scale)

    # The Flow-GRPO edit planner (aot.attacker.planner), when one was trained; diffusers has
    # no module type for it, so it is saved as a plain `planner/` folder next to the unet.
    planner = None

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        with _without_source_path(self, *self.components.values()):
            super().save_pretrained(save_directory, **kwargs)
        if self.planner is not None:
            self.planner.save(Path(save_directory) / PLANNER_FOLDER)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):  # noqa: ANN206
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        folder = Path(pretrained_model_name_or_path) / PLANNER_FOLDER
        if folder.is_dir():
            from aot.attacker.planner import EditPlanner

            pipe.planner = EditPlanner.load(folder)
        return pipe

    @staticmethod
    def prompt_to_class(prompt: str) -> int:
        """Class id of a free-text prompt (see ``aot.attacker.prompts.prompt_to_class``)."""
        return prompt_to_class(prompt)

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image | Sequence[Image.Image],
        box: Sequence[int] | Sequence[Sequence[int]],
        prompt: str | Sequence[str],
        num_inference_steps: int = 8,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
    ) -> list[Image.Image] | torch.Tensor:
        """Edited images: a list of PIL images, or a (B,3,H,W) float tensor in [0,1] for "pt".

        A single image, box or prompt is broadcast against the others' batch size.
        """
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} unknown; use one of {_OUTPUT_TYPES}")
        args = {
            "image": _as_list(image, isinstance(image, Image.Image)),
            "box": _as_list(box, _is_single_box(box)),
            "prompt": _as_list(prompt, isinstance(prompt, str)),
        }
        _broadcast(args)
        class_ids = torch.tensor([prompt_to_class(p) for p in args["prompt"]], dtype=torch.long)
        images = [_pil_to_uint8(im) for im in args["image"]]
        boxes = args["box"]
        src, mask, windows = to_crops(images, boxes, self.config.crop_size, self.config.crop_scale)
        crops = sample_crops(
            self.unet,
            self.scheduler,
            src,
            mask,
            class_ids,
            num_inference_steps,
            generator,
            guidance_scale=guidance_scale,
        )
        # uint8 in, uint8 out: pixels outside each box are the input's bytes, untouched.
        results = paste_back(images, crops.cpu(), windows, boxes)
        if output_type == "pt":
            return torch.stack(list(results)).float() / 255
        return [Image.fromarray(r.permute(1, 2, 0).numpy(), "RGB") for r in results]


def build_box_edit_pipeline(config: AttackerConfig | None = None, seed: int = 0) -> BoxEditPipeline:
    """A random-weight pipeline from a config; the seed alone fixes the weights."""
    config = config or AttackerConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_unet(config)
    pipe = BoxEditPipeline(
        unet=unet.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        crop_size=config.crop_size,
        crop_scale=float(config.crop_scale),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
