"""Sizes of the Attacker's crop UNet, and the UNet built from them.

Defaults follow the measured design A of ``shared/notes/exp-attacker-editor.md``: a 0.7 M-param
``UNet2DModel`` on 32 px crops was the best quality per CPU second of the designs tried.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from diffusers import UNet2DModel

from aot.attacker.prompts import NUM_CLASS_EMBEDS
from aot.config import reject_unknown

# Input channels: noisy crop (3), unmasked source crop (3), box mask (1).
IN_CHANNELS = 7


def _positive_int(owner: str, name: str, value: Any) -> None:
    """Reject bools too: YAML ``true`` must not silently become 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class AttackerConfig:
    """Architecture of the box-edit model (Kedro ``attacker.model.*``)."""

    crop_size: int = 32
    crop_scale: float = 1.5
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 32
    norm_num_groups: int = 8

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; the ValueError names the field."""
        owner = "AttackerConfig"
        for name in ("crop_size", "layers_per_block", "attention_head_dim", "norm_num_groups"):
            _positive_int(owner, name, getattr(self, name))
        scale = self.crop_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale >= 1.0:
            raise ValueError(f"{owner}.crop_scale must be a number >= 1, got {scale!r}")
        channels = self.block_out_channels
        if not isinstance(channels, tuple) or not channels:
            raise ValueError(f"{owner}.block_out_channels must be a non-empty tuple")
        for c in channels:
            _positive_int(owner, "block_out_channels", c)
            if c % self.norm_num_groups:
                raise ValueError(
                    f"{owner}.block_out_channels: {c} is not divisible by "
                    f"norm_num_groups={self.norm_num_groups}"
                )
        if self.crop_size % 2 ** (len(channels) - 1):
            raise ValueError(
                f"{owner}.crop_size={self.crop_size} must be divisible by "
                f"{2 ** (len(channels) - 1)} (one halving per extra block)"
            )

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> AttackerConfig:
        """Build from Kedro params (lists become tuples); unknown keys are rejected by name."""
        params = dict(params or {})
        reject_unknown("AttackerConfig", cls, params)
        if isinstance(params.get("block_out_channels"), list):
            params["block_out_channels"] = tuple(params["block_out_channels"])
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_unet(config: AttackerConfig) -> UNet2DModel:
    """Random-init class-conditioned UNet; attention only at the lowest resolution (cheap)."""
    n = len(config.block_out_channels)
    return UNet2DModel(
        sample_size=config.crop_size,
        in_channels=IN_CHANNELS,
        out_channels=3,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        norm_num_groups=config.norm_num_groups,
        attention_head_dim=config.attention_head_dim,
        num_class_embeds=NUM_CLASS_EMBEDS,
    )
