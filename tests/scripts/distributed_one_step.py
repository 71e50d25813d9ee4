"""Run by `tests/test_distributed.py` under `accelerate launch` (2 CPU processes, gloo).

Every process runs ONE Defender DAPO step (`aot.distributed.run_dapo` -> `train_defender_dapo`,
TRL's GRPOTrainer, dynamic sampling on) on a tiny Qwen2.5-VL, then ONE Attacker Flow-GRPO step
(`aot.distributed.run_flow_grpo` -> `train_attacker_flow_grpo` with an `Accelerator`) on a tiny
Qwen-Image-Edit with LoRA, from an in-memory catalog whose outputs are real model folders.

Each process writes `<out>/rank<k>.json`: the prompts / items it trained on, its *local*
gradient of one parameter before the all-reduce (a tensor hook for DAPO, which TRL's DDP
reduces during backward; the trainer's `_sync_gradients` for Flow-GRPO), the gradient after it
(Flow-GRPO), and a hash of the weights before and after the step. The test compares the ranks.

    accelerate launch --config_file conf/accelerate/cpu_gloo_2proc.yaml \\
        tests/scripts/distributed_one_step.py <out>
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

for _var, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("DO_NOT_TRACK", "1"),
    ("KEDRO_DISABLE_TELEMETRY", "true"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_var, _value)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from accelerate import PartialState  # noqa: E402
from kedro.io import DataCatalog, MemoryDataset  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from aot import distributed  # noqa: E402
from aot.attacker import flow_grpo  # noqa: E402
from aot.attacker.qwen_edit import QWEN_IMAGE_LORA_TARGETS, build_tiny_qwen_image_edit  # noqa: E402
from aot.datasets import ModelFolderDataset  # noqa: E402
from aot.defender import TinyDefenderConfig, build_tiny_defender  # noqa: E402
from aot.world import QuestionConfig, WorldConfig, make_questions, sample_scene  # noqa: E402

ROUND = "round_1"


def weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def grad_summary(g: torch.Tensor) -> list[float]:
    g = g.detach().float().cpu()
    return [float(g.norm()), float(g.sum()), float(g.reshape(-1)[0])]


class StubConfig:
    """What `run_dapo` / `run_flow_grpo` read from `aot.distributed.ProjectConfig`."""

    def __init__(self, params: dict[str, Any], catalog: DataCatalog, root: Path) -> None:
        self.params, self.catalog, self.root = params, catalog, root

    def check(self, sections: Any) -> None:
        return None

    def path_of(self, value: str) -> str:
        return str(value)


# ------------------------------------------------------------------------------ DAPO


def dapo_inputs() -> tuple[pd.DataFrame, dict[str, Image.Image]]:
    blank = Image.new("RGB", (56, 56), "gray")
    rows = [
        {
            "record_id": f"item{i}",
            "image": f"img{i}",
            "family": "existence",
            "question": f"Is item {i} ready?",
            "options": [],
            "answer": "Yes",
            "answer_text": "Yes",
        }
        for i in range(12)
    ]
    return pd.DataFrame(rows), {f"img{i}": blank for i in range(12)}


class Seen:
    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.__name__ = "scripted"

    def __call__(self, completions: Any, record_id: Any, **_: Any) -> list[float]:
        """Groups of items 0-2 are all right (uninformative: dynamic sampling drops them),
        the others one right in three."""
        self.prompts.extend(record_id)
        out = []
        for i, r in enumerate(record_id):
            k = i % 3
            out.append(1.0 if int(r.removeprefix("item")) < 3 or k == 0 else 0.0)
        return out


class LocalGrad(TrainerCallback):
    """Records the local gradient of one weight as backward computes it (a tensor hook runs
    before DDP's all-reduce touches it) and the weights before the first step."""

    def __init__(self) -> None:
        self.local: list[torch.Tensor] = []
        self.before: str | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
        self.before = weights_hash(model)
        param = model.model.language_model.layers[0].self_attn.q_proj.weight
        param.register_hook(lambda g: self.local.append(g.detach().clone()))


def dapo_step(out: Path, rank: int) -> dict[str, Any]:
    records, images = dapo_inputs()
    corpus = [r for r in records["question"]] + ["Yes No \\boxed{Yes}"]
    small = TinyDefenderConfig(
        hidden_size=64, intermediate_size=128, vision_hidden_size=32, vocab_size=400
    )
    defender = build_tiny_defender(small, corpus, seed=0)
    catalog = DataCatalog(
        {
            "sft_defender": MemoryDataset(defender, copy_mode="assign"),
            f"selfplay.{ROUND}.curriculum": MemoryDataset(records),
            f"selfplay.{ROUND}.curriculum_images": MemoryDataset(images, copy_mode="assign"),
            "extended_images": MemoryDataset({}, copy_mode="assign"),
            f"selfplay.{ROUND}.defender": ModelFolderDataset(path=str(out / "defender")),
            f"selfplay.{ROUND}.defender_log": MemoryDataset(),
        }
    )
    params = {
        "seed": 0,
        "selfplay": {
            "defender": {
                "checkpoint_root": str(out / "checkpoints"),
                "num_generations": 3,
                "groups_per_step": 2,
                "max_steps": 1,
                "max_new_tokens": 4,
                "learning_rate": 1e-3,
                "prompt_style": "short",
                "save_steps": 100,
                "max_tries": 3,
                "threads": 1,
                "seed": 0,
            }
        },
    }
    reward, hook = Seen(), LocalGrad()
    trained, log = distributed.run_dapo(
        StubConfig(params, catalog, out), ROUND, cpu=True, reward_funcs=[reward], callbacks=[hook]
    )
    assert len(hook.local) == 1, len(hook.local)
    return {
        "prompts": sorted(set(reward.prompts)),
        "local_grad": grad_summary(hook.local[0]),
        "before": hook.before,
        "after": weights_hash(trained.model),
        "steps": int(log["step"].max()),
        "groups_kept": float(log["dapo/groups_kept"].iloc[-1]),
    }


# ------------------------------------------------------------------------- Flow-GRPO


def attack_inputs() -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame]:
    rng = np.random.default_rng(0)
    rows, images, scenes = [], {}, []
    for i in range(4):
        scene = sample_scene(rng, WorldConfig(), f"dist_{i}")
        images[scene.scene_id] = scene.render()
        scenes.append({"scene_id": scene.scene_id, "graph": json.dumps(scene.to_dict())})
        record = make_questions(scene, rng, QuestionConfig())[0]
        rows.append({**record, "split": "train"})
    return pd.DataFrame(rows), images, pd.DataFrame(scenes)


