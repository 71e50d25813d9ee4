"""Benchmark-native answer extraction, as described for the paper's evaluation scripts (§6.2).

The training protocol (``aot.rewards.answer``) only reads ``\\boxed{...}`` answers. The paper's
benchmark scripts are more lenient, and their numbers depend on that leniency, so each public
benchmark gets its own extractor here. Each extractor maps a response to the canonical answer
(``"Yes"``/``"No"`` or a capital letter) or None; the rules are tried in order and, within a
rule, the first match in the response wins.

* ``extract_pope`` (POPE and HallusionBench): "final answer" / "the final answer is" /
  "the answer is" (optional colon) then yes/no; then ``boxed`` yes/no in ``{}`` or ``()``;
  then the first standalone yes/no word. Case-insensitive; the result is capitalised.
* ``extract_vstar``: a boxed letter A-E (optional ``\\text{}``, ``{}`` or ``()``,
  case-insensitive); then "the answer is" / "final answer" and a letter (case-insensitive,
  so "the answer is a cat" reads as ``A``); then a response whose first non-blank character
  is an uppercase A-E, optionally after ``(``. Faithful to the description, this last rule
  reads *any* reply starting with "A", "Blue", "Each"... as a letter: together with V*'s
  always-first ground truth it favours models biased toward "A".
* ``extract_hrbench``: boxed A-D; then "answer is" and A-D; then the first uppercase A-D
  character anywhere (very lenient: "Based on ..." reads as ``B``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

Extractor = Callable[[str | None], str | None]

_POPE_RULES = (
    re.compile(r"(?:the final answer is|final answer|the answer is)\s*:?\s*(yes|no)\b", re.I),
    re.compile(r"\\?boxed\s*[{(]\s*(yes|no)\s*[})]", re.I),
    re.compile(r"\b(yes|no)\b", re.I),
)
_VSTAR_RULES = (
    re.compile(r"\\?boxed\s*[{(]\s*(?:\\text\s*\{\s*)?\(?\s*([a-e])\s*\)?\s*\}?\s*[})]", re.I),
    re.compile(r"(?:the answer is|final answer)\s*:?\s*\(?\s*([a-e])\b", re.I),
    re.compile(r"^\s*\(?([A-E])"),
)
_HRBENCH_RULES = (
    re.compile(r"\\?boxed\s*[{(]\s*([A-D])\s*[})]"),
    re.compile(r"answer is\s*:?\s*\(?\s*([A-D])\b"),
    re.compile(r"([A-D])"),
)


def first_match(response: str | None, rules: Sequence[re.Pattern[str]]) -> str | None:
    """Group 1 of the first rule (in order) that matches anywhere in ``response``, or None."""
    if not isinstance(response, str):
        return None
    for rule in rules:
        found = rule.search(response)
        if found:
            return found.group(1)
    return None


def extract_pope(response: str | None) -> str | None:
    """``"Yes"``/``"No"`` by the POPE rules (module docstring), or None."""
    found = first_match(response, _POPE_RULES)
    return found.capitalize() if found else None


def extract_vstar(response: str | None) -> str | None:
    """An upper-case letter A-E by the V* rules (module docstring), or None."""
    found = first_match(response, _VSTAR_RULES)
    return found.upper() if found else None


def extract_hrbench(response: str | None) -> str | None:
    """A letter A-D by the HR-Bench rules (module docstring), or None."""
    return first_match(response, _HRBENCH_RULES)


EXTRACTORS: dict[str, Extractor] = {
    "pope": extract_pope,
    "hallusionbench": extract_pope,
    "vstar": extract_vstar,
    "hrbench": extract_hrbench,
}


def get_extractor(name: str) -> Extractor:
    """The extractor registered under ``name``; ValueError listing the known names."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown extractor {name!r}; known: {sorted(EXTRACTORS)}")
    return EXTRACTORS[name]
