"""The edit plan: where to edit, how (add / remove / replace) and with which object.

The tiny Attacker's box editor needs a box and a class; in the paper the 20B editor picks both
itself from the instruction (``paper_instruction``). Here a small learnable planner does it: it
sees the scene (the image downsampled, plus maps of the question's target boxes and of the
objects) and the question (family and the categories its references name), and samples a plan
with its log-prob so the same group advantages that train the editor train it too.

Plans never touch a target: before sampling, every add region that overlaps a target box dilated
by ``target_margin`` (or is not clear of the other objects) gets logit -inf, remove / replace are
offered only on non-target objects clear of the dilated targets, and (``mask_forbidden``) classes
that would add an instance of a category the question depends on are masked out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from aot.attacker.prompts import N_OBJECT_CLASSES, REMOVE_CLASS, class_to_edit, object_class
from aot.bootstrap.categories import Forbidden, forbidden_for_spec, spec_refs
from aot.config import reject_unknown
from aot.world import COLORS, EDIT_KINDS, FAMILIES, SHAPES, SIZES, Box, Scene, SceneObject
from aot.world import size_pixels as world_size_pixels
from aot.world.scene import boxes_separated

PAPER_INSTRUCTION = (
    "Add a plausible distractor object, inspired by the question, to mislead a model answering: "
    "{question}"
)
_COLOURS = tuple(COLORS)
QUESTION_FEATURES = len(FAMILIES) + len(_COLOURS) + len(SHAPES)
OBJECT_FEATURES = len(SHAPES) + len(_COLOURS)


def paper_instruction(question: str) -> str:
    """The only Attacker instruction visible in the paper (aot-method.md §3.3), for `paper`
    editors that take free text."""
    return PAPER_INSTRUCTION.format(question=question)


@dataclass(frozen=True)
class PlannerConfig:
    """Kedro ``attacker.flow_grpo.planner.*``: the candidate regions (a ``grid`` x ``grid`` of
    cell centres times the world ``region_sizes``), the allowed edit kinds, the safety margins
    and the network's width."""

    grid: int = 6
    region_sizes: tuple[str, ...] = ("small", "medium")
    edit_kinds: tuple[str, ...] = EDIT_KINDS
    target_margin: int = 4
    gap: int = 2
    mask_forbidden: bool = True
    feature_size: int = 48
    hidden: int = 32

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        owner = "PlannerConfig"
        for name in ("grid", "feature_size", "hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{owner}.{name} must be a positive integer, got {v!r}")
        for name in ("target_margin", "gap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{owner}.{name} must be an integer >= 0, got {v!r}")
        if self.feature_size % 4:
            raise ValueError(
                f"{owner}.feature_size must be a multiple of 4, got {self.feature_size}"
            )
        if not isinstance(self.region_sizes, tuple) or not self.region_sizes:
            raise ValueError(f"{owner}.region_sizes must be a non-empty tuple")
        for s in self.region_sizes:
            if s not in SIZES:
                raise ValueError(f"{owner}.region_sizes: unknown size {s!r}; known {list(SIZES)}")
        if not isinstance(self.edit_kinds, tuple) or not self.edit_kinds:
            raise ValueError(f"{owner}.edit_kinds must be a non-empty tuple")
        for k in self.edit_kinds:
            if k not in EDIT_KINDS:
                raise ValueError(f"{owner}.edit_kinds: unknown kind {k!r}; known {EDIT_KINDS}")
        if not isinstance(self.mask_forbidden, bool):
            raise ValueError(f"{owner}.mask_forbidden must be a bool")

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> PlannerConfig:
        params = dict(params or {})
        reject_unknown("PlannerConfig", cls, params)
        for key in ("region_sizes", "edit_kinds"):
            if isinstance(params.get(key), list):
                params[key] = tuple(params[key])
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EditPlan:
    """One sampled edit. ``box`` is the editor's box (the new object's box for add, the edited
    object's box otherwise); ``class_id`` is the editor class of the final pass (add / replace:
    the new object, remove: ``REMOVE_CLASS``); the ``*_idx`` fields are the planner's action."""

    kind: str
    box: Box
    shape: str | None
    colour: str | None
    class_id: int
    object_id: int | None
    size: str
    kind_idx: int
    loc_idx: int
    cls_idx: int

    def prompt(self) -> str:
        if self.kind == "remove":
            return "remove the object"
        return (
            f"{'replace it with' if self.kind == 'replace' else 'add'} a {self.colour} {self.shape}"
        )


