"""Paper scale: the accelerate configs, the `aot.distributed` entry point, and a 2-process CPU run
(gloo) of one DAPO step and one Flow-GRPO step whose gradients must be averaged over processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = PROJECT_ROOT / "conf" / "accelerate"
SCRIPT = PROJECT_ROOT / "tests" / "scripts" / "distributed_one_step.py"


# ------------------------------------------------------------------------ accelerate configs


def _launch_args() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    return {a.dest for a in launch_command_parser()._actions}


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_accelerate_configs_fit_accelerates_schema(name: str) -> None:
    """Each file loads with accelerate's own config class (unknown keys are refused) and its
    FSDP / DeepSpeed keys are options `accelerate launch` knows."""
    from accelerate.commands.config.config_args import ClusterConfig

    path = CONFIGS / name
    config = ClusterConfig.from_yaml_file(str(path))
    known = _launch_args()
    for key in config.fsdp_config or {}:
        assert (key if key.startswith("fsdp_") else f"fsdp_{key}") in known, key
    for key in config.deepspeed_config or {}:
        assert key in known, key
    assert config.num_processes >= 2 * config.num_machines


def test_fsdp_wraps_qwen2_5_vl_layers() -> None:
    from accelerate.utils import DistributedType
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

    for name in ("fsdp.yaml", "multi_node_fsdp.yaml"):
        raw = yaml.safe_load((CONFIGS / name).read_text())
        assert raw["distributed_type"] == DistributedType.FSDP.value
        fsdp = raw["fsdp_config"]
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert fsdp["fsdp_reshard_after_forward"] is True  # full shard
        assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # a plain final folder
        for cls in fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","):
            assert hasattr(modeling_qwen2_5_vl, cls), cls
    multi = yaml.safe_load((CONFIGS / "multi_node_fsdp.yaml").read_text())
    assert multi["num_machines"] > 1 and "machine_rank" in multi and "main_process_ip" in multi


@pytest.mark.parametrize(
    "name", ["fsdp.yaml", "multi_node_fsdp.yaml", "ddp_multi_gpu.yaml", "cpu_gloo_2proc.yaml"]
)
def test_accelerate_launch_turns_the_configs_into_the_expected_environment(name: str) -> None:
    """What `accelerate launch --config_file <name>` hands the processes (its own argument
    checks and torchrun environment, nothing started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "x.py"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    if "fsdp" in name:
        assert args.use_fsdp and env["ACCELERATE_USE_FSDP"] == "true"
        assert env["FSDP_VERSION"] == "2" and env["FSDP_RESHARD_AFTER_FORWARD"] == "true"
        assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "Qwen2_5_VLDecoderLayer,Qwen2_5_VLVisionBlock"
        assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    else:
        assert args.multi_gpu and "ACCELERATE_USE_FSDP" not in env  # torchrun, plain DDP
    expected = {"cpu_gloo_2proc.yaml": "no"}.get(name, "bf16")
    assert env["ACCELERATE_MIXED_PRECISION"] == expected
    assert args.num_processes == (
        16 if name.startswith("multi_node") else 2 if "cpu" in name else 8
    )


# ------------------------------------------------------------------------ the entry point


def test_params_overrides_parse_like_kedro_run() -> None:
    from aot.distributed import parse_params

    assert parse_params("selfplay.defender.max_steps=2,seed=7,x.y=a") == {
        "selfplay": {"defender": {"max_steps": 2}},
        "seed": 7,
        "x": {"y": "a"},
    }
    assert parse_params(None) == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_params("oops")


def test_round_inputs_follow_the_selfplay_pipeline() -> None:
    from aot.distributed import round_inputs

    rounds = ["round_1", "round_2"]
    assert round_inputs("round_1", rounds) == {
        "attacker": "cold_attacker",
        "defender": "sft_defender",
    }
    assert round_inputs("round_2", rounds) == {
        "attacker": "selfplay.round_1.attacker",
        "defender": "selfplay.round_1.defender",
    }
    with pytest.raises(ValueError, match="round_9"):
        round_inputs("round_9", rounds)


def test_project_config_reads_the_paper_environment() -> None:
    """The entry point's view of `--env paper`: Kedro's loader with the project's settings
    (soft-merged parameters, catalog factories resolved to absolute paths), and the checks of
    the sections a trainer reads pass (the paper attacker's LoRA included)."""
    from aot.distributed import ProjectConfig

    config = ProjectConfig(PROJECT_ROOT, "paper", {"selfplay": {"defender": {"max_steps": 3}}})
    attacker = config.params["selfplay"]["attacker"]
    assert "to_add_out" in attacker["lora"]["target_modules"]
    assert attacker["steps"] == 36  # from conf/base: the paper env overrides single keys
    assert attacker["reward"]["graded"] is False  # ... and this one: all K answers wrong
    assert config.params["selfplay"]["defender"]["learning_rate"] == 1.0e-6
    assert config.params["selfplay"]["defender"]["max_steps"] == 3
    config.check(["selfplay.attacker", "selfplay.defender", "seed"])
    dataset = config.catalog.get("selfplay.round_2.defender")
    assert Path(dataset.path) == PROJECT_ROOT / "data/06_models/selfplay/round_2/defender"


def test_the_entry_point_refuses_an_unknown_trainer() -> None:
    from aot.distributed import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["sft", "--round", "round_1"])
    args = build_parser().parse_args(["flow_grpo", "--round", "round_2", "--env", "paper"])
    assert (args.trainer, args.round, args.env) == ("flow_grpo", "round_2", "paper")


