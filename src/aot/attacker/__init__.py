"""The Attacker: a box-edit diffusion model that edits an image near, never on, a question's objects.

A 7-channel class-conditioned ``UNet2DModel`` works on a crop around the edit box (design A of
``shared/notes/exp-attacker-editor.md``); ``BoxEditPipeline`` wraps it as a diffusers pipeline.
``cold_start`` trains it with flow matching on procedural and given edit pairs, ``quality``
scores edits against the world's exact filler, and ``editing`` / ``sde`` hold the tensor-level
functions the Flow-GRPO trainer builds on. ``flow_sampler`` (the ``FlowEditor`` interface and the
log-prob sampler), ``planner`` (where / how / what to edit), ``rollout`` (the items attacked and
a step's sampled edits), ``attack_reward`` (the integrity x efficacy reward of
``aot.rewards.attack`` with the frozen Defender's answers), ``flow_grpo_config`` (its settings)
and ``flow_grpo`` (the RL loop) are the Flow-GRPO stage; ``qwen_edit`` plugs Qwen-Image-Edit (the
paper's Attacker) into it.
"""

from aot.attacker.attack_reward import DefenderAttackReward
from aot.attacker.cold_start import ColdStartConfig, draw_batch, train_cold_start
from aot.attacker.config import AttackerConfig, build_unet
from aot.attacker.crops import crop_window, model_to_uint8, pil_to_model, uint8_to_model
from aot.attacker.editing import flow_matching_loss, paste_back, sample_crops, to_crops, velocity
from aot.attacker.flow_grpo import FlowGRPOTrainer, train_attacker_flow_grpo
from aot.attacker.flow_grpo_config import FlowGRPOConfig
from aot.attacker.flow_sampler import (
    CropConditioning,
    FlowEditor,
    QwenImageEditEditor,
    UNetCropEditor,
    sample_flow_sde,
    step_log_prob,
)
from aot.attacker.loading import AttackerPipeline, PipelineWithPlanner, with_planner
from aot.attacker.pairs import (
    EditExample,
    EditPairs,
    iter_edit_examples,
    make_edit_pairs,
    pairs_from_records,
)
from aot.attacker.pipeline import BoxEditPipeline, build_box_edit_pipeline
from aot.attacker.planner import EditPlan, EditPlanner, PlannerConfig, paper_instruction, plan_space
from aot.attacker.prompts import (
    NULL_CLASS,
    NUM_CLASS_EMBEDS,
    REMOVE_CLASS,
    REMOVE_PROMPT,
    class_prompt,
    class_to_edit,
    object_class,
    prompt_to_class,
)
from aot.attacker.quality import box_mse, colour_match, edit_quality, run_edits, shape_match
from aot.attacker.qwen_edit import (
    QWEN_IMAGE_LORA_TARGETS,
    build_tiny_qwen_image_edit,
    is_qwen_image_edit,
)
from aot.attacker.sde import SampleTrace, flow_sde_step

__all__ = [
    "AttackerPipeline",
    "PipelineWithPlanner",
    "with_planner",
    "NULL_CLASS",
    "NUM_CLASS_EMBEDS",
    "REMOVE_CLASS",
    "REMOVE_PROMPT",
    "AttackerConfig",
    "BoxEditPipeline",
    "ColdStartConfig",
    "CropConditioning",
    "DefenderAttackReward",
    "EditExample",
    "EditPairs",
    "EditPlan",
    "EditPlanner",
    "FlowEditor",
    "FlowGRPOConfig",
    "FlowGRPOTrainer",
    "PlannerConfig",
    "QWEN_IMAGE_LORA_TARGETS",
    "QwenImageEditEditor",
    "SampleTrace",
    "UNetCropEditor",
    "box_mse",
    "build_box_edit_pipeline",
    "build_tiny_qwen_image_edit",
    "build_unet",
    "class_prompt",
    "class_to_edit",
    "colour_match",
    "crop_window",
    "draw_batch",
    "edit_quality",
    "flow_matching_loss",
    "flow_sde_step",
    "is_qwen_image_edit",
    "iter_edit_examples",
    "make_edit_pairs",
    "model_to_uint8",
    "object_class",
    "pairs_from_records",
    "paper_instruction",
    "paste_back",
    "pil_to_model",
    "plan_space",
    "prompt_to_class",
    "run_edits",
    "sample_crops",
    "sample_flow_sde",
    "shape_match",
    "step_log_prob",
    "to_crops",
    "train_attacker_flow_grpo",
    "train_cold_start",
    "uint8_to_model",
    "velocity",
]
