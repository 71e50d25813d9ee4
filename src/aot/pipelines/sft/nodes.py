"""Nodes of sft: the base Defender (later: the SFT warm-up and the Attacker cold start)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aot.datasets import ModelFolder
from aot.defender import Defender, TinyDefenderConfig, build_tiny_defender
from aot.rewards import build_prompt, target_completion
from aot.world import WorldConfig, text_corpus

logger = logging.getLogger(__name__)

SOURCES = ("tiny", "pretrained")


def defender_corpus(world: dict[str, Any]) -> list[str]:
    """Every text the Defender meets: questions, options, prompt templates and ideal answers."""
    lines = text_corpus(WorldConfig.from_dict(world))
    words = sorted({w.strip("?.,") for line in lines for w in line.split()})
    options = words[:4]
    corpus = list(lines)
    for mode in ("letter", "word"):
        corpus.append(build_prompt("question", options, mode=mode))
        corpus.extend(target_completion("ABCD"[i], o, options, mode) for i, o in enumerate(options))
    corpus.append(build_prompt("question", []))
    corpus.extend(target_completion(a, a, [], "letter") for a in ("Yes", "No"))
    return corpus


def build_base_defender(
    defender: dict[str, Any], world: dict[str, Any], seed: int
) -> Defender | ModelFolder:
    """The Defender every later stage starts from.

    `defender.source: tiny` builds a random-weight Qwen2.5-VL from `defender.tiny` with a tokenizer
    trained on the world's text; `pretrained` points at a local checkpoint folder
    (for example Qwen2.5-VL-7B-Instruct), checked here before any other work.
    """
    source = defender.get("source", "tiny")
    if source not in SOURCES:
        raise ValueError(f"defender.source must be one of {SOURCES}, got {source!r}")
    if source == "pretrained":
        path = defender.get("path")
        if not path:
            raise ValueError(
                "defender.path must name a local checkpoint folder when defender.source is 'pretrained'"
            )
        folder = Path(path).expanduser()
        if not (folder / "config.json").exists():
            raise FileNotFoundError(
                f"defender.path '{folder}' is not a model folder (no config.json)"
            )
        return ModelFolder(folder.resolve())
    config = TinyDefenderConfig.from_dict(defender.get("tiny"))
    model = build_tiny_defender(config, defender_corpus(world), seed=seed)
    logger.info(
        "Built tiny Qwen2.5-VL Defender: %s parameters (vision %s), vocabulary %d",
        f"{model.num_parameters():,}",
        f"{sum(p.numel() for p in model.model.model.visual.parameters()):,}",
        len(model.processor.tokenizer),
    )
    return model
