"""`dvc repro` on a temporary copy of the project (smoke env): every stage runs, calling no
project file its deps miss; a forced rerun of one round leaves git's tree clean; then a second
`dvc repro`, and `make run` (which goes through DVC for the default env), find nothing to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CALL_TRACE = ROOT / "tests" / "scripts" / "call_trace"

# What every `kedro run` calls, whatever it runs, and that cannot change what a stage writes:
# the registry builds every pipeline (so other pipelines' wiring and the round schedule run
# too), and parameters and tables are checked, which can only stop a run.
EVERY_RUN = {
    "src/aot/pipeline_registry.py",
    "src/aot/pipelines/selfplay/schedule.py",
    "src/aot/validation.py",
    "src/aot/config.py",
}


def _run(
    cwd: Path, *args: str, timeout: int = 1200, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{BIN}:{os.environ['PATH']}",
        **(env or {}),
    }
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def _stage_commands(stages: dict[str, dict]) -> dict[str, tuple[str, list[str]]]:
    """Each stage's name and code deps, by the arguments of its `kedro` command."""
    out = {}
    for name, stage in stages.items():
        words = stage["cmd"].split()
        args = " ".join(words[words.index("kedro") + 1 :])
        out[args] = (name, [d for d in stage["deps"] if d.startswith("src/")])
    return out


def _uncovered_calls(repo: Path, stages: dict[str, dict], traces: Path) -> dict[str, list[str]]:
    """Per stage, the project files whose functions it called (`call_trace/sitecustomize.py`)
    that none of its deps covers, allowing `EVERY_RUN` and other pipelines' `pipeline.py`."""
    commands = _stage_commands(stages)
    missing: dict[str, set[str]] = {}
    seen = set()
    for trace in traces.glob("*.txt"):
        for line in trace.read_text().splitlines():
            args, path, _function = line.split("\t")
            stage, deps = commands[args]
            seen.add(stage)
            file = Path(path).relative_to(repo).as_posix()
            own = f"src/aot/pipelines/{args.split('--pipelines ')[1].split()[0]}/pipeline.py"
            if file in EVERY_RUN or (file.endswith("/pipeline.py") and file != own):
                continue
            if not any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps):
                missing.setdefault(stage, set()).add(file)
    assert seen == set(stages), f"stages traced: {sorted(seen)}"
    return {stage: sorted(files) for stage, files in missing.items()}


def _smoke_copy(tmp: Path) -> Path:
    """The project with every DVC stage pointed at the smoke env and its data root."""
    repo = tmp / "repo"
    repo.mkdir()
    for name in (
        "conf",
        "src",
        "pyproject.toml",
        ".telemetry",
        ".dvcignore",
        "dvc.yaml",
        "Makefile",
    ):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("local", "__pycache__"))
        else:
            shutil.copy(src, repo / name)
    (repo / "conf" / "local").mkdir(exist_ok=True)
    for path in (repo / "dvc.yaml", repo / "conf" / "base" / "selfplay_schedule.yml"):
        text = path.read_text().replace("--env base", "--env smoke")
        path.write_text(text.replace(" data/", " data/smoke/"))
    return repo


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_then_does_nothing(tmp_path: Path, dvc_stages) -> None:  # noqa: ANN001
    repo = _smoke_copy(tmp_path)
    for args in (("git", "init", "-q"), (str(BIN / "dvc"), "init", "-q")):
        assert _run(repo, *args).returncode == 0
    traces = tmp_path / "calls"
    traces.mkdir()
    tracing = {
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(CALL_TRACE), os.environ.get("PYTHONPATH")])
        ),
        "AOT_TRACE_CALLS": str(traces),
        "AOT_TRACE_ROOT": str(repo / "src" / "aot") + os.sep,
    }
    first = _run(repo, str(BIN / "dvc"), "repro", env=tracing)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (repo / "data" / "smoke" / "08_reporting" / "evaluation" / "metrics.json").exists()
    # a stage that calls code its deps miss would be skipped, stale, after that code changes
    assert _uncovered_calls(repo, dvc_stages(repo), traces) == {}
    second = _run(repo, str(BIN / "dvc"), "repro")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Running stage" not in second.stdout, second.stdout[-2000:]
    assert "up to date" in second.stdout
    # a forced rerun of one stage writes its outputs, `dvc.lock` included, byte for byte: git
    # sees nothing to commit (the training logs hold no wall-clock columns for this)
    git = ("git", "-c", "user.name=aot-test", "-c", "user.email=aot-test@localhost")
    assert _run(repo, "git", "add", "-A").returncode == 0
    assert _run(repo, *git, "commit", "-qm", "first run").returncode == 0
    forced = _run(repo, str(BIN / "dvc"), "repro", "-f", "-s", "selfplay@round_1")
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]
    assert "Running stage 'selfplay@round_1'" in forced.stdout
    status = _run(repo, "git", "status", "--porcelain").stdout
    assert status == "", f"a forced rerun of selfplay@round_1 changed files:\n{status}"
    # `make run` (default env) is `dvc repro` here: nothing changed, so every stage is reused
    (repo / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    again = _run(repo, "make", "-o", "install", "run")  # -o: the venv is the tests' own
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "dvc repro" in again.stdout and "up to date" in again.stdout, again.stdout[-2000:]
    assert "Running stage" not in again.stdout
    metrics = _run(repo, str(BIN / "dvc"), "metrics", "show")
    assert "evaluation/metrics.json" in metrics.stdout
