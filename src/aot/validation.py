"""Checks that run before any model loads or any node works: the parameters tree, paths taken
from parameters and the catalog, model folders, and the record tables and images nodes get.

Plain functions, no Kedro import at module level (`aot.hooks` only wires them into a run):

* ``validate_parameters(params, sections=..., root=..., sources=...)`` checks the parameters
  tree with the project's typed configs (``WorldConfig``, ``DefenderSFTConfig``,
  ``DefenderDAPOConfig``, ``FlowGRPOConfig``, ``CurriculumConfig``, ``AttackRewardConfig``,
  ``ColdStartConfig``, ``TinyDefenderConfig``, ...; their own rules, never copies of them) plus
  simple checks of the remaining keys (counts, known filler kinds and model sources, model
  folders that must exist, relative paths that must stay inside the project). Every problem is
  one line naming the dotted key and, through ``ParameterSources``, the parameters file it comes
  from, e.g. ``conf/base/parameters_sft.yml: sft.trainer.max_steps must be a positive integer,
  got -3``; ``check_parameters`` raises one ``ParameterError`` listing them all.
* ``catalog_path_errors`` flags catalog paths that were relative and climb out of the project.
* ``pickle_only_weights`` finds model weights stored only as pickles (loaded weights must be
  safetensors: unpickling can run code).
* ``check_record_table`` validates a record table (``aot.world.validate_records``) against the
  sizes of the images it references, after checking that every such image file decodes; errors
  name the table, the record and the file.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# --------------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Issue:
    """One problem: the dotted parameter key it is about, and a message that starts with it."""

    key: str
    message: str


class ParameterError(ValueError):
    """The parameters are invalid; ``errors`` holds one line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(
            f"{len(self.errors)} invalid parameter(s); nothing was run:\n{lines}\n"
            "Fix them in the file named on each line (or in the --params override)."
        )


# ------------------------------------------------------------------ where a key is defined

_PARAMETER_SUFFIXES = (".yml", ".yaml", ".json")


def _depth(tree: Any, parts: Sequence[str]) -> int:
    """How many leading ``parts`` exist as nested keys of ``tree``."""
    depth = 0
    for part in parts:
        if not isinstance(tree, Mapping) or part not in tree:
            break
        tree = tree[part]
        depth += 1
    return depth


def _key_parts(key: str) -> list[str]:
    """``world.backgrounds['plain']`` -> ``['world', 'backgrounds']`` (indexes are not keys)."""
    return [p for p in re.sub(r"\[.*?\]", "", key).split(".") if p]


def parameter_files(env_dir: Path) -> list[Path]:
    """The files Kedro reads parameters from in one environment folder (``parameters*``,
    ``parameters*/**``, ``**/parameters*``), in a stable order."""
    if not env_dir.is_dir():
        return []
    found = []
    for path in sorted(env_dir.rglob("*")):
        relative = path.relative_to(env_dir).parts
        if (
            path.is_file()
            and path.suffix in _PARAMETER_SUFFIXES
            and not any(p.startswith(".") for p in relative)
            and any(p.startswith("parameters") for p in relative)
        ):
            found.append(path)
    return found


@dataclass
class ParameterSources:
    """Finds which parameters file (or ``--params``) a dotted key's value comes from.

    Environments are soft-merged (conf/<env> overrides single keys of conf/base), so the file is
    the one holding the longest part of the key; on a tie the run environment wins over base.
    """

    files: list[tuple[str, Any]] = field(
        default_factory=list
    )  # (label, parsed content), base first
    runtime: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def scan(
        cls,
        conf_source: str | os.PathLike,
        envs: Iterable[str | None],
        *,
        root: str | os.PathLike | None = None,
        runtime_params: Mapping[str, Any] | None = None,
    ) -> ParameterSources:
        conf = Path(conf_source)
        base = Path(root) if root is not None else None
        files: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for env in envs:
            if not env or env in seen:
                continue
            seen.add(env)
            for path in parameter_files(conf / env):
                try:
                    content = yaml.safe_load(path.read_text())
                except (OSError, yaml.YAMLError):
                    continue
                label = path.as_posix()
                if base is not None and path.is_relative_to(base):
                    label = path.relative_to(base).as_posix()
                files.append((label, content))
        return cls(files, dict(runtime_params or {}))

    def locate(self, key: str) -> str | None:
        parts = _key_parts(key)
        if not parts:
            return None
        if self.runtime and _depth(self.runtime, parts) == len(parts):
            return "--params"
        best: tuple[int, int, str] | None = None
        for priority, (label, content) in enumerate(self.files):
            depth = _depth(content, parts)
            if depth and (best is None or (depth, priority) >= best[:2]):
                best = (depth, priority, label)
        return best[2] if best else None

    def describe(self, issue: Issue) -> str:
        where = self.locate(issue.key)
        return f"{where}: {issue.message}" if where else issue.message


# ----------------------------------------------------------------------------- simple rules

