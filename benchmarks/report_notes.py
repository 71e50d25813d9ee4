"""Writing a benchmark's report without losing the notes people added below it.

Result files in benchmarks/results/ mix a generated report with hand-written readings (what a
run says, trials, comparisons). A benchmark rewrites its report; everything from the `NOTES`
marker on is kept as it was.
"""

from __future__ import annotations

from pathlib import Path

NOTES = "<!-- Hand-written notes from here on: the benchmark that writes this file keeps them. -->"


def write_report(path: Path, report: str) -> None:
    """Writes ``report`` to ``path``, followed by the file's notes section if it has one."""
    old = path.read_text() if path.exists() else ""
    notes = old[old.index(NOTES) :] if NOTES in old else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.rstrip("\n") + "\n" + ("\n" + notes if notes else ""))