def _clip_box(cx: float, cy: float, side: int, width: int, height: int) -> Box:
    x0 = min(max(round(cx - side / 2), 0), width - side)
    y0 = min(max(round(cy - side / 2), 0), height - side)
    return (x0, y0, x0 + side, y0 + side)


def _dilate(box: Sequence[int], margin: int) -> Box:
    x0, y0, x1, y1 = (int(v) for v in box)
    return (x0 - margin, y0 - margin, x1 + margin, y1 + margin)


def _cell_of(box: Sequence[int], grid: int, width: int, height: int) -> int:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    gx = min(grid - 1, max(0, int(cx * grid / width)))
    gy = min(grid - 1, max(0, int(cy * grid / height)))
    return gy * grid + gx


def _spec(record: Mapping[str, Any]) -> dict[str, Any] | None:
    spec = record.get("spec")
    if spec is None or (isinstance(spec, float) and math.isnan(spec)) or spec == "":
        return None
    return json.loads(spec) if isinstance(spec, str) else dict(spec)


def question_features(record: Mapping[str, Any]) -> np.ndarray:
    """Family one-hot, then multi-hots of the colours and shapes the question's references name."""
    out = np.zeros(QUESTION_FEATURES, dtype=np.float32)
    family = record.get("family")
    if family in FAMILIES:
        out[FAMILIES.index(family)] = 1
    spec = _spec(record)
    if spec is not None:
        for ref in spec_refs(spec):
            if ref.get("color") in _COLOURS:
                out[len(FAMILIES) + _COLOURS.index(ref["color"])] = 1
            if ref.get("shape") in SHAPES:
                out[len(FAMILIES) + len(_COLOURS) + SHAPES.index(ref["shape"])] = 1
    return out


def _object_features(obj: SceneObject) -> np.ndarray:
    out = np.zeros(OBJECT_FEATURES, dtype=np.float32)
    out[SHAPES.index(obj.shape)] = 1
    out[len(SHAPES) + _COLOURS.index(obj.color)] = 1
    return out


def _class_ok(forbidden: Forbidden) -> np.ndarray:
    ok = np.ones(N_OBJECT_CLASSES, dtype=bool)
    for c in range(N_OBJECT_CLASSES):
        _, shape, colour = class_to_edit(c)
        ok[c] = not forbidden.blocks(colour, shape)
    return ok


@dataclass
class PlanSpace:
    """Everything the planner may choose from for one (scene, question), with validity masks.

    ``regions`` are candidate add boxes, ``objects`` the non-target objects clear of the dilated
    targets (the only ones remove / replace may touch); ``inputs`` is the (5, S, S) image plus
    target and object maps, ``question`` the question features.
    """

    width: int
    height: int
    regions: list[Box]
    region_cells: np.ndarray
    region_sizes: np.ndarray
    region_valid: np.ndarray
    objects: list[SceneObject]
    object_cells: np.ndarray
    object_features: np.ndarray
    remove_valid: np.ndarray
    add_class_valid: np.ndarray
    replace_class_valid: np.ndarray
    kind_valid: np.ndarray
    inputs: np.ndarray
    question: np.ndarray
    target_boxes: list[Box]

    @property
    def any_valid(self) -> bool:
        return bool(self.kind_valid.any())


def _maps(image: np.ndarray, targets: Sequence[Box], scene: Scene | None, size: int) -> np.ndarray:
    """(5, S, S): RGB in [-1, 1] (antialiased downsample), target-box map, object-box map."""
    h, w = image.shape[:2]
    rgb = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", antialias=True)[0]
    maps = torch.zeros(2, size, size)
    boxes = [(0, targets), (1, [o.box for o in scene.objects] if scene is not None else [])]
    for ch, group in boxes:
        for x0, y0, x1, y1 in group:
            a, b = int(x0 * size / w), int(math.ceil(x1 * size / w))
            c, d = int(y0 * size / h), int(math.ceil(y1 * size / h))
            maps[ch, c:d, a:b] = 1
    return torch.cat([rgb, maps]).numpy()


