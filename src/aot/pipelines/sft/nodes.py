"""Nodes of sft: the base Defender (later: the SFT warm-up and the Attacker cold start)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from aot.datasets import ModelFolder
from aot.defender import Defender, TinyDefenderConfig, build_tiny_defender
from aot.defender.tokenizer import SYSTEM_PROMPT
from aot.rewards import build_prompt, target_completion
from aot.world import QuestionConfig, WorldConfig, make_questions, sample_scene, text_corpus

logger = logging.getLogger(__name__)

SOURCES = ("tiny", "pretrained")


def defender_corpus(world: dict[str, Any], n_scenes: int = 200, seed: int = 0) -> list[str]:
    """Every text the Defender meets, as it meets it: rendered chats of real questions.

    BPE merges follow frequency, so the corpus holds the prompt templates and chat markup as
    often as they occur in training; that keeps sequences short (the template is most of them).
    """
    world_cfg = WorldConfig.from_dict(world)
    question_cfg = QuestionConfig.for_world(world_cfg)
    rng = np.random.default_rng(seed)
    lines = list(text_corpus(world_cfg))
    for i in range(n_scenes):
        scene = sample_scene(rng, world_cfg, f"corpus_{i}")
        for record in make_questions(scene, rng, question_cfg):
            options = list(record["options"])
            for mode in ("letter", "word"):
                prompt = build_prompt(record["question"], options, mode=mode)
                answer = target_completion(record["answer"], record["answer_text"], options, mode)
                lines.append(
                    f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{prompt}"
                )
                lines.append(f"<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n")
    return lines


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
