"""Parameter validation before any model loads, the hook that runs it first, and the security
rules (no remote code, safetensors weights only, relative paths stay inside the project)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from kedro.io import DataCatalog, DatasetError
from kedro.pipeline import Node, Pipeline
from kedro_datasets.pandas import ParquetDataset

from aot.datasets import ModelFolderDataset
from aot.validation import (
    ParameterError,
    catalog_path_errors,
    check_parameters,
    load_parameters,
    pickle_only_weights,
    sections_of,
    validate_parameters,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PAPER_CHECKPOINT = Path("/models/Qwen2.5-VL-7B-Instruct")


def _conf_copy(tmp_path: Path) -> Path:
    """conf/ copied into a temporary project root (conf/local left out), for editing."""
    shutil.copytree(
        PROJECT_ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local")
    )
    return tmp_path


def _edit(root: Path, relative: str, old: str, new: str) -> None:
    path = root / relative
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found exactly once in {relative}"
    path.write_text(text.replace(old, new))


def _errors(root: Path, env: str = "base", **kwargs: Any) -> list[str]:
    params, sources = load_parameters(root, env, **kwargs)
    return validate_parameters(params, root=root, sources=sources)


# ----------------------------------------------------------------- the real parameter sets


@pytest.mark.parametrize("env", ["base", "smoke"])
def test_the_project_parameter_sets_pass(env: str) -> None:
    assert _errors(PROJECT_ROOT, env) == []


def test_paper_without_its_checkpoint_names_defender_path() -> None:
    if PAPER_CHECKPOINT.exists():
        pytest.skip(f"{PAPER_CHECKPOINT} exists here")
    errors = _errors(PROJECT_ROOT, "paper")
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        f"conf/paper/parameters.yml: defender.path '{PAPER_CHECKPOINT}' does not exist"
    )


# ------------------------------------------------------------ one message per broken key


def test_a_negative_count_names_the_key_and_its_file(tmp_path: Path) -> None:
    root = _conf_copy(tmp_path)
    _edit(root, "conf/base/parameters_sft.yml", "max_steps: 1000", "max_steps: -3")
    assert _errors(root) == [
        "conf/base/parameters_sft.yml: sft.trainer.max_steps must be a positive integer, got -3"
    ]


def test_a_negative_distractor_grid_is_named(tmp_path: Path) -> None:
    root = _conf_copy(tmp_path)
    _edit(root, "conf/base/parameters_bootstrap_dataset.yml", "  grid: 0 ", "  grid: -28 ")
    assert _errors(root) == [
        "conf/base/parameters_bootstrap_dataset.yml: implant.grid must be an integer >= 0, got -28"
    ]


def test_a_wrong_type_names_the_key_and_its_file(tmp_path: Path) -> None:
    root = _conf_copy(tmp_path)
    _edit(root, "conf/base/parameters_bootstrap_dataset.yml", "image_size: 112", "image_size: big")
    _edit(
        root, "conf/base/parameters_selfplay.yml", "learning_rate: 0.00005", "learning_rate: fast"
    )
    assert _errors(root) == [
        "conf/base/parameters_bootstrap_dataset.yml: world.image_size must be an int >= 28, "
        "got 'big'",
        "conf/base/parameters_selfplay.yml: selfplay.defender.learning_rate must be a positive "
        "number, got 'fast'",
    ]


def test_a_grounding_layer_past_the_tiny_defenders_layers_is_named(tmp_path: Path) -> None:
    root = _conf_copy(tmp_path)
    _edit(
        root,
        "conf/base/parameters_bootstrap_dataset.yml",
        "grounding_layer: 2          #",
        "grounding_layer: 7          #",
    )
    assert _errors(root) == [
        "conf/base/parameters_bootstrap_dataset.yml: pretrain.trainer.grounding_layer is 7, but "
        "the tiny Defender has 4 LM layers (defender.tiny.num_layers)"
    ]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "rope_theta: 10000.0",
            "rope_theta: wide",
            "rope_theta must be a number above 1, got 'wide'",
        ),
        (
            "mrope_layout: interleaved",
            "mrope_layout: diagonal",
            "mrope_layout must be one of ('sections', 'interleaved'), got 'diagonal'",
        ),
    ],
)
def test_a_bad_rotary_setting_is_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    root = _conf_copy(tmp_path)
    _edit(root, "conf/base/parameters_sft.yml", old, new)
    errors = _errors(root)
    assert len(errors) == 1, errors
    assert errors[0].startswith("conf/base/parameters_sft.yml: defender.tiny")
    assert message in errors[0]


def test_an_unknown_filler_kind_is_named(tmp_path: Path) -> None:
    root = _conf_copy(tmp_path)
    _edit(
        root,
        "conf/base/parameters_bootstrap_dataset.yml",
        "kind: procedural          # procedural",
        "kind: gan                 # procedural",
    )
    assert _errors(root) == [
        "conf/base/parameters_bootstrap_dataset.yml: extension.filler.kind must be one of "
        "['procedural', 'diffusers'], got 'gan'"
    ]


def test_an_unknown_model_kind_is_named(tmp_path: Path) -> None:
    root = _conf_copy(tmp_path)
    _edit(root, "conf/base/parameters_sft.yml", "  source: tiny", "  source: huge")
    assert _errors(root) == [
        "conf/base/parameters_sft.yml: defender.source must be one of ['tiny', 'pretrained'], "
        "got 'huge'"
    ]


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    root = _conf_copy(tmp_path)
    _edit(root, "conf/base/parameters_sft.yml", "max_steps: 1000", "max_step: 1000")
    _edit(root, "conf/base/parameters_bootstrap_dataset.yml", "per_record: 2", "per_recrd: 2")
    errors = _errors(root)
    assert len(errors) == 2, errors
    assert errors[0].startswith(
        "conf/base/parameters_bootstrap_dataset.yml: implant.per_recrd is not a known key"
    )
    assert errors[1].startswith(
        "conf/base/parameters_sft.yml: sft.trainer: unknown key(s) ['max_step']"
    )


def test_a_missing_checkpoint_folder_is_named(tmp_path: Path) -> None:
    root = _conf_copy(tmp_path)
    _edit(root, "conf/base/parameters_sft.yml", "  source: tiny", "  source: pretrained")
    _edit(root, "conf/base/parameters_sft.yml", "path: null", "path: checkpoints/absent")
    (root / "inpaint").mkdir()  # a folder, but not a diffusers pipeline
    _edit(
        root,
        "conf/base/parameters_bootstrap_dataset.yml",
        "filler:\n    kind: procedural\n",
        "filler:\n    kind: diffusers\n    path: inpaint\n",
    )
    errors = _errors(root)
    assert len(errors) == 2, errors
    assert errors[0].startswith(
        "conf/base/parameters_bootstrap_dataset.yml: implant.filler.path 'inpaint' has no "
        "model_index.json"
    )
    assert errors[1].startswith(
        "conf/base/parameters_sft.yml: defender.path 'checkpoints/absent' does not exist"
    )


def test_a_checkpoint_with_pickled_weights_only_is_refused(tmp_path: Path) -> None:
    root = _conf_copy(tmp_path)
    checkpoint = root / "checkpoints" / "vlm"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    _edit(root, "conf/base/parameters_sft.yml", "  source: tiny", "  source: pretrained")
    _edit(root, "conf/base/parameters_sft.yml", "path: null", f"path: {checkpoint}")
    errors = _errors(root)
    assert (
        len(errors) == 1 and "holds weights only as pickle files (pytorch_model.bin)" in errors[0]
    )
    assert errors[0].startswith("conf/base/parameters_sft.yml: defender.path")
    (checkpoint / "model.safetensors").write_bytes(b"")
    assert _errors(root) == []


def test_an_environment_override_is_traced_to_its_own_file(tmp_path: Path) -> None:
    root = _conf_copy(tmp_path)
    _edit(root, "conf/smoke/parameters.yml", "trainer: {max_steps: 20,", "trainer: {max_steps: 0,")
    _edit(root, "conf/base/parameters_sft.yml", "learning_rate: 0.0005", "learning_rate: -1")
    errors = _errors(root, "smoke")
    assert errors == [
        "conf/smoke/parameters.yml: sft.trainer.max_steps must be a positive integer, got 0",
        "conf/base/parameters_sft.yml: sft.trainer.learning_rate must be positive, got -1",
    ]
    _edit(root, "conf/smoke/parameters.yml", "trainer: {max_steps: 0,", "trainer: {max_steps: 20,")
    assert _errors(root, "smoke") == [
        "conf/base/parameters_sft.yml: sft.trainer.learning_rate must be positive, got -1"
    ]


def test_a_command_line_override_is_named_as_such(tmp_path: Path) -> None:
    root = _conf_copy(tmp_path)
    errors = _errors(root, runtime_params={"baselines": {"rounds": 0}})
    assert errors == ["--params: baselines.rounds must be a positive integer, got 0"]
    errors = _errors(root, runtime_params={"baselines": {"threads": 0}})
    assert errors == ["--params: baselines.threads must be a positive integer, got 0"]


def test_every_problem_is_reported_in_one_error() -> None:
    params, sources = load_parameters(PROJECT_ROOT, "base")
    params["sft"]["trainer"]["batch_size"] = 0
    params["evaluation"]["protocols"] = ["greedy", "lenient"]
    params["seed"] = -1
    with pytest.raises(ParameterError) as raised:
        check_parameters(params, root=PROJECT_ROOT, sources=sources)
    assert len(raised.value.errors) == 3
    text = str(raised.value)
    assert "conf/base/parameters.yml: seed must be an integer >= 0, got -1" in text
    assert "conf/base/parameters_sft.yml: sft.trainer.batch_size must be a positive integer" in text
    assert (
        "conf/base/parameters_evaluation.yml: evaluation.protocols must be a non-empty list of ['greedy', 'strict']"
        in text
    )


def test_every_bad_field_of_one_typed_section_is_reported() -> None:
    """A typed config stops at its first bad field; the check builds it again without each
    field it named, so all of a section's problems come at once, and none made up by the
    defaults that take the left-out values' places."""
    params, sources = load_parameters(PROJECT_ROOT, "base")
    attacker = params["selfplay"]["attacker"]
    attacker.update(steps=-3, lr="abc", group_size=0)
    attacker["reward"]["k"] = 0
    errors = validate_parameters(params, sections=["selfplay.attacker"], sources=sources)
    keys = sorted(re.search(r"(selfplay\.attacker\.[\w.]+) must", e).group(1) for e in errors)
    assert keys == [
        "selfplay.attacker.group_size",
        "selfplay.attacker.lr",
        "selfplay.attacker.reward.k",
        "selfplay.attacker.steps",
    ]
    assert all(e.startswith("conf/base/parameters_selfplay.yml: ") for e in errors)
    attacker.update(steps=36, lr=1e-4, group_size=4)
    attacker["reward"]["k"] = 3
    assert validate_parameters(params, sections=["selfplay.attacker"]) == []
    # an unknown key names no field: it is reported alone, as before
    attacker.update(stepz=3, lr=-1.0)
    errors = validate_parameters(params, sections=["selfplay.attacker"])
    assert len(errors) == 1 and "stepz" in errors[0]