Rule = Callable[[Any], str | None]  # None when fine, else what the value must be


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(value: Any) -> str | None:
    return None if _is_int(value) and value > 0 else "must be a positive integer"


def non_negative_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 0 else "must be an integer >= 0"


def optional_positive_int(value: Any) -> str | None:
    return None if value is None else positive_int(value)


def fraction(value: Any) -> str | None:
    return None if _is_number(value) and 0 <= value <= 1 else "must be a number in [0, 1]"


def non_negative_number(value: Any) -> str | None:
    return None if _is_number(value) and value >= 0 else "must be a number >= 0"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def one_of(choices: Iterable[str]) -> Rule:
    allowed = tuple(choices)
    return lambda value: None if value in allowed else f"must be one of {list(allowed)}"


def subset_of(choices: Iterable[str], *, empty: bool = True) -> Rule:
    allowed = tuple(choices)

    def rule(value: Any) -> str | None:
        ok = isinstance(value, list | tuple) and all(v in allowed for v in value)
        if ok and (empty or value):
            return None
        return f"must be a {'' if empty else 'non-empty '}list of {list(allowed)}"

    return rule


def int_range(low: int) -> Rule:
    """``[a, b]`` with ``low <= a <= b`` (a range of counts or sizes)."""

    def rule(value: Any) -> str | None:
        ok = (
            isinstance(value, list | tuple)
            and len(value) == 2
            and all(_is_int(v) for v in value)
            and low <= value[0] <= value[1]
        )
        return None if ok else f"must be a pair [a, b] of integers with {low} <= a <= b"

    return rule


def number_at_least(low: float) -> Rule:
    return lambda value: (
        None if _is_number(value) and value >= low else f"must be a number >= {low}"
    )


# ---------------------------------------------------------------------------------- paths

_PATH_KEY = re.compile(r"^(path|.*_(path|root|dir|folder))$")


def is_path_key(key: str) -> bool:
    """Parameter keys that hold a path: ``path``, ``*_path``, ``*_root``, ``*_dir``, ``*_folder``."""
    return bool(_PATH_KEY.match(_key_parts(key)[-1] if _key_parts(key) else ""))


