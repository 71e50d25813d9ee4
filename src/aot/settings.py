"""Kedro project settings.

Parameters are soft-merged so an environment (``smoke``, ``paper``) overrides single keys of
``base`` instead of replacing whole top-level groups (kedro-dvc.md §1.7).
"""

import os

from aot.hooks import (
    MissingInputsHook,
    ParameterValidationHook,
    RecordValidationHook,
    SeedHook,
)

# Offline and quiet by default, also when `kedro` is called directly rather than through make.
for _var, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("DO_NOT_TRACK", "1"),
    ("KEDRO_DISABLE_TELEMETRY", "true"),
    ("DVC_NO_ANALYTICS", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_var, _value)

# ParameterValidationHook runs first (`tryfirst`): a bad parameter stops the run before the seed,
# the missing-input check or any model load. RecordValidationHook checks the record tables and
# their images before the first node that reads them.
HOOKS = (ParameterValidationHook(), RecordValidationHook(), SeedHook(), MissingInputsHook())
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-viz",)

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft", "catalog": "soft"},
}
