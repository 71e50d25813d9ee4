"""Nodes of bootstrap_dataset that make the base Defender the effectiveness filter asks.

The paper's base Defender is a pretrained Qwen2.5-VL-7B that already knows the world. The tiny
default starts from random weights (`build_initial_defender`) and is first taught the world here
(`pretrain_defender`), on clean training scenes only, with dense grounding; DVC caches the result
per parameter set.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aot.datasets import ModelFolder
from aot.defender import Defender, TinyDefenderConfig, build_tiny_defender
from aot.defender.examples import graphs_from_table, world_examples
from aot.defender.sft import DefenderSFTConfig, SFTExample, train_defender_sft
from aot.defender.tokenizer import SYSTEM_PROMPT
from aot.pipelines.evaluation.nodes import answer_records, summarize_clean
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


def build_initial_defender(
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


def pretraining_examples(
    sets: dict[str, tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], int]],
    data: dict[str, Any],
    mode: str,
    seed: int,
) -> list[SFTExample]:
    """The pretraining conversations: `repeats` per training image of each named scale.

    `sets` maps a scale's name to its (scenes, records, images, repeats); `data` is
    `pretrain.data` (prompt style, turns, family weights).
    """
    examples: list[SFTExample] = []
    for name, (scene_table, table, pictures, repeats) in sets.items():
        train = table[table["split"] == "train"]
        part = world_examples(
            train,
            pictures,
            graphs_from_table(scene_table),
            mode=mode,
            style=data.get("prompt_style", "short"),
            turns=int(data.get("turns", 1)),
            repeats=repeats,
            seed=seed,
            family_weights=data.get("family_weights"),
        )
        logger.info(
            "Pretraining data: %d conversations about %d %s scenes",
            len(part),
            train["image"].nunique(),
            name,
        )
        examples.extend(part)
    return examples


def pretrain_defender(
    defender: Defender | ModelFolder,
    scenes: pd.DataFrame,
    records: pd.DataFrame,
    images: dict[str, Any],
    pretrain: dict[str, Any],
    seed: int,
    extended_scenes: pd.DataFrame | None = None,
    extended_records: pd.DataFrame | None = None,
    extended_images: dict[str, Any] | None = None,
) -> tuple[Defender | ModelFolder, pd.DataFrame, dict[str, Any]]:
    """Teaches a random-weight Defender the world; passes a real checkpoint through unchanged.

    It learns from the clean training scenes at both scales it will meet: the small source scenes
    (`data.repeats` conversations each) and their extended, busier versions that the filter, the
    rounds and the evaluation use (`data.extended_repeats`; 0 leaves them out). Returns the
    Defender, the training log and per-family accuracy on the validation split of each scale.
    """
    if not pretrain.get("enabled", True) or isinstance(defender, ModelFolder):
        logger.info("Defender pretraining disabled; the base Defender is the initial one")
        return defender, pd.DataFrame({"step": [], "loss": []}), {"pretrained": False}
    config = DefenderSFTConfig.from_dict(pretrain.get("trainer"), prefix="pretrain.trainer")
    data = pretrain.get("data", {})
    mode = pretrain.get("answer_mode", "word")
    style = data.get("prompt_style", "short")
    sets = {"source": (scenes, records, images, int(data.get("repeats", 3)))}
    extended_repeats = int(data.get("extended_repeats", 0))
    if extended_repeats > 0:
        if extended_scenes is None or extended_records is None or extended_images is None:
            raise ValueError(
                "pretrain.data.extended_repeats > 0 needs the extended scenes "
                "(run `kedro run --pipelines bootstrap_dataset --tags source_data` first)"
            )
        sets["extended"] = (extended_scenes, extended_records, extended_images, extended_repeats)
    examples = pretraining_examples(sets, data, mode, seed)
    with tempfile.TemporaryDirectory(prefix="aot-pretrain-") as tmp:
        trained, log = train_defender_sft(defender, examples, config, tmp)
    evaluation = {
        "split": "val",
        "answer_mode": mode,
        "max_per_family": pretrain.get("eval_per_family", 100),
        "batch_size": 64,
        "prompt_style": style,
    }
    metrics = summarize_clean(answer_records(trained, records, images, evaluation))
    if "extended" in sets:
        metrics["extended"] = summarize_clean(
            answer_records(trained, extended_records, extended_images, evaluation)
        )
    metrics["pretrained"] = True
    return trained, log, metrics
