"""Helpers shared by the typed configs that Kedro parameters are turned into."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


def reject_unknown(owner: str, cls: type, params: Mapping[str, Any]) -> None:
    """Kedro parameters are typed by hand, so a typo must fail loudly instead of being ignored."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{owner}: unknown key(s) {unknown}; known keys: {sorted(known)}")
