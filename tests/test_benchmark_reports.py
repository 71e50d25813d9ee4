"""Benchmarks rewrite their reports but keep the notes written below them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _report_notes():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(
        "report_notes", ROOT / "benchmarks" / "report_notes.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_rewritten_report_keeps_the_notes_below_it(tmp_path: Path) -> None:
    notes = _report_notes()
    out = tmp_path / "results" / "bench.md"
    notes.write_report(out, "# Bench\n\n| a | 1 |\n")
    assert out.read_text() == "# Bench\n\n| a | 1 |\n"
    out.write_text(out.read_text() + "\n" + notes.NOTES + "\n\n## Reading\n\nBy hand.\n")
    notes.write_report(out, "# Bench\n\n| a | 2 |")
    assert (
        out.read_text() == "# Bench\n\n| a | 2 |\n\n" + notes.NOTES + "\n\n## Reading\n\nBy hand.\n"
    )


def test_every_benchmark_that_writes_results_keeps_notes() -> None:
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        text = script.read_text()
        if "results" in text and ".write_text(" in text:
            assert "write_report" in text, f"{script.name} writes a result file without its notes"