def escapes_root(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` is relative and, resolved against ``root`` (lexically: a link inside the
    project, such as a linked checkpoint, is fine), lands outside ``root``."""
    text = os.path.expanduser(os.fspath(path))  # `~/models` is absolute: the user's choice
    if os.path.isabs(text) or "://" in text:
        return False
    base = os.path.normpath(os.path.abspath(os.fspath(root)))
    target = os.path.normpath(os.path.join(base, text))
    return os.path.commonpath([base, target]) != base


def path_issues(key: str, value: Any, root: Path) -> list[Issue]:
    if value is None:
        return []
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        return [Issue(key, f"{key} must be a path (a non-empty string), got {value!r}")]
    if escapes_root(value, root):
        return [
            Issue(
                key,
                f"{key} '{os.fspath(value)}' resolves outside the project ({root}); relative "
                "paths must stay inside it (use an absolute path for data kept elsewhere)",
            )
        ]
    return []


def catalog_path_errors(paths: Mapping[str, Any], root: str | os.PathLike) -> list[str]:
    """Catalog entries whose path was relative and climbs out of the project root.

    Kedro makes relative catalog paths absolute by prefixing the project path without
    normalising it, so ``../../etc`` arrives as ``<root>/../../etc``; a path that was absolute
    from the start is the user's explicit choice and passes.
    """
    base = os.path.normpath(os.path.abspath(os.fspath(root)))
    errors = []
    for name, raw in sorted(paths.items()):
        text = os.fspath(raw)
        if "://" in text:
            continue
        if os.path.isabs(text):
            if not text.startswith(base + os.sep):
                continue
            text = text[len(base) + 1 :]
        if escapes_root(text, base):
            errors.append(
                f"catalog entry '{name}': path '{text}' resolves outside the project ({base}); "
                "relative catalog paths must stay inside it (use an absolute path for data "
                "kept elsewhere)"
            )
    return errors


# ------------------------------------------------------------------------- model folders

# Pickle formats of model weights that `from_pretrained` would unpickle. `*.pt` files are not
# model weights of a saved folder here: the Attacker's planner is saved as
# `planner/planner.safetensors` (a legacy `planner.pt` is read with `torch.load(weights_only=True)`,
# which refuses arbitrary objects); resumable trainer states are a run's own checkpoints under
# `checkpoint_root`, never loaded through a model folder.
PICKLE_WEIGHTS = (".bin", ".ckpt", ".pkl", ".pickle")
NOT_WEIGHTS = ("training_args.bin",)


def pickle_only_weights(folder: str | os.PathLike) -> list[Path]:
    """Pickled weight files of ``folder`` (and its component subfolders, e.g. a diffusers
    ``unet/``) that have no ``.safetensors`` file beside them."""
    root = Path(folder)
    found: list[Path] = []
    if not root.is_dir():
        return found
    for dirpath, _dirnames, filenames in os.walk(root):
        if any(name.endswith(".safetensors") for name in filenames):
            continue
        found += [
            Path(dirpath, name)
            for name in sorted(filenames)
            if name.endswith(PICKLE_WEIGHTS) and name not in NOT_WEIGHTS
        ]
    return found


def has_safetensors(folder: str | os.PathLike) -> bool:
    root = Path(folder)
    return any(
        name.endswith((".safetensors", ".safetensors.index.json"))
        for _dirpath, _dirnames, names in os.walk(root)
        for name in names
    )


def model_folder_problem(folder: str | os.PathLike, marker: str) -> str | None:
    """Why ``folder`` is not a loadable local model folder (``marker``: ``config.json`` for
    transformers, ``model_index.json`` for diffusers), or None."""
    path = Path(folder).expanduser()
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is not a folder"
    if not (path / marker).is_file():
        return f"has no {marker}; is it a saved model folder?"
    pickled = pickle_only_weights(path)
    if pickled:
        names = ", ".join(p.relative_to(path).as_posix() for p in pickled[:3])
        return (
            f"holds weights only as pickle files ({names}); only .safetensors weights are "
            "loaded (re-save it with save_pretrained(..., safe_serialization=True))"
        )
    if not has_safetensors(path):
        return "has no .safetensors weights (only safetensors are loaded)"
    return None


def _model_folder_issues(key: str, value: Any, root: Path, marker: str, why: str) -> list[Issue]:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        return [Issue(key, f"{key} must name a local model folder ({why}), got {value!r}")]
    issues = path_issues(key, value, root)
    if issues:
        return issues
    folder = Path(os.path.expanduser(os.fspath(value)))
    folder = folder if folder.is_absolute() else root / folder
    problem = model_folder_problem(folder, marker)
    if problem:
        return [Issue(key, f"{key} '{os.fspath(value)}' {problem} ({why})")]
    return []


# ------------------------------------------------------------------ typed configs, reused


def _issue_from(key: str, message: str, owners: Mapping[str, str]) -> Issue:
    """A typed config's error as an Issue on the dotted key: its owner name (``WorldConfig``)
    is replaced by the parameter section it was built from (``world``)."""
    for owner in sorted(owners, key=len, reverse=True):
        if message.startswith(owner) and message[len(owner) : len(owner) + 1] in ".: [":
            message = owners[owner] + message[len(owner) :]
            break
    match = re.match(r"[A-Za-z_][\w.]*", message)
    named = match.group(0).rstrip(".") if match else ""
    if named != key and not named.startswith(key + "."):
        return Issue(key, f"{key}: {message}")
    return Issue(named, message)


def _typed(
    key: str,
    build: Callable[[dict[str, Any]], object],
    given: Mapping[str, Any] | None,
    owners: Mapping[str, str] | None = None,
) -> list[Issue]:
    """Builds a typed config from ``given`` (the section's mapping) and returns its problems.

    A config stops at its first bad field, so each field an error names is left out (it takes
    its default) and the config is built again, until it builds or an error names no field of
    ``given`` (unknown keys, a rule across fields): every field's problem is listed at once.
    """
    rest = dict(given or {})
    issues: list[Issue] = []
    while True:
        try:
            build(dict(rest))
            return issues
        except (ValueError, TypeError, KeyError) as err:
            text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
            issue = _issue_from(key, text, owners or {})
        field = issue.key.removeprefix(f"{key}.").split(".")[0] if issue.key != key else None
        if field not in rest:
            # after a field was left out, a problem of no field still given may come from the
            # default that took the left-out value's place: only the first error is sure
            return issues or [issue]
        issues.append(issue)
        del rest[field]


# ----------------------------------------------------------------------------- the sections


@dataclass(frozen=True)
class _Context:
    params: Mapping[str, Any]
    root: Path

    def world(self) -> dict[str, Any]:
        """``world`` if it is valid (other sections are checked against it), else the defaults."""
        from aot.world import WorldConfig

        world = self.params.get("world")
        try:
            WorldConfig.from_dict(dict(world))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return {}
        return dict(world)  # type: ignore[arg-type]

    def seed(self) -> int:
        seed = self.params.get("seed", 0)
        return seed if _is_int(seed) and seed >= 0 else 0


Nested = Callable[[str, Any, _Context], list[Issue]]


def _mapping_issue(key: str, value: Any) -> list[Issue]:
    if isinstance(value, Mapping):
        return []
    return [Issue(key, f"{key} must be a mapping of keys, got {value!r}")]


def _plain(
    key: str,
    value: Any,
    ctx: _Context,
    rules: Mapping[str, Rule],
    nested: Mapping[str, Nested] | None = None,
) -> list[Issue]:
    """Unknown keys, per-key ``rules`` and ``nested`` sections of one mapping."""
    if _mapping_issue(key, value):
        return _mapping_issue(key, value)
    nested = nested or {}
    known = sorted({*rules, *nested})
    issues = [
        Issue(f"{key}.{name}", f"{key}.{name} is not a known key; known keys: {known}")
        for name in value
        if name not in rules and name not in nested
    ]
    for name, rule in rules.items():
        if name in value:
            problem = rule(value[name])
            if problem:
                issues.append(
                    Issue(f"{key}.{name}", f"{key}.{name} {problem}, got {value[name]!r}")
                )
    for name, check in nested.items():
        if name in value:
            issues += check(f"{key}.{name}", value[name], ctx)
    return issues


def _answer_modes() -> tuple[str, ...]:
    from aot.defender.dapo import ANSWER_MODES

    return ANSWER_MODES


def _prompt_styles() -> tuple[str, ...]:
    from aot.rewards import PROMPT_STYLES

    return PROMPT_STYLES


def _splits() -> tuple[str, ...]:
    from aot.pipelines.bootstrap_dataset.nodes import SPLITS

    return SPLITS


def _check_seed(key: str, value: Any, ctx: _Context) -> list[Issue]:
    problem = non_negative_int(value)
    return [Issue(key, f"{key} {problem}, got {value!r}")] if problem else []


def _check_world(key: str, value: Any, ctx: _Context) -> list[Issue]:
    from aot.world import WorldConfig

    if _mapping_issue(key, value):
        return _mapping_issue(key, value)
    return _typed(key, WorldConfig.from_dict, value, {"WorldConfig": key})


def _check_splits(key: str, value: Any, ctx: _Context) -> list[Issue]:
    import numpy as np

    from aot.pipelines.bootstrap_dataset.nodes import _split_names

    if _mapping_issue(key, value):
        return _mapping_issue(key, value)
    return _typed(key, lambda v: _split_names(1, v, np.random.default_rng(0)), value)


def _check_questions(key: str, value: Any, ctx: _Context) -> list[Issue]:
    from aot.world import QuestionConfig, WorldConfig

    if _mapping_issue(key, value):
        return _mapping_issue(key, value)
    world = WorldConfig.from_dict(ctx.world())
    vocabulary = {"colors": list(world.colors), "shapes": list(world.shapes)}
    return _typed(
        key, lambda v: QuestionConfig.from_dict({**vocabulary, **v}), value, {"QuestionConfig": key}
    )


def _check_source(key: str, value: Any, ctx: _Context) -> list[Issue]:
    return _plain(
        key,
        value,
        ctx,
        {"n_scenes": positive_int},
        {"splits": _check_splits, "questions": _check_questions},
    )


def _check_filler(key: str, value: Any, ctx: _Context) -> list[Issue]:
    from aot.bootstrap.fillers import FILLER_KINDS, DiffusersFiller, make_filler

    if _mapping_issue(key, value):
        return _mapping_issue(key, value)
    kind = value.get("kind", "procedural")
    if kind not in FILLER_KINDS:
        return [
            Issue(f"{key}.kind", f"{key}.kind must be one of {list(FILLER_KINDS)}, got {kind!r}")
        ]
    if kind == "procedural":
        return _typed(key, lambda v: make_filler({"world": ctx.world(), **v}), value)
    # diffusers: the pipeline is only loaded by the node; here its folder and arguments.
    accepted = set(inspect.signature(DiffusersFiller.__init__).parameters) - {"self"}
    issues = [
        Issue(
            f"{key}.{name}",
            f"{key}.{name} is not an argument of the diffusers filler; "
            f"known: {sorted(accepted | {'kind'})}",
        )
        for name in value
        if name != "kind" and name not in accepted
    ]
    return issues + _model_folder_issues(
        f"{key}.path",
        value.get("path"),
        ctx.root,
        "model_index.json",
        "the diffusers filler loads a local inpainting pipeline",
    )


def _check_checks(key: str, value: Any, ctx: _Context) -> list[Issue]:
    from aot.bootstrap import CheckConfig

    if value is not None and _mapping_issue(key, value):
        return _mapping_issue(key, value)
    return _typed(key, CheckConfig.from_dict, value, {"CheckConfig": key})


def _check_extension(key: str, value: Any, ctx: _Context) -> list[Issue]:
    return _plain(
        key,
        value,
        ctx,
        {"ratio": number_at_least(1.0), "clutter": int_range(0)},
        {"filler": _check_filler, "checks": _check_checks},
    )


def _check_implant(key: str, value: Any, ctx: _Context) -> list[Issue]:
    return _plain(
        key,
        value,
        ctx,
        {
            "max_records": optional_positive_int,
            "per_record": positive_int,
            "size_range": int_range(1),
            "margin": non_negative_int,
            "hard_prob": fraction,
            "grid": non_negative_int,
        },
        {"filler": _check_filler},
    )


def _check_effectiveness(key: str, value: Any, ctx: _Context) -> list[Issue]:
    return _plain(
        key,
        value,
        ctx,
        {
            "k": positive_int,
            "temperature": non_negative_number,
            "answer_mode": one_of(_answer_modes()),
            "prompt_style": one_of(_prompt_styles()),
            "clean_min": fraction,
            "edited_max": fraction,
            "batch_size": positive_int,
            "max_new_tokens": positive_int,
        },
    )


def _sft_trainer(key: str, value: Any, ctx: _Context) -> list[Issue]:
    from aot.defender.sft import DefenderSFTConfig

    if value is not None and _mapping_issue(key, value):
        return _mapping_issue(key, value)
    issues = _typed(key, lambda v: DefenderSFTConfig.from_dict(v, prefix=key), value)
    if issues or not value or not value.get("grounding_weight"):
        return issues
    # the grounding head reads one of the LM's layers: a tiny Defender's count is known here
    defender = ctx.params.get("defender")
    if isinstance(defender, Mapping) and defender.get("source", "tiny") == "tiny":
        from aot.defender import TinyDefenderConfig

        tiny = defender.get("tiny") if isinstance(defender.get("tiny"), Mapping) else {}
        layers = tiny.get("num_layers", TinyDefenderConfig.num_layers)
        layer = value.get("grounding_layer", DefenderSFTConfig.grounding_layer)
        if isinstance(layers, int) and layer > layers:
            return [
                Issue(
                    f"{key}.grounding_layer",
                    f"{key}.grounding_layer is {layer}, but the tiny Defender has "
                    f"{layers} LM layers (defender.tiny.num_layers)",
                )
            ]
    return issues


def _family_weights(value: Any) -> str | None:
    from aot.defender.examples import check_family_weights
    from aot.world import FAMILIES

    try:
        check_family_weights(value)
    except ValueError:
        return f"must map question families ({', '.join(FAMILIES)}) to numbers > 0"
    return None


def _check_pretrain(key: str, value: Any, ctx: _Context) -> list[Issue]:
    def data(k: str, v: Any, c: _Context) -> list[Issue]:
        rules = {
            "prompt_style": one_of(_prompt_styles()),
            "turns": positive_int,
            "repeats": positive_int,
            "extended_repeats": non_negative_int,
            "family_weights": _family_weights,
        }
        return _plain(k, v, c, rules)

    return _plain(
        key,
        value,
        ctx,
        {
            "enabled": boolean,
            "answer_mode": one_of(_answer_modes()),
            "eval_per_family": optional_positive_int,
        },
        {"data": data, "trainer": _sft_trainer},
    )


def _check_defender(key: str, value: Any, ctx: _Context) -> list[Issue]:
    from aot.defender import TinyDefenderConfig
    from aot.pipelines.bootstrap_dataset.defender_nodes import SOURCES

    def tiny(k: str, v: Any, c: _Context) -> list[Issue]:
        if v is not None and _mapping_issue(k, v):
            return _mapping_issue(k, v)
        return _typed(k, TinyDefenderConfig.from_dict, v)

    def path(k: str, v: Any, c: _Context) -> list[Issue]:
        if value.get("source", "tiny") != "pretrained":
            return path_issues(k, v, c.root)
        return _model_folder_issues(
            k,
            v,
            c.root,
            "config.json",
            "defender.source is 'pretrained': a local checkpoint folder with config.json "
            "and .safetensors weights",
        )

    issues = _plain(key, value, ctx, {"source": one_of(SOURCES)}, {"tiny": tiny, "path": path})
    if isinstance(value, Mapping) and value.get("source") == "pretrained" and "path" not in value:
        issues += path(f"{key}.path", None, ctx)
    return issues


def _check_sft(key: str, value: Any, ctx: _Context) -> list[Issue]:
    return _plain(
        key,
        value,
        ctx,
        {
            "answer_mode": one_of(_answer_modes()),
            "clean_repeats": positive_int,
            "pair_repeats": positive_int,
            "val_records": positive_int,
            "eval_per_family": optional_positive_int,
        },
        {"trainer": _sft_trainer},
    )


def _check_attacker(key: str, value: Any, ctx: _Context) -> list[Issue]:
    from aot.attacker import AttackerConfig, ColdStartConfig

    def model(k: str, v: Any, c: _Context) -> list[Issue]:
        if v is not None and _mapping_issue(k, v):
            return _mapping_issue(k, v)
        return _typed(k, AttackerConfig.from_dict, v, {"AttackerConfig": k})

    def cold_start(k: str, v: Any, c: _Context) -> list[Issue]:
        if v is not None and _mapping_issue(k, v):
            return _mapping_issue(k, v)
        build = lambda given: ColdStartConfig.from_dict({"seed": c.seed(), **given})  # noqa: E731
        return _typed(k, build, v, {"ColdStartConfig": k})

    def evaluation(k: str, v: Any, c: _Context) -> list[Issue]:
        rules = {
            "procedural_edits": positive_int,
            "max_pairs": positive_int,
            "steps": positive_int,
            "k": positive_int,
            "answer_mode": one_of(_answer_modes()),
            "prompt_style": one_of(_prompt_styles()),
        }
        return _plain(k, v, c, rules)

    return _plain(
        key, value, ctx, {}, {"model": model, "cold_start": cold_start, "evaluation": evaluation}
    )


def _attack_reward(key: str, value: Any, k: Any) -> list[Issue]:
    """A reward dict as ``attack_records`` completes it (``k`` and ``graded`` are set there)."""
    from aot.rewards.attack import AttackRewardConfig

    if value is not None and _mapping_issue(key, value):
        return _mapping_issue(key, value)
    k = k if _is_int(k) and k > 0 else 1
    build = lambda v: AttackRewardConfig.from_dict({**v, "k": k, "graded": True})  # noqa: E731
    return _typed(key, build, value, {"AttackRewardConfig": key})


def _sampling(key: str, value: Mapping[str, Any]) -> list[Issue]:
    """``sampling_steps`` and ``noise_level`` as ``attack_records`` hands them to Flow-GRPO."""
    from aot.attacker.flow_grpo_config import FlowGRPOConfig

    given = {n: value[n] for n in ("sampling_steps", "noise_level") if n in value}
    return _typed(key, lambda v: FlowGRPOConfig(**v), given, {"FlowGRPOConfig": key})


def _check_selfplay(key: str, value: Any, ctx: _Context) -> list[Issue]:
    """Only the shape of ``selfplay``; each part is its own section (see ``SECTIONS``)."""
    if _mapping_issue(key, value):
        return _mapping_issue(key, value)
    known = sorted(name.split(".", 1)[1] for name in SECTIONS if name.startswith(f"{key}."))
    return [
        Issue(f"{key}.{name}", f"{key}.{name} is not a known key; known keys: {known}")
        for name in value
        if name not in known
    ]


def _check_selfplay_attacker(key: str, value: Any, ctx: _Context) -> list[Issue]:
    from aot.attacker.flow_grpo_config import FlowGRPOConfig

    if _mapping_issue(key, value):
        return _mapping_issue(key, value)
    flow = {k: v for k, v in value.items() if k != "checkpoint_root"}
    owners = {
        "FlowGRPOConfig": key,
        "AttackRewardConfig": f"{key}.reward",
        "PlannerConfig": f"{key}.planner",
    }
    return _typed(key, FlowGRPOConfig.from_dict, flow, owners)


def _check_selfplay_curriculum(key: str, value: Any, ctx: _Context) -> list[Issue]:
    from aot.selfplay import CurriculumConfig

    if _mapping_issue(key, value):
        return _mapping_issue(key, value)
    issues = _typed(key, CurriculumConfig.from_dict, value)
    if "reward" in value:
        issues += _attack_reward(f"{key}.reward", value["reward"], value.get("k", 3))
    return issues


def _check_selfplay_defender(key: str, value: Any, ctx: _Context) -> list[Issue]:
    from aot.defender.dapo import DefenderDAPOConfig

    if _mapping_issue(key, value):
        return _mapping_issue(key, value)
    dapo = {k: v for k, v in value.items() if k != "checkpoint_root"}
    return _typed(key, lambda v: DefenderDAPOConfig.from_dict(v, prefix=key), dapo)


def _check_selfplay_evaluation(key: str, value: Any, ctx: _Context) -> list[Issue]:
    issues = _plain(
        key,
        value,
        ctx,
        {
            "split": one_of(_splits()),
            "max_records": optional_positive_int,
            "batch_size": positive_int,
            "answer_mode": one_of(_answer_modes()),
            "sampling_steps": lambda v: None,  # checked by FlowGRPOConfig below
            "noise_level": lambda v: None,
        },
        {"reward": lambda k, v, c: _attack_reward(k, v, 1)},
    )
    if isinstance(value, Mapping):
        issues += _sampling(key, value)
    return issues


def _check_baselines(key: str, value: Any, ctx: _Context) -> list[Issue]:
    return _plain(
        key,
        value,
        ctx,
        {"rounds": positive_int, "max_records": positive_int, "threads": optional_positive_int},
    )


def _check_evaluation(key: str, value: Any, ctx: _Context) -> list[Issue]:
    from aot.evaluation import PROTOCOLS, UNSEEN_MANIPULATIONS

    def suites(k: str, v: Any, c: _Context) -> list[Issue]:
        issues = _plain(
            k,
            v,
            c,
            {
                "clean_records": positive_int,
                "attacked_records": positive_int,
                "attacked_edits_per_record": positive_int,
                "unseen_records": positive_int,
                "unseen": subset_of(UNSEEN_MANIPULATIONS),
                "sampling_steps": lambda _: None,  # checked by FlowGRPOConfig below
                "noise_level": lambda _: None,
            },
            {"reward": lambda k2, v2, c2: _attack_reward(k2, v2, 1)},
        )
        if isinstance(v, Mapping):
            issues += _sampling(k, v)
        return issues

    return _plain(
        key,
        value,
        ctx,
        {
            "split": one_of(_splits()),
            "answer_mode": one_of(_answer_modes()),
            "prompt_style": one_of(_prompt_styles()),
            "max_new_tokens": positive_int,
            "batch_size": positive_int,
            "max_records": optional_positive_int,
            "max_per_family": optional_positive_int,
            "protocols": subset_of(PROTOCOLS, empty=False),
            "trials": positive_int,
            "temperature": non_negative_number,
            "image_cache_mb": non_negative_int,
        },
        {"suites": suites},
    )


# The parameter sections the pipelines read, by dotted key (`params:<key>` node inputs).
SECTIONS: dict[str, Callable[[str, Any, _Context], list[Issue]]] = {
    "seed": _check_seed,
    "world": _check_world,
    "source": _check_source,
    "extension": _check_extension,
    "implant": _check_implant,
    "effectiveness": _check_effectiveness,
    "pretrain": _check_pretrain,
    "defender": _check_defender,
    "sft": _check_sft,
    "attacker": _check_attacker,
    "selfplay": _check_selfplay,
    "selfplay.attacker": _check_selfplay_attacker,
    "selfplay.curriculum": _check_selfplay_curriculum,
    "selfplay.defender": _check_selfplay_defender,
    "selfplay.evaluation": _check_selfplay_evaluation,
    "baselines": _check_baselines,
    "evaluation": _check_evaluation,
}


def _selected(key: str, sections: Iterable[str] | None) -> bool:
    if sections is None:
        return True
    return any(s == key or key.startswith(s + ".") or s.startswith(key + ".") for s in sections)


def _lookup(params: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _path_leaves(tree: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(tree, Mapping):
        for name, value in tree.items():
            key = f"{prefix}.{name}" if prefix else str(name)
            if isinstance(value, Mapping):
                yield from _path_leaves(value, key)
            elif is_path_key(key):
                yield key, value


def parameter_issues(
    params: Mapping[str, Any],
    *,
    sections: Iterable[str] | None = None,
    root: str | os.PathLike | None = None,
) -> list[Issue]:
    """Every problem of ``params``, as Issues. ``sections`` (dotted keys, as in ``params:<key>``
    node inputs) limits the check to what a pipeline reads; None checks everything, and then
    also rejects unknown top-level keys."""
    wanted = None if sections is None else set(sections)
    ctx = _Context(params, Path(root) if root is not None else Path.cwd())
    issues: list[Issue] = []
    if not isinstance(params, Mapping):
        return [Issue("parameters", f"the parameters must be a mapping, got {params!r}")]
    for key, check in SECTIONS.items():
        if not _selected(key, wanted):
            continue
        present, value = _lookup(params, key)
        if present:
            issues += check(key, value, ctx)
    if wanted is None:
        tops = {key.split(".")[0] for key in SECTIONS}
        issues += [
            Issue(name, f"{name} is not a parameter any pipeline reads; known: {sorted(tops)}")
            for name in params
            if name not in tops
        ]
    # Paths: relative ones must stay inside the project (model folders were checked above).
    flagged = {i.key for i in issues}
    for key, value in _path_leaves(params):
        if key not in flagged and _selected(key, wanted):
            issues += path_issues(key, value, ctx.root)
    return issues


def validate_parameters(
    params: Mapping[str, Any],
    *,
    sections: Iterable[str] | None = None,
    root: str | os.PathLike | None = None,
    sources: ParameterSources | None = None,
) -> list[str]:
    """One line per problem, each naming its parameters file when ``sources`` can tell."""
    issues = parameter_issues(params, sections=sections, root=root)
    return [sources.describe(i) if sources else i.message for i in issues]


def check_parameters(
    params: Mapping[str, Any],
    *,
    sections: Iterable[str] | None = None,
    root: str | os.PathLike | None = None,
    sources: ParameterSources | None = None,
) -> None:
    """``validate_parameters``, raising one ``ParameterError`` that lists every problem."""
    errors = validate_parameters(params, sections=sections, root=root, sources=sources)
    if errors:
        raise ParameterError(errors)


def sections_of(inputs: Iterable[str]) -> set[str] | None:
    """The parameter keys a pipeline reads, from its free inputs (``params:<key>``); None when a
    node takes the whole ``parameters`` dict."""
    names = set(inputs)
    if "parameters" in names:
        return None
    return {n.removeprefix("params:") for n in names if n.startswith("params:")}


def load_parameters(
    project_path: str | os.PathLike,
    env: str | None = None,
    runtime_params: Mapping[str, Any] | None = None,
    conf_source: str = "conf",
) -> tuple[dict[str, Any], ParameterSources]:
    """The merged parameters of ``env`` as ``kedro run --env <env>`` sees them (Kedro's own
    config loader and the project's settings), and where each key comes from."""
    from kedro.config import OmegaConfigLoader

    from aot.settings import CONFIG_LOADER_ARGS

    root = Path(project_path)
    args = dict(CONFIG_LOADER_ARGS)
    run_env = env or args.get("default_run_env")
    loader = OmegaConfigLoader(
        conf_source=str(root / conf_source),
        env=run_env,
        runtime_params=dict(runtime_params or {}),
        **args,
    )
    params = loader["parameters"]
    sources = ParameterSources.scan(
        root / conf_source,
        [args.get("base_env", "base"), run_env],
        root=root,
        runtime_params=runtime_params,
    )
    return params, sources


# ------------------------------------------------------------------------- records, images


class DataError(ValueError):
    """Input data a node cannot use; the message names the table, record and file."""


def image_file(value: Any) -> str | None:
    """The file behind a lazily loaded image (a Kedro ``ImageDataset.load``), if any."""
    owner = getattr(value, "__self__", None)
    get_path = getattr(owner, "_get_load_path", None)
    if owner is None or get_path is None or not hasattr(owner, "_fs"):
        return None
    path = str(get_path())
    protocol = getattr(owner, "_protocol", "file")
    return path if protocol in (None, "file") else f"{protocol}://{path}"


def read_image_size(value: Any, verify: bool = True) -> tuple[int, int]:
    """(width, height) of an image, a loader of one, or an array; a file behind a loader is
    checked to decode completely (a truncated PNG fails here, not halfway through training)
    unless ``verify`` is false (then only its header is read)."""
    from PIL import Image

    path = image_file(value)
    if path is not None:
        with value.__self__._fs.open(path, "rb") as handle:
            if not verify:
                with Image.open(handle) as image:
                    return image.size
            return verify_image_stream(handle)
    loaded = value() if callable(value) else value
    if isinstance(loaded, Image.Image):
        return loaded.size
    shape = getattr(loaded, "shape", None)
    if shape is not None and len(shape) >= 2:
        return int(shape[1]), int(shape[0])
    raise TypeError(f"not an image: {type(loaded).__name__}")


def verify_image_stream(handle: Any) -> tuple[int, int]:
    """Size of the image in an open binary file; raises when it does not decode completely
    (PNG: every chunk and checksum read; other formats: decoded)."""
    from PIL import Image

    with Image.open(handle) as image:
        size = image.size
        if image.format == "PNG":
            image.verify()
        else:
            image.load()
    return size


def verify_image_file(path: str | os.PathLike) -> tuple[int, int]:
    with open(path, "rb") as handle:
        return verify_image_stream(handle)


def image_sizes(
    table: Any,
    images: Mapping[str, Any],
    what: str,
    image_column: str = "image",
    verify: bool = True,
) -> dict[str, tuple[int, int]]:
    """Sizes of the images ``table`` references (missing ones are left to the record check);
    one ``DataError`` names every image that does not decode, with a record that uses it."""
    if image_column not in getattr(table, "columns", ()) or len(table) == 0:
        return {}
    first_record: dict[str, Any] = {}
    ids = table["record_id"] if "record_id" in table.columns else range(len(table))
    for rid, key in zip(ids, table[image_column], strict=True):
        if isinstance(key, str):
            first_record.setdefault(key, rid)
    sizes: dict[str, tuple[int, int]] = {}
    broken: list[str] = []
    for key in sorted(first_record):
        if key not in images:
            continue
        try:
            sizes[key] = read_image_size(images[key], verify)
        except Exception as err:  # noqa: BLE001 - any decoding failure is reported by file
            file = image_file(images[key]) or f"image {key!r}"
            broken.append(
                f"record {first_record[key]!r}: image {key!r} ({file}) is corrupt or "
                f"truncated: {type(err).__name__}: {err}"
            )
    if broken:
        listed = "\n".join(f"  - {line}" for line in broken[:10])
        more = f"\n  ... and {len(broken) - 10} more" if len(broken) > 10 else ""
        raise DataError(
            f"{what}: {len(broken)} image(s) cannot be read; replace them or rerun the node "
            f"that writes them:\n{listed}{more}"
        )
    return sizes


def check_record_table(
    table: Any, what: str, images: Mapping[str, Any] | None = None, verify: bool = True
) -> dict[str, tuple[int, int]]:
    """The record schema (``aot.world.validate_records``: non-empty, every field present and
    typed, answers consistent, boxes inside their image) checked against the sizes of the
    images the records reference, once every one of those files decoded; returns the sizes.

    Raises ``DataError`` (from the schema's ``RecordError``) prefixed with ``what`` (the
    dataset and its file), naming the record and the field or the image file. ``verify=False``
    reads only the images' headers (for images their dataset already verified on load).
    """
    from aot.world import RecordError, validate_records

    sizes = image_sizes(table, images, what, verify=verify) if images is not None else None
    try:
        validate_records(table, sizes)
    except RecordError as err:
        raise DataError(f"{what}: {err}") from err
    return sizes or {}
