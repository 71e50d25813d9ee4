"""`notebooks/explore_results.ipynb` executed with nbclient against the smoke run's outputs.

The notebook reads everything through the Kedro catalog (`%reload_kedro --env=$AOT_ENV`), so the
test points it at the session's smoke project (`smoke_project` in conftest.py) with AOT_ENV=smoke
and checks what it displayed against the files the smoke run wrote.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from aot.pipelines.selfplay.schedule import load_rounds

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_results.ipynb"
MARKER = "AOT_TEST_RESULT="

# Appended to the test's copy of the notebook: dumps what the notebook computed.
PROBE = f"""
import json as _json
print({MARKER!r} + _json.dumps({{
    "env": AOT_ENV,
    "project": str(context.project_path),
    "accuracy": _json.loads(accuracy.to_json(orient="split")),
    "strict": _json.loads(strict_accuracy.to_json(orient="split")),
    "rounds": rounds.index.tolist(),
    "figures": {{name: str(path) for name, path in figures.items()}},
}}))
"""


def _cell(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _html(cell: nbformat.NotebookNode) -> str:
    return "\n".join(o["data"].get("text/html", "") for o in cell.outputs if "data" in o)


def _stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")


def _expected_table(metrics: dict[str, float], protocol: str) -> dict[tuple[str, str], float]:
    out = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 5 and parts[2:] == [protocol, "accuracy", "overall"]:
            out[(parts[0], parts[1])] = value
    return out


def _as_cells(table: dict) -> dict[tuple[str, str], float]:
    return {
        (model, suite): float("nan") if value is None else value
        for model, row in zip(table["index"], table["data"], strict=True)
        for suite, value in zip(table["columns"], row, strict=True)
    }


@pytest.fixture(scope="session")
def venv_kernel(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A kernelspec that starts this interpreter (the venv's python), in a temporary JUPYTER_PATH."""
    from ipykernel.kernelspec import write_kernel_spec

    jupyter_path = tmp_path_factory.mktemp("jupyter")
    name = "aot-venv"
    write_kernel_spec(path=str(jupyter_path / "kernels" / name), overrides={"display_name": name})
    return name, jupyter_path


def test_committed_notebook_has_no_outputs_and_an_env_parameter() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), (
        "clear the outputs before committing (Kernel > Restart & Clear Output)"
    )
    parameters = _cell(nb, "parameters").source
    assert 'os.environ.get("AOT_ENV", "base")' in parameters
    sources = "\n".join(c.source for c in code)
    assert "%load_ext kedro.ipython" in sources and "%reload_kedro" in sources
    assert sum(c.cell_type == "markdown" for c in nb.cells) >= 4  # the commentary


def _execute(
    project: Path,
    kernel: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keep: Path | None = None,
) -> tuple[nbformat.NotebookNode, dict]:
    """Runs the notebook from ``project/notebooks/`` with AOT_ENV=smoke; returns it and the probe."""
    from nbclient import NotebookClient

    kernel_name, jupyter_path = kernel
    for var, value in {
        "JUPYTER_PATH": str(jupyter_path),
        "JUPYTER_PLATFORM_DIRS": "1",
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "AOT_ENV": "smoke",
        "OMP_NUM_THREADS": "1",
    }.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AOT_PROJECT_PATH", raising=False)  # found from the notebook's folder

    # The notebook sits in the project's notebooks/ folder, as in the repository.
    workdir = project / "notebooks"
    workdir.mkdir(exist_ok=True)
    shutil.copy(NOTEBOOK, workdir / NOTEBOOK.name)
    nb = nbformat.read(workdir / NOTEBOOK.name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE, metadata={"tags": ["test-probe"]}))
    client = NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=600,
        startup_timeout=120,
        resources={"metadata": {"path": str(workdir)}},
    )
    try:
        client.execute()  # raises CellExecutionError on the first failing cell
    finally:
        for folder in (tmp_path, keep):
            if folder is not None:
                nbformat.write(nb, folder / "explore_results.executed.ipynb")
    probe = json.loads(_stdout(_cell(nb, "test-probe")).split(MARKER, 1)[1])
    assert probe["env"] == "smoke"
    assert Path(probe["project"]) == project
    return nb, probe


def _check_tables(nb: nbformat.NotebookNode, probe: dict, metrics: dict, models: list) -> None:
    """Both model x suite tables hold exactly the numbers of metrics.json, and are displayed."""
    for tag, name, protocol in (
        ("accuracy-table", "accuracy", "greedy"),
        ("strict-table", "strict", "strict"),
    ):
        table = probe[name]
        expected = _expected_table(metrics, protocol)
        assert table["index"] == models, f"{tag}: rows {table['index']}"
        assert set(table["columns"]) == {suite for _, suite in expected}
        assert table["columns"][0] == "clean"
        assert _as_cells(table) == pytest.approx(expected, nan_ok=True)
        html = _html(_cell(nb, tag))
        assert "<table" in html, f"{tag} displayed no table"
        for label in [*models, *table["columns"]]:
            assert f">{label}<" in html, f"{tag}: {label} not in the displayed table"


