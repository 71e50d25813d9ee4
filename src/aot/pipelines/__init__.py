from collections.abc import Callable
from functools import partial, update_wrapper
from typing import Any


def bind(func: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    """``func`` with keyword arguments fixed, keeping its name for Kedro (one node per round or
    per model from one function)."""
    bound = partial(func, **kwargs)
    update_wrapper(bound, func)
    return bound