def test_only_the_sections_a_pipeline_reads_are_checked() -> None:
    params, _ = load_parameters(PROJECT_ROOT, "base")
    params["evaluation"]["trials"] = 0
    params["selfplay"]["defender"]["max_steps"] = 0
    sections = sections_of(["params:selfplay.defender", "params:baselines", "extended_records"])
    assert sections == {"selfplay.defender", "baselines"}
    errors = validate_parameters(params, sections=sections, root=PROJECT_ROOT)
    assert errors == ["selfplay.defender.max_steps must be a positive integer, got 0"]
    assert len(validate_parameters(params, root=PROJECT_ROOT)) == 2
    assert sections_of(["parameters", "params:seed"]) is None


# ------------------------------------------------------------------------------- paths


def test_relative_parameter_paths_cannot_leave_the_project(tmp_path: Path) -> None:
    root = _conf_copy(tmp_path)
    _edit(
        root,
        "conf/base/parameters_selfplay.yml",
        "    checkpoint_root: ${globals:data_root}/06_models/selfplay_checkpoints\n    save_every",
        "    checkpoint_root: ../../etc\n    save_every",
    )
    errors = _errors(root)
    assert len(errors) == 1, errors
    assert errors[0].startswith(
        "conf/base/parameters_selfplay.yml: selfplay.attacker.checkpoint_root '../../etc' "
        "resolves outside the project"
    )
    # An absolute path is an explicit choice; a relative one that stays inside is fine.
    _edit(
        root,
        "conf/base/parameters_selfplay.yml",
        "checkpoint_root: ../../etc",
        "checkpoint_root: /tmp/aot-checkpoints",
    )
    assert _errors(root) == []
    _edit(
        root,
        "conf/base/parameters_selfplay.yml",
        "/tmp/aot-checkpoints",
        "data/../data/checkpoints",
    )
    assert _errors(root) == []