def test_the_entry_point_stops_on_a_missing_input_and_names_it(project_copy: Path) -> None:
    """`python -m aot.distributed` end to end up to the first load, in a project copy whose
    data/ is empty: configuration, parameter checks, catalog, then the missing round input."""
    result = subprocess.run(
        [sys.executable, "-m", "aot.distributed", "dapo", "--round", "round_1", "--env", "smoke"],
        cwd=project_copy,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "sft_defender" in output and "data/smoke/06_models/defender_sft" in output
    assert not (project_copy / "data" / "smoke" / "06_models" / "selfplay").exists()


# ------------------------------------------------------------------ 2 processes on the CPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_take_the_same_averaged_step(tmp_path: Path) -> None:
    """`accelerate launch` with conf/accelerate/cpu_gloo_2proc.yaml: 2 processes, gloo. Each
    runs one DAPO step (TRL GRPOTrainer through `aot.distributed.run_dapo`, dynamic sampling
    on) and one Flow-GRPO step (tiny Qwen-Image-Edit, LoRA, through `run_flow_grpo`) on its own
    prompts. The processes' local gradients differ, the averaged ones (Flow-GRPO) are their
    mean, the weights after each step are identical on both processes and differ from the
    weights before, and the main process alone wrote the output folders."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    start = time.perf_counter()
    result = subprocess.run(
        [
            accelerate,
            "launch",
            "--config_file",
            str(CONFIGS / "cpu_gloo_2proc.yaml"),
            "--main_process_port",
            str(_free_port()),
            str(SCRIPT),
            str(tmp_path),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)

    dapo = [r["dapo"] for r in ranks]
    assert set(dapo[0]["prompts"]).isdisjoint(dapo[1]["prompts"])  # each its own prompts
    assert dapo[0]["local_grad"] != dapo[1]["local_grad"]  # ... so different local gradients
    assert dapo[0]["before"] == dapo[1]["before"]
    assert dapo[0]["after"] == dapo[1]["after"] != dapo[0]["before"]  # one step, in sync
    assert all(d["steps"] == 1 and d["groups_kept"] == 2 for d in dapo)

    flow = [r["flow_grpo"] for r in ranks]
    assert set(flow[0]["items"]).isdisjoint(flow[1]["items"])
    assert flow[0]["local_grad"] != flow[1]["local_grad"]
    assert flow[0]["synced_grad"] == flow[1]["synced_grad"]
    local = zip(flow[0]["local_grad"][1:], flow[1]["local_grad"][1:], strict=True)
    mean = [(a + b) / 2 for a, b in local]
    assert flow[0]["synced_grad"][1:] == pytest.approx(mean, rel=1e-5, abs=1e-9)
    assert flow[0]["before"] == flow[1]["before"]
    assert flow[0]["after"] == flow[1]["after"] != flow[0]["before"]
    assert not any(f["lora_left"] for f in flow)  # adapters merged back

    # the main process's outputs: whole model folders, no temporary leftovers
    assert (tmp_path / "defender" / "model.safetensors").is_file()
    assert (tmp_path / "attacker" / "model_index.json").is_file()
    assert (tmp_path / "attacker" / "planner").is_dir()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or "tmp" in p.name]
    assert leftovers == []
    from aot.distributed import load_attacker

    reloaded = load_attacker(tmp_path / "attacker")
    assert type(reloaded).__name__ == "QwenImageEditPipeline"
    print(f"2-process CPU run: {elapsed:.0f} s")  # noqa: T201