class Redness:
    """Scripted reward: how red the edit box is (no Defender needed); records the items."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def __call__(self, rollout: Any) -> dict[str, np.ndarray]:
        self.items.extend(it.prompt_key for it in rollout.items)
        out = []
        for plan, edited in zip(rollout.plans, rollout.edited, strict=True):
            x0, y0, x1, y1 = plan.box
            box = edited[y0:y1, x0:x1].astype(float) / 255
            out.append(float((box[..., 0] - (box[..., 1] + box[..., 2]) / 2).mean()))
        return {"reward": np.array(out)}


def flow_grpo_step(out: Path, rank: int) -> dict[str, Any]:
    records, images, scenes = attack_inputs()
    pipe = build_tiny_qwen_image_edit(seed=0)
    before = weights_hash(pipe.transformer)
    watched = "transformer_blocks.0.attn.to_q.lora_B.default.weight"
    grads: dict[str, list[list[float]]] = {"local": [], "synced": []}
    original = flow_grpo.FlowGRPOTrainer._sync_gradients

    def recording_sync(self: Any, params: Any) -> None:
        names = {id(p): n for n, p in self.peft.named_parameters()}
        index = [i for i, p in enumerate(params) if names.get(id(p), "").endswith(watched)]
        if index:
            grads["local"].append(grad_summary(params[index[0]].grad))
        original(self, params)
        if index:
            grads["synced"].append(grad_summary(params[index[0]].grad))

    flow_grpo.FlowGRPOTrainer._sync_gradients = recording_sync
    catalog = DataCatalog(
        {
            "cold_attacker": MemoryDataset(pipe, copy_mode="assign"),
            "extended_records": MemoryDataset(records),
            "extended_images": MemoryDataset(images, copy_mode="assign"),
            "extended_scenes": MemoryDataset(scenes),
            f"selfplay.{ROUND}.attacker": ModelFolderDataset(
                path=str(out / "attacker"), loader="diffusers.QwenImageEditPipeline"
            ),
            f"selfplay.{ROUND}.attacker_log": MemoryDataset(),
        }
    )
    params = {
        "seed": 0,
        "selfplay": {
            "attacker": {
                "checkpoint_root": str(out / "checkpoints"),
                "steps": 1,
                "prompts_per_step": 1,
                "group_size": 2,
                "sampling_steps": 3,
                "minibatches": 1,
                "quality_every": 0,
                "beta_kl": 0.0,
                "log_kl": False,
                "lr": 0.01,
                "lora": {"r": 4, "lora_alpha": 4, "target_modules": list(QWEN_IMAGE_LORA_TARGETS)},
            }
        },
    }
    reward = Redness()
    trained, log = distributed.run_flow_grpo(
        StubConfig(params, catalog, out), ROUND, cpu=True, reward_fn=reward
    )
    return {
        "items": sorted(set(reward.items)),
        "local_grad": grads["local"][0],
        "synced_grad": grads["synced"][0],
        "before": before,
        "after": weights_hash(trained.transformer),
        "lora_left": any("lora" in k for k in trained.transformer.state_dict()),
        "steps": int(log["step"].max()),
    }


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    state = PartialState(cpu=True)
    rank = state.process_index
    result: dict[str, Any] = {"rank": rank, "world": state.num_processes}
    result["dapo"] = dapo_step(out, rank)
    result["flow_grpo"] = flow_grpo_step(out, rank)
    (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
