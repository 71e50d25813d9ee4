"""Edit prompts as class ids: the Attacker's conditioning vocabulary.

The procedural world has a closed vocabulary (``SHAPES`` x ``COLORS``), so a class embedding is
enough; free text is parsed down to one class. Ids are derived from the world's vocabulary order
(shape-major), so they are stable as long as ``aot.world`` keeps its tuples in order:
``class = shape_index * len(COLORS) + colour_index``, then ``remove``, then the null class.
"""

from __future__ import annotations

import re

from aot.world import COLORS, SHAPES

COLOUR_NAMES: tuple[str, ...] = tuple(COLORS)
N_OBJECT_CLASSES = len(SHAPES) * len(COLOUR_NAMES)
REMOVE_CLASS = N_OBJECT_CLASSES
NULL_CLASS = N_OBJECT_CLASSES + 1  # classifier-free-guidance dropout ("no prompt")
NUM_CLASS_EMBEDS = N_OBJECT_CLASSES + 2
REMOVE_PROMPT = "remove the object"

# Words that turn any prompt into a removal (the box is restored to background).
_REMOVE_WORDS = frozenset({"remove", "erase", "delete", "clear"})


def object_class(shape: str, colour: str) -> int:
    """Class id of "add a <colour> <shape>"; ValueError names an unknown shape or colour."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {list(SHAPES)}")
    if colour not in COLORS:
        raise ValueError(f"unknown colour {colour!r}; known: {list(COLOUR_NAMES)}")
    return SHAPES.index(shape) * len(COLOUR_NAMES) + COLOUR_NAMES.index(colour)


def class_to_edit(class_id: int) -> tuple[str, str | None, str | None]:
    """Inverse of the id layout: ("add", shape, colour) or ("remove", None, None)."""
    if class_id == REMOVE_CLASS:
        return ("remove", None, None)
    if not 0 <= class_id < N_OBJECT_CLASSES:
        raise ValueError(f"class id {class_id} is not an edit class (0..{REMOVE_CLASS})")
    shape_index, colour_index = divmod(class_id, len(COLOUR_NAMES))
    return ("add", SHAPES[shape_index], COLOUR_NAMES[colour_index])


def class_prompt(class_id: int) -> str:
    """Canonical prompt text of a class id (parses back to the same id)."""
    kind, shape, colour = class_to_edit(class_id)
    return REMOVE_PROMPT if kind == "remove" else f"a {colour} {shape}"


def _singular(word: str) -> str:
    """'crosses' -> 'cross', 'stars' -> 'star': prompts may use plurals."""
    for suffix in ("es", "s"):
        if word.endswith(suffix) and word[: -len(suffix)] in SHAPES:
            return word[: -len(suffix)]
    return word


def prompt_to_class(prompt: str) -> int:
    """Parse free text ("a small red triangle", "remove the object") into a class id.

    Sizes and filler words are ignored: the box fixes the size. The prompt must name exactly one
    colour and one shape, or contain a removal verb; otherwise a ValueError quotes the prompt.
    """
    words = [_singular(w) for w in re.findall(r"[a-z]+", prompt.lower())]
    if _REMOVE_WORDS.intersection(words):
        return REMOVE_CLASS
    colours = sorted({w for w in words if w in COLORS})
    shapes = sorted({w for w in words if w in SHAPES})
    if len(colours) != 1 or len(shapes) != 1:
        raise ValueError(
            f"prompt {prompt!r} must name one colour {list(COLOUR_NAMES)} and one shape "
            f"{list(SHAPES)} (found colours {colours}, shapes {shapes}), or say 'remove'"
        )
    return object_class(shapes[0], colours[0])
