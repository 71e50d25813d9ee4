"""A smoke self-play run killed mid-run resumes with the completed rounds untouched."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

KEDRO = str(Path(sys.executable).with_name("kedro"))


def _kedro(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [KEDRO, *args], cwd=cwd, capture_output=True, text=True, timeout=900, env=os.environ
    )


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_killed_selfplay_resumes_with_completed_rounds_untouched(project_copy: Path) -> None:
    first = _kedro(project_copy, "run", "--env", "smoke", "--pipelines", "bootstrap_dataset,sft")
    assert first.returncode == 0, first.stderr[-3000:]
    root = project_copy / "data" / "smoke"
    round_1 = root / "08_reporting" / "selfplay" / "round_1" / "gallery.png"
    round_3 = root / "08_reporting" / "selfplay" / "round_3" / "metrics.json"
    proc = subprocess.Popen(
        [KEDRO, "run", "--env", "smoke", "--pipelines", "selfplay"],
        cwd=project_copy,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not round_1.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert round_1.exists(), "round 1 never finished"
    os.killpg(proc.pid, signal.SIGKILL)  # mid round 2
    proc.wait()
    assert not round_3.exists()
    done = {
        name: _digest(path)
        for name, path in {
            "models": root / "06_models" / "selfplay" / "round_1",
            "reports": root / "08_reporting" / "selfplay" / "round_1",
            "curriculum": root / "05_model_input" / "selfplay" / "round_1",
        }.items()
    }
    assert all(done.values())
    rerun = _kedro(
        project_copy, "run", "--env", "smoke", "--pipelines", "selfplay", "--only-missing-outputs"
    )
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert round_3.exists() and (root / "08_reporting" / "selfplay" / "rounds.csv").exists()
    assert _digest(root / "06_models" / "selfplay" / "round_1") == done["models"]
    assert _digest(root / "08_reporting" / "selfplay" / "round_1") == done["reports"]
    assert _digest(root / "05_model_input" / "selfplay" / "round_1") == done["curriculum"]
    # Round k started from round k-1's Defender (round 1 from the warmed-up one): weights, not names.
    from aot.defender import Defender
    from aot.selfplay.metrics import fingerprint

    prints = [
        json.loads(
            (root / "08_reporting" / "selfplay" / f"round_{k}" / "metrics.json").read_text()
        )["fingerprints"]
        for k in (1, 2, 3)
    ]
    sft = fingerprint(Defender.from_pretrained(root / "06_models" / "defender_sft"))
    assert prints[0]["defender_in"] == sft
    assert prints[1]["defender_in"] == prints[0]["defender_out"]
    assert prints[2]["defender_in"] == prints[1]["defender_out"]
    last = Defender.from_pretrained(root / "06_models" / "selfplay" / "round_3" / "defender")
    assert fingerprint(last) == prints[2]["defender_out"]