def plan_space(
    image: np.ndarray,
    record: Mapping[str, Any],
    scene: Scene | None,
    config: PlannerConfig,
) -> PlanSpace:
    """The choices for one record on its (clean) image; ``scene`` may be None (user data: no
    objects are known, so only add regions off the dilated targets are offered)."""
    h, w = image.shape[:2]
    raw = record.get("target_boxes")
    targets = [tuple(int(v) for v in b) for b in (raw if raw is not None else [])]
    zones = [_dilate(t, config.target_margin) for t in targets]
    spec = _spec(record)
    forbidden = forbidden_for_spec(spec) if (spec and config.mask_forbidden) else Forbidden()
    objects = list(scene.objects) if scene is not None else []
    g = config.grid
    regions, cells, sizes, valid = [], [], [], []
    for si, size in enumerate(config.region_sizes):
        side = min(world_size_pixels(size, min(w, h)), w, h)
        for cy in range(g):
            for cx in range(g):
                box = _clip_box((cx + 0.5) * w / g, (cy + 0.5) * h / g, side, w, h)
                free = all(boxes_separated(box, o.box, config.gap) for o in objects)
                off = all(boxes_separated(box, z, 0) for z in zones)
                regions.append(box)
                cells.append(cy * g + cx)
                sizes.append(si)
                valid.append(free and off)
    target_set = set(targets)
    editable = [
        o
        for o in objects
        if o.box not in target_set and all(boxes_separated(o.box, z, 0) for z in zones)
    ]
    add_ok = _class_ok(forbidden)
    remove_ok = np.array([not forbidden.blocks(o.color, o.shape) for o in editable], dtype=bool)
    replace_ok = np.zeros((len(editable), N_OBJECT_CLASSES), dtype=bool)
    for k, o in enumerate(editable):
        replace_ok[k] = add_ok
        replace_ok[k, object_class(o.shape, o.color)] = False
    region_valid = np.array(valid, dtype=bool)
    kind_valid = np.array(
        [
            "add" in config.edit_kinds and region_valid.any() and add_ok.any(),
            "remove" in config.edit_kinds and remove_ok.any(),
            "replace" in config.edit_kinds and replace_ok.any(),
        ],
        dtype=bool,
    )
    return PlanSpace(
        width=w,
        height=h,
        regions=regions,
        region_cells=np.array(cells, dtype=np.int64),
        region_sizes=np.array(sizes, dtype=np.int64),
        region_valid=region_valid,
        objects=editable,
        object_cells=np.array([_cell_of(o.box, g, w, h) for o in editable], dtype=np.int64),
        object_features=np.stack([_object_features(o) for o in editable])
        if editable
        else np.zeros((0, OBJECT_FEATURES), dtype=np.float32),
        remove_valid=remove_ok,
        add_class_valid=add_ok,
        replace_class_valid=replace_ok,
        kind_valid=kind_valid,
        inputs=_maps(image, targets, scene, config.feature_size),
        question=question_features(record),
        target_boxes=targets,
    )


@dataclass
class _Batch:
    inputs: torch.Tensor
    question: torch.Tensor
    region_cells: torch.Tensor
    region_sizes: torch.Tensor
    region_valid: torch.Tensor
    object_cells: torch.Tensor
    object_features: torch.Tensor
    remove_valid: torch.Tensor
    replace_obj_valid: torch.Tensor
    add_class_valid: torch.Tensor
    replace_class_valid: torch.Tensor
    kind_valid: torch.Tensor


def _stack(spaces: Sequence[PlanSpace], device: torch.device) -> _Batch:
    n_obj = max(1, max(len(s.objects) for s in spaces))

    def pad(a: np.ndarray, fill: Any = 0) -> np.ndarray:
        out = np.full((n_obj, *a.shape[1:]), fill, dtype=a.dtype)
        out[: len(a)] = a
        return out

    def t(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays)).to(device)

    return _Batch(
        inputs=t([s.inputs for s in spaces]),
        question=t([s.question for s in spaces]),
        region_cells=t([s.region_cells for s in spaces]),
        region_sizes=t([s.region_sizes for s in spaces]),
        region_valid=t([s.region_valid for s in spaces]),
        object_cells=t([pad(s.object_cells) for s in spaces]),
        object_features=t([pad(s.object_features) for s in spaces]),
        remove_valid=t([pad(s.remove_valid, False) for s in spaces]),
        replace_obj_valid=t([pad(s.replace_class_valid.any(axis=1), False) for s in spaces]),
        add_class_valid=t([s.add_class_valid for s in spaces]),
        replace_class_valid=t(
            [
                pad(s.replace_class_valid.reshape(len(s.objects), N_OBJECT_CLASSES), False)
                if len(s.objects)
                else np.zeros((n_obj, N_OBJECT_CLASSES), dtype=bool)
                for s in spaces
            ]
        ),
        kind_valid=t([s.kind_valid for s in spaces]),
    )


