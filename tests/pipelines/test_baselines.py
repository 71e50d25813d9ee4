"""The baselines' DAPO settings: steps scaled to all rounds, and `baselines.threads` (what lets
dvc.yaml train the two side by side, one thread each) overriding the self-play recipe's."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from aot.pipelines.baselines import nodes


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_run_dapo(defender: Any, table: pd.DataFrame, images: Any, params: Any, name: str):
        calls.append({"params": params, "rows": len(table), "name": name})
        return defender, pd.DataFrame()

    monkeypatch.setattr(nodes, "run_dapo", fake_run_dapo)
    return calls


RECORDS = pd.DataFrame(
    {"record_id": [f"r{i}" for i in range(10)], "split": ["train"] * 8 + ["val"] * 2}
)
DAPO = {"max_steps": 5, "threads": 2}


@pytest.mark.parametrize(("threads", "expected"), [(1, 1), (None, 2)])
def test_baseline_threads_override_the_selfplay_recipe(
    captured: list[dict[str, Any]], threads: int | None, expected: int
) -> None:
    nodes.train_clean_rl(
        object(), RECORDS, {}, DAPO, {"rounds": 3, "max_records": 6, "threads": threads}, 7
    )
    (call,) = captured
    assert call["params"]["threads"] == expected
    assert call["params"]["max_steps"] == 15  # 3 rounds' worth of self-play steps
    assert call["rows"] == 6 and call["name"] == "baseline_clean_rl"
    assert DAPO == {"max_steps": 5, "threads": 2}  # the shared recipe is not modified