def test_relative_catalog_paths_cannot_leave_the_project(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    errors = catalog_path_errors(
        {
            "escaping": f"{root}/../../etc/passwd",  # `../../etc/passwd` made absolute by Kedro
            "inside": f"{root}/data/01_raw/x.parquet",
            "absolute": "/srv/shared/x.parquet",
            "remote": "s3://bucket/x.parquet",
        },
        root,
    )
    assert len(errors) == 1
    assert errors[0].startswith(
        "catalog entry 'escaping': path '../../etc/passwd' resolves outside"
    )


# ------------------------------------------------------------------------------ the hook


def test_the_parameter_hook_runs_before_the_other_hooks(tmp_path: Path) -> None:
    """With broken parameters and a missing input, the run stops on the parameters: the
    validation runs first, before the seed or the missing-input hooks (or any model)."""
    from kedro.framework.hooks.manager import _create_hook_manager

    from aot.hooks import MissingUpstreamError, ParameterValidationHook
    from aot.settings import HOOKS

    assert any(isinstance(h, ParameterValidationHook) for h in HOOKS)
    manager = _create_hook_manager()
    for hook in HOOKS:
        manager.register(hook)
    root = _conf_copy(tmp_path)
    params, _ = load_parameters(root, "base")
    params["sft"]["trainer"]["max_steps"] = -3
    catalog = DataCatalog(datasets={"absent": ParquetDataset(filepath=str(root / "absent.pq"))})
    catalog["parameters"] = params
    pipeline = Pipeline([Node(lambda a, b: a, ["absent", "params:sft"], "out", name="n")])
    run_params = {"project_path": str(root), "env": "base", "runtime_params": {}}
    with pytest.raises(
        ParameterError,
        match=re.escape(
            "conf/base/parameters_sft.yml: sft.trainer.max_steps must be a positive integer, got -3"
        ),
    ):
        manager.hook.before_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)
    params["sft"]["trainer"]["max_steps"] = 3
    catalog["parameters"] = params  # the catalog holds a copy
    with pytest.raises(MissingUpstreamError):  # valid parameters: the next hook speaks
        manager.hook.before_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)