def _masked_log_softmax(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log-softmax over valid entries (-inf elsewhere); rows with no valid entry give zeros
    so that choices that are not taken (e.g. the class of a removal) add nothing."""
    has = valid.any(-1, keepdim=True)
    safe = valid | ~has
    out = torch.log_softmax(logits.masked_fill(~safe, float("-inf")), dim=-1)
    return torch.where(has, out, torch.zeros_like(out))


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    """Entropy of a masked log-softmax; -inf entries (p = 0) are zeroed before the product so
    the backward pass has no 0 * inf."""
    finite = torch.where(torch.isfinite(logp), logp, torch.zeros_like(logp))
    return -(logp.exp() * finite).sum(-1)


def _sample(logp: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    probs = logp.exp()
    probs = torch.where(probs.sum(-1, keepdim=True) > 0, probs, torch.ones_like(probs))
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logp.device)


class EditPlanner(nn.Module):
    """A small conv net over the scene maps, pooled to the region grid, plus a learned position
    embedding per cell, modulated by the question, with factorised heads:
    kind (add / remove / replace), then a region (add) or a non-target object (remove / replace),
    then a class (add / replace). Heads start at zero: the first policy is uniform over the valid
    choices."""

    def __init__(self, config: PlannerConfig | None = None) -> None:
        super().__init__()
        self.config = config or PlannerConfig()
        h = self.config.hidden
        self.trunk = nn.Sequential(
            nn.Conv2d(5, h // 2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(h // 2, h, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(h, h, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(self.config.grid),
        )
        self.position = nn.Embedding(self.config.grid**2, h)  # where a cell is in the image
        nn.init.normal_(self.position.weight, std=0.02)
        self.question = nn.Linear(QUESTION_FEATURES, h)
        self.size_embed = nn.Embedding(len(self.config.region_sizes), h)
        self.object_embed = nn.Linear(OBJECT_FEATURES, h)
        self.kind_head = nn.Linear(2 * h, len(EDIT_KINDS))
        self.region_head = nn.Linear(h, 1)
        self.object_head = nn.Linear(h, 2)  # remove, replace
        self.class_head = nn.Linear(3 * h + len(EDIT_KINDS), N_OBJECT_CLASSES)
        for head in (self.kind_head, self.region_head, self.object_head, self.class_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(
        self,
        spaces: Sequence[PlanSpace],
        actions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(actions (B,3): kind, location, class; log-prob (B,); entropy (B,)).

        Samples when ``actions`` is None, else scores the given actions (with gradients).
        The entropy is that of each factor along the taken path, summed.
        """
        b = _stack(spaces, self.device)
        if not bool(b.kind_valid.any(-1).all()):
            raise ValueError("a plan space has no valid edit; filter with PlanSpace.any_valid")
        n, g2 = len(spaces), self.config.grid**2
        q = self.question(b.question)
        cells = self.trunk(b.inputs).flatten(2).transpose(1, 2)  # (B, g*g, H)
        cells = F.relu(cells + q[:, None] + self.position.weight[None])
        glob = torch.cat([cells.mean(1), q], -1)
        rows = torch.arange(n, device=self.device)

        kind_lp = _masked_log_softmax(self.kind_head(glob), b.kind_valid)
        kind = _sample(kind_lp, generator) if actions is None else actions[:, 0]

        reg_feat = F.relu(
            cells[rows[:, None], b.region_cells.clamp(max=g2 - 1)] + self.size_embed(b.region_sizes)
        )
        reg_lp = _masked_log_softmax(self.region_head(reg_feat).squeeze(-1), b.region_valid)
        obj_feat = F.relu(
            cells[rows[:, None], b.object_cells] + self.object_embed(b.object_features)
        )
        obj_logits = self.object_head(obj_feat)
        rem_lp = _masked_log_softmax(obj_logits[..., 0], b.remove_valid)
        rep_lp = _masked_log_softmax(obj_logits[..., 1], b.replace_obj_valid)
        if actions is None:
            loc = torch.zeros(n, dtype=torch.long, device=self.device)
            for k, lp in ((0, reg_lp), (1, rem_lp), (2, rep_lp)):
                pick = kind == k
                if pick.any():
                    loc[pick] = _sample(lp[pick], generator)
        else:
            loc = actions[:, 1]
        loc_c = loc.clamp(min=0)
        reg_taken = reg_lp.gather(1, loc_c.clamp(max=reg_lp.shape[1] - 1)[:, None]).squeeze(1)
        obj_idx = loc_c.clamp(max=rem_lp.shape[1] - 1)[:, None]
        rem_taken = rem_lp.gather(1, obj_idx).squeeze(1)
        rep_taken = rep_lp.gather(1, obj_idx).squeeze(1)
        loc_taken = torch.where(kind == 0, reg_taken, torch.where(kind == 1, rem_taken, rep_taken))
        loc_ent = torch.where(
            kind == 0, _entropy(reg_lp), torch.where(kind == 1, _entropy(rem_lp), _entropy(rep_lp))
        )

        loc_feat = torch.where(
            (kind == 0)[:, None],
            reg_feat[rows, loc_c.clamp(max=reg_feat.shape[1] - 1)],
            obj_feat[rows, obj_idx.squeeze(1)],
        )
        cls_in = torch.cat([glob, loc_feat, F.one_hot(kind, len(EDIT_KINDS)).float()], -1)
        cls_valid = torch.where(
            (kind == 0)[:, None],
            b.add_class_valid,
            torch.where(
                (kind == 2)[:, None],
                b.replace_class_valid[rows, obj_idx.squeeze(1)],
                torch.zeros_like(b.add_class_valid),
            ),
        )
        cls_lp = _masked_log_softmax(self.class_head(cls_in), cls_valid)
        cls = _sample(cls_lp, generator) if actions is None else actions[:, 2]
        if actions is None:
            cls = torch.where(kind == 1, torch.full_like(cls, REMOVE_CLASS), cls)
        cls_taken = torch.where(
            kind == 1,
            torch.zeros(n, device=self.device),
            cls_lp.gather(1, cls.clamp(max=N_OBJECT_CLASSES - 1)[:, None]).squeeze(1),
        )
        cls_ent = torch.where(kind == 1, torch.zeros(n, device=self.device), _entropy(cls_lp))
        logp = kind_lp.gather(1, kind[:, None]).squeeze(1) + loc_taken + cls_taken
        entropy = _entropy(kind_lp) + loc_ent + cls_ent
        return torch.stack([kind, loc, cls], 1), logp, entropy

    def to_plans(self, spaces: Sequence[PlanSpace], actions: torch.Tensor) -> list[EditPlan]:
        """Decode sampled actions into plans (boxes, kinds, classes)."""
        return [
            decode_plan(s, a, self.config) for s, a in zip(spaces, actions.tolist(), strict=True)
        ]

    def save(self, path: str | Path) -> None:
        """``planner.json`` (config) and ``planner.safetensors`` (weights) in a folder."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "planner.json").write_text(json.dumps(self.config.to_dict()))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path / "planner.safetensors"))
        (path / "planner.pt").unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path) -> EditPlanner:
        path = Path(path)
        planner = cls(PlannerConfig.from_dict(json.loads((path / "planner.json").read_text())))
        weights = path / "planner.safetensors"
        if weights.exists():
            planner.load_state_dict(load_file(str(weights)))
        elif (path / "planner.pt").exists():  # folders saved before safetensors: tensors only
            planner.load_state_dict(torch.load(path / "planner.pt", weights_only=True))
        else:
            raise FileNotFoundError(f"planner folder '{path}' has no planner.safetensors")
        return planner


def decode_plan(space: PlanSpace, action: Sequence[int], config: PlannerConfig) -> EditPlan:
    kind_idx, loc, cls = (int(v) for v in action)
    kind = EDIT_KINDS[kind_idx]
    if kind == "add":
        box = space.regions[loc]
        _, shape, colour = class_to_edit(cls)
        size = config.region_sizes[int(space.region_sizes[loc])]
        return EditPlan(kind, box, shape, colour, cls, None, size, kind_idx, loc, cls)
    obj = space.objects[loc]
    if kind == "remove":
        return EditPlan(
            kind, obj.box, None, None, REMOVE_CLASS, obj.object_id, obj.size, kind_idx, loc, cls
        )
    _, shape, colour = class_to_edit(cls)
    return EditPlan(kind, obj.box, shape, colour, cls, obj.object_id, obj.size, kind_idx, loc, cls)
