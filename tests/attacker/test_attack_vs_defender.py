"""Flow-GRPO against a real, fixed, warmed-up tiny Defender raises held-out attack success.

The world is the smallest one in which a tiny Qwen2.5-VL learns fast: one object per 84-px plain
scene, 2 shapes x 3 colours, "what colour is the <shape>?" with word answers and the protocol
prompts the self-play Defender sees. Trained only on single objects, the Defender is fragile to a
second, differently coloured object: the Attacker (a cold-started box editor and its planner)
has something real to find, and Flow-GRPO with the default reward (integrity gate, guard,
clean-correct, all-K-wrong efficacy) must find more of it on scenes it never trained on.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from aot.attacker import AttackerConfig, build_box_edit_pipeline
from aot.attacker.attack_reward import DefenderAttackReward, clean_answers
from aot.attacker.cold_start import ColdStartConfig, train_cold_start
from aot.attacker.flow_grpo import FlowGRPOTrainer
from aot.attacker.flow_grpo_config import FlowGRPOConfig
from aot.attacker.rollout import build_items
from aot.defender import Defender, TinyDefenderConfig, build_tiny_defender
from aot.defender.examples import world_examples
from aot.defender.sft import DefenderSFTConfig, train_defender_sft
from aot.pipelines.bootstrap_dataset.defender_nodes import defender_corpus
from aot.rewards.attack import correct_rate
from aot.world import QuestionConfig, WorldConfig, make_questions, sample_scene

SHAPES, COLOURS = ("circle", "square"), ("red", "green", "blue")
WORLD = WorldConfig(
    image_size=84,
    grid=28,
    min_objects=1,
    max_objects=1,
    shapes=SHAPES,
    colors=COLOURS,
    backgrounds={"plain": 1.0},
)
QUESTIONS = QuestionConfig(families=("attribute",), n_options=3, colors=COLOURS, shapes=SHAPES)
EDITOR = AttackerConfig(
    crop_size=16, block_out_channels=(8, 16), attention_head_dim=8, norm_num_groups=4
)
RL = dict(
    prompts_per_step=4,
    group_size=8,
    sampling_steps=3,
    steps=36,
    planner_lr=1e-2,
    lr=1e-4,
    quality_every=0,
    beta_kl=0.0,
    log_kl=False,
    reward={"validity_mode": "off", "k": 3, "answer_mode": "word"},
)
# Measured (seed 0, 2 threads): held-out attack success, the mean reward over 4 edits of each of
# 96 held-out items, 0.044 before and 0.083 after 24 steps (this test); in a scripted copy,
# 0.055 / 0.068 / 0.070 / 0.068 / 0.083 / 0.078 after 4 / 8 / ... / 24 steps, and with the
# rewards shuffled inside each batch (a control: same updates, no signal) 0.047 / 0.055 / 0.062
# / 0.057 / 0.055 / 0.039. Integrity pass rate 1.0 throughout. The Defender answers 31% of the
# held-out items right 3 times out of 3 on the clean image.
MARGIN = 0.015
# 96 scenes x 4 edits and 24 steps (the numbers above) left a standard error of about 0.012 on
# each success rate, close to the margin: on another CPU model (2026-12-02, AVX-512/AMX) that
# test measured 0.060 -> 0.068 and failed. Now 192 x 8 edits (about 0.006) and 36 steps; there:
# 0.066 -> 0.082 at 24 steps, 0.066 -> 0.089 at 36.
HELD_OUT_SCENES, HELD_OUT_EDITS = 192, 8


def _records(n_scenes: int, seed: int) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows, images, graphs = [], {}, {}
    for i in range(n_scenes):
        scene = sample_scene(rng, WORLD, f"fragile_{seed}_{i}")
        images[scene.scene_id], graphs[scene.scene_id] = scene.render(), scene
        for record in make_questions(scene, rng, QUESTIONS)[:1]:
            rows.append({**record, "graph": json.dumps(scene.to_dict())})
    return pd.DataFrame(rows), images, graphs


@pytest.fixture(scope="module")
def warmed_up_defender() -> Defender:
    """500 SFT steps (about 2 minutes on 2 cores) with dense grounding, on 600 single objects."""
    records, images, graphs = _records(600, seed=0)
    config = TinyDefenderConfig(
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=128,
        vision_hidden_size=32,
        vision_depth=1,
        vision_heads=2,
        vocab_size=400,
    )
    defender = build_tiny_defender(config, defender_corpus({"image_size": 84}, n_scenes=50))
    examples = world_examples(records, images, graphs, mode="word", style="protocol")
    sft = DefenderSFTConfig(
        max_steps=500, batch_size=16, learning_rate=3e-3, warmup_steps=10, logging_steps=100
    )
    with tempfile.TemporaryDirectory() as tmp:
        defender, _ = train_defender_sft(defender, examples, sft, tmp)
    return defender


def test_flow_grpo_raises_attack_success_on_held_out_scenes(warmed_up_defender: Defender) -> None:
    defender = warmed_up_defender
    train, train_images, train_graphs = _records(64, seed=0)
    held, held_images, held_graphs = _records(HELD_OUT_SCENES, seed=1)
    config = FlowGRPOConfig.from_dict(RL)
    items = build_items(train, train_images, config.planner, train_graphs)
    held_items = build_items(held, held_images, config.planner, held_graphs)
    clean_answers(defender, items, config.reward, 32, 0)
    clean_answers(defender, held_items, config.reward, 32, 1)
    clean_right = np.mean([correct_rate(i.clean_answers, i.row, "word") >= 1 for i in held_items])
    assert clean_right >= 0.2, f"the Defender is not warmed up: {clean_right:.2f} right 3/3"

    editor = build_box_edit_pipeline(EDITOR, 0)
    cold = ColdStartConfig(steps=150, batch_size=32, n_procedural_pairs=2000, threads=2)
    editor, _ = train_cold_start(editor, cold, WORLD)
    reward = DefenderAttackReward(defender, config.reward)
    trainer = FlowGRPOTrainer(editor, items, config, reward, seed=0)

    def held_out() -> tuple[float, float]:
        rollout = trainer.rollout(held_items, HELD_OUT_EDITS, torch.Generator().manual_seed(7))
        scores = reward(rollout)
        return float(scores["reward"].mean()), float(np.mean(scores["gate"]))

    success_before, gate_before = held_out()
    for _ in range(config.steps):
        trainer.step()
    success_after, gate_after = held_out()
    print(f"held-out attack success {success_before:.3f} -> {success_after:.3f}")  # noqa: T201
    assert success_after - success_before > MARGIN, (success_before, success_after)
    assert gate_before == gate_after == 1.0  # the targets stay intact: integrity held