def test_the_parameter_hook_checks_catalog_paths(tmp_path: Path) -> None:
    from aot.hooks import ParameterValidationHook

    root = tmp_path.resolve()
    catalog = DataCatalog(
        datasets={"table": ParquetDataset(filepath=f"{root}/../outside/t.parquet")}
    )
    catalog["parameters"] = {"seed": 1}
    pipeline = Pipeline([Node(lambda a, s: a, ["table", "params:seed"], "out", name="n")])
    with pytest.raises(ParameterError, match="catalog entry 'table': path '../outside/t.parquet'"):
        ParameterValidationHook().before_pipeline_run(
            run_params={"project_path": str(root), "env": "base"},
            pipeline=pipeline,
            catalog=catalog,
        )


# ---------------------------------------------------------------------------- security


def test_no_source_file_trusts_remote_code() -> None:
    pattern = re.compile(r"""trust_remote_code["']?\s*[=:]\s*True""")
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}:{n}"
        for path in sorted((PROJECT_ROOT / "src").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert offenders == []
    assert pattern.search('load_args = {"trust_remote_code": True}')  # the pattern does match


def test_model_folder_dataset_refuses_remote_code_and_pickles_by_argument() -> None:
    with pytest.raises(DatasetError, match="trust_remote_code is never allowed"):
        ModelFolderDataset(path="x", load_args={"trust_remote_code": True})
    with pytest.raises(DatasetError, match="use_safetensors must stay true"):
        ModelFolderDataset(path="x", load_args={"use_safetensors": False})


class RecordingLoader:
    """A loader whose `from_pretrained` takes any keyword, as transformers' and diffusers' do."""

    calls: list[dict[str, Any]] = []

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> dict[str, Any]:
        cls.calls.append(kwargs)
        return {"path": path, **kwargs}


class StrictLoader:
    """A loader that enforces safetensors itself and takes no such argument (as Defender)."""

    @classmethod
    def from_pretrained(cls, path: str) -> str:
        return path


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def test_a_model_folder_with_pickled_weights_only_is_refused(tmp_path: Path) -> None:
    RecordingLoader.calls.clear()
    loader = f"{__name__}.RecordingLoader"
    transformers_like = _folder(
        tmp_path / "vlm", {"config.json": b"{}", "pytorch_model.bin": b"\x80\x04"}
    )
    diffusers_like = _folder(
        tmp_path / "pipe",
        {
            "model_index.json": b"{}",
            "unet/config.json": b"{}",
            "unet/diffusion_pytorch_model.bin": b"\x80\x04",
            "scheduler/scheduler_config.json": b"{}",
        },
    )
    for folder, name in (
        (transformers_like, "pytorch_model.bin"),
        (diffusers_like, "unet/diffusion_pytorch_model.bin"),
    ):
        for lazy in (False, True):
            dataset = ModelFolderDataset(path=str(folder), loader=loader, lazy=lazy)
            with pytest.raises(
                DatasetError, match=re.escape(f"weights only as pickle files ({name})")
            ):
                dataset.load()
    assert RecordingLoader.calls == []  # refused before any loader ran
    (diffusers_like / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert pickle_only_weights(diffusers_like) == []
    assert ModelFolderDataset(path=str(diffusers_like), loader=loader).load()["use_safetensors"]


def test_use_safetensors_is_passed_to_loaders_that_take_it(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "m", {"config.json": b"{}", "model.safetensors": b""})
    loaded = ModelFolderDataset(path=str(folder), loader=f"{__name__}.RecordingLoader").load()
    assert loaded["use_safetensors"] is True
    strict = ModelFolderDataset(
        path=str(folder), loader=f"{__name__}.StrictLoader", load_args={"use_safetensors": True}
    )
    assert strict.load() == str(folder)


def test_the_defender_refuses_a_folder_without_safetensors(tmp_path: Path) -> None:
    from aot.defender import Defender

    folder = _folder(
        tmp_path / "d", {"config.json": json.dumps({}).encode(), "pytorch_model.bin": b"\x80"}
    )
    with pytest.raises(FileNotFoundError, match="no .safetensors weights"):
        Defender.from_pretrained(folder)


def test_the_parameter_hook_names_files_of_the_runs_conf_source(tmp_path: Path) -> None:
    """`kedro run --conf-source <copy>` (as `aot.evaluation.seeds` does): errors name the files
    of that copy, found through the run's config loader."""
    from types import SimpleNamespace

    from aot.hooks import ParameterValidationHook

    root = tmp_path / "project"
    root.mkdir()
    copy = _conf_copy(tmp_path / "seed_copy")
    _edit(
        copy,
        "conf/smoke/parameters.yml",
        "baselines:\n  max_records: 16",
        "baselines:\n  max_records: -1",
    )
    params, _ = load_parameters(copy, "smoke")
    loader = SimpleNamespace(conf_source=str(copy / "conf"), base_env="base", env="smoke")
    hook = ParameterValidationHook()
    hook.after_context_created(SimpleNamespace(config_loader=loader))
    catalog = DataCatalog()
    catalog["parameters"] = params
    pipeline = Pipeline([Node(lambda b: b, ["params:baselines"], "out", name="n")])
    with pytest.raises(
        ParameterError,
        match=re.escape(
            f"{(copy / 'conf/smoke/parameters.yml').as_posix()}: baselines.max_records must be a "
            "positive integer, got -1"
        ),
    ):
        hook.before_pipeline_run(
            run_params={"project_path": str(root), "env": "smoke"},
            pipeline=pipeline,
            catalog=catalog,
        )


def test_the_evaluation_image_cache_takes_a_size_in_megabytes() -> None:
    params, _ = load_parameters(PROJECT_ROOT, "base")
    assert validate_parameters(params, sections={"evaluation"}, root=PROJECT_ROOT) == []
    params["evaluation"]["image_cache_mb"] = -1
    errors = validate_parameters(params, sections={"evaluation"}, root=PROJECT_ROOT)
    assert errors == ["evaluation.image_cache_mb must be an integer >= 0, got -1"]


def test_pretraining_family_weights_name_an_unknown_family() -> None:
    params, sources = load_parameters(PROJECT_ROOT, "base")
    params["pretrain"]["data"]["family_weights"] = {"spatial": 3, "colour": 1}
    assert validate_parameters(params, root=PROJECT_ROOT, sources=sources) == [
        "conf/base/parameters_bootstrap_dataset.yml: pretrain.data.family_weights must map "
        "question families (spatial, attribute, count, existence) to numbers > 0, got "
        "{'spatial': 3, 'colour': 1}"
    ]
