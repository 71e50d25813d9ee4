"""Flow-GRPO's settings (``attacker.flow_grpo.*``, ``selfplay.attacker.*``), checked field by field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from aot.attacker.planner import PlannerConfig
from aot.config import reject_unknown
from aot.rewards.attack import AttackRewardConfig

ADV_STD_MODES = ("group", "global", "none")


@dataclass(frozen=True)
class FlowGRPOConfig:
    """Kedro ``attacker.flow_grpo.*``; ``reward`` and ``planner`` are nested dicts.

    Defaults follow the measured toy loop (notes §4: 10 SDE steps at noise 0.7, clip 1e-3,
    lr 1e-4, 2 minibatches, adv clip 5) with a small KL (β 0.05 kept quality there).
    """

    steps: int = 30
    prompts_per_step: int = 4
    group_size: int = 8
    sampling_steps: int = 10
    noise_level: float = 0.7
    train_step_fraction: float = 1.0
    minibatches: int = 2
    inner_epochs: int = 1
    lr: float = 1e-4
    planner_lr: float = 3e-3
    weight_decay: float = 0.0
    clip_range: float = 1e-3
    planner_clip_range: float = 0.2
    adv_clip: float = 5.0
    adv_std: str = "group"
    beta_kl: float = 0.05
    log_kl: bool = True
    grad_clip: float = 1.0
    train_unet: bool = True
    train_planner: bool = True
    planner_entropy: float = 0.01
    filter_clean: bool = True
    max_records: int | None = None
    quality_every: int = 10
    quality_edits: int = 32
    defender_batch_size: int = 32
    threads: int = 1
    save_every: int = 0  # steps between resumable checkpoints in `checkpoint_dir` (0: never)
    # peft LoraConfig arguments: train low-rank adapters on the editor (the UNet, or
    # Qwen-Image-Edit's transformer) instead of all its weights; the KL reference is then the
    # editor with the adapters switched off (no copy), and the trained adapters are merged back.
    # None: full fine-tuning. See ``aot.attacker.qwen_edit.QWEN_IMAGE_LORA_TARGETS``.
    lora: dict[str, Any] | None = None
    # Recompute the editor's activations in the backward pass (diffusers' gradient
    # checkpointing): less memory for a large editor, for a second forward pass per update.
    gradient_checkpointing: bool = False
    reward: AttackRewardConfig = field(default_factory=AttackRewardConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; the ValueError names the field."""
        owner = "FlowGRPOConfig"

        def number(name: str, low: float, high: float, integer: bool = False, open_low=False):
            v = getattr(self, name)
            kind = int if integer else int | float
            ok = not isinstance(v, bool) and isinstance(v, kind) and low <= v <= high
            if not ok or (open_low and v == low):
                bound = f"> {low}" if open_low else f"in [{low}, {high}]"
                what = "an integer" if integer else "a number"
                raise ValueError(f"{owner}.{name} must be {what} {bound}, got {v!r}")

        for name in ("steps", "prompts_per_step", "minibatches", "inner_epochs", "threads"):
            number(name, 1, math.inf, integer=True)
        number("group_size", 2, math.inf, integer=True)
        number("sampling_steps", 2, math.inf, integer=True)
        number("quality_every", 0, math.inf, integer=True)
        number("save_every", 0, math.inf, integer=True)
        number("quality_edits", 1, math.inf, integer=True)
        number("defender_batch_size", 1, math.inf, integer=True)
        number("noise_level", 0, math.inf, open_low=True)
        number("train_step_fraction", 0, 1, open_low=True)
        for name in ("lr", "planner_lr", "clip_range", "planner_clip_range", "adv_clip"):
            number(name, 0, math.inf, open_low=True)
        number("grad_clip", 0, math.inf, open_low=True)
        for name in ("beta_kl", "planner_entropy", "weight_decay"):
            number(name, 0, math.inf)
        for name in (
            "log_kl",
            "train_unet",
            "train_planner",
            "filter_clean",
            "gradient_checkpointing",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{owner}.{name} must be a bool, got {getattr(self, name)!r}")
        if self.max_records is not None:
            number("max_records", 1, math.inf, integer=True)
        if self.adv_std not in ADV_STD_MODES:
            raise ValueError(
                f"{owner}.adv_std must be one of {ADV_STD_MODES}, got {self.adv_std!r}"
            )
        if self.lora is not None:
            if not isinstance(self.lora, Mapping) or not self.lora.get("target_modules"):
                raise ValueError(
                    f"{owner}.lora must be null or a mapping of peft LoraConfig arguments with "
                    f"target_modules, got {self.lora!r}"
                )
            rank = self.lora.get("r", 8)
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise ValueError(f"{owner}.lora.r must be a positive integer, got {rank!r}")
        if not isinstance(self.reward, AttackRewardConfig):
            raise ValueError(f"{owner}.reward must be an AttackRewardConfig")
        if not isinstance(self.planner, PlannerConfig):
            raise ValueError(f"{owner}.planner must be a PlannerConfig")

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> FlowGRPOConfig:
        """From Kedro params; unknown keys (also inside ``reward`` / ``planner``) fail by name."""
        params = dict(params or {})
        reject_unknown("FlowGRPOConfig", cls, params)
        if isinstance(params.get("reward"), Mapping):
            params["reward"] = AttackRewardConfig.from_dict(params["reward"])
        if isinstance(params.get("planner"), Mapping):
            params["planner"] = PlannerConfig.from_dict(params["planner"])
        if isinstance(params.get("lora"), Mapping):
            params["lora"] = dict(params["lora"])
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