def _check_figures(nb: nbformat.NotebookNode, probe: dict, root: Path) -> None:
    """The figures cell displayed the exact PNG bytes the pipelines wrote."""
    pngs = [
        base64.b64decode(o["data"]["image/png"])
        for o in _cell(nb, "figures").outputs
        if "image/png" in o.get("data", {})
    ]
    for name, path in {
        "evaluation_robustness": root / "08_reporting" / "evaluation" / "robustness.png",
        "selfplay_curves": root / "08_reporting" / "selfplay" / "rounds.png",
    }.items():
        assert Path(probe["figures"][name]) == path
        assert path.read_bytes() in pngs, f"{name} ({path}) was not displayed"


def _summary_lines(nb: nbformat.NotebookNode) -> list[str]:
    outputs = _cell(nb, "summary").outputs
    return [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]


@pytest.mark.slow
def test_notebook_runs_against_the_smoke_outputs(
    smoke_project: Path,
    venv_kernel: tuple[str, Path],
    artifacts_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nb, probe = _execute(smoke_project, venv_kernel, tmp_path, monkeypatch, keep=artifacts_dir)
    root = smoke_project / "data" / "smoke"

    metrics = json.loads((root / "08_reporting" / "evaluation" / "metrics.json").read_text())
    rounds = load_rounds(smoke_project / "conf" / "base" / "selfplay_schedule.yml")
    models = ["base", "clean_rl", "static_aug", *(f"aot_{r}" for r in rounds)]
    _check_tables(nb, probe, metrics, models)

    # the round summary: one row per scheduled round, as in rounds.csv
    csv = pd.read_csv(root / "08_reporting" / "selfplay" / "rounds.csv")
    assert probe["rounds"] == csv["round"].tolist() == list(range(1, len(rounds) + 1))
    rounds_html = _html(_cell(nb, "rounds-table"))
    assert "<table" in rounds_html and "after_robust_accuracy" in rounds_html

    _check_figures(nb, probe, root)
    summary = _summary_lines(nb)
    assert summary and all(f"aot_{rounds[-1]}" in text for text in summary)


@pytest.mark.slow
def test_notebook_tables_and_commentary_follow_the_numbers(
    project_copy: Path,
    venv_kernel: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On made-up outputs with distinct numbers (the smoke run's are all about zero): each cell
    lands in its row and column, greedy and strict are not mixed up, rounds sort numerically and
    the commentary names the best model."""
    from PIL import Image

    rng = np.random.default_rng(0)
    models = ["base", "clean_rl", "static_aug", "aot_round_1", "aot_round_2", "aot_round_10"]
    suites = ["clean", "attacked_cold", "attacked_round_1", "unseen_blur", "unseen_jpeg"]
    metrics: dict[str, float] = {}
    for model in models[::-1]:
        for suite in suites[::-1]:
            for protocol in ("greedy", "strict"):
                for group in ("overall", "spatial", "count"):
                    metrics[f"{model}/{suite}/{protocol}/accuracy/{group}"] = float(rng.random())
                    metrics[f"{model}/{suite}/{protocol}/n/{group}"] = 40.0
            metrics[f"{model}/{suite}/greedy/pope/random/f1"] = float(rng.random())
    root = project_copy / "data" / "smoke" / "08_reporting"
    (root / "evaluation").mkdir(parents=True)
    (root / "selfplay").mkdir(parents=True)
    (root / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"round": [1, 2], "after_robust_accuracy": [0.25, 0.5]}).to_csv(
        root / "selfplay" / "rounds.csv", index=False
    )
    for path, colour in (
        (root / "evaluation" / "robustness.png", "red"),
        (root / "selfplay" / "rounds.png", "blue"),
    ):
        Image.new("RGB", (40, 30), colour).save(path)

    nb, probe = _execute(project_copy, venv_kernel, tmp_path, monkeypatch)

    _check_tables(nb, probe, metrics, models)
    assert probe["accuracy"]["columns"] == suites
    assert probe["rounds"] == [1, 2]
    _check_figures(nb, probe, project_copy / "data" / "smoke")

    attacked = {
        m: np.mean([metrics[f"{m}/{s}/greedy/accuracy/overall"] for s in suites[1:3]])
        for m in models
    }
    best = max(attacked, key=attacked.__getitem__)
    line = next(text for text in _summary_lines(nb) if "**attacked**" in text)
    assert f"best `{best}` ({attacked[best]:.3f})" in line
    assert f"`aot_round_10` {attacked['aot_round_10']:.3f}" in line
