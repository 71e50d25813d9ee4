"""Answer protocol of the VQA Defender: prompt templates, answer extraction, reward.

This reproduces the "correct-first" reward of the EasyR1 recipe
(``correct_first.py::compute_mcq_reward``), rewritten from its description:

* a correct answer in the *strict* format (``\\boxed{B}``) earns 1.0
  (0.8 accuracy + 0.2 format);
* a correct answer in a *lenient* format (``boxed( b )``, ``\\boxed{ B }``) earns 0.8;
* a wrong or unparseable answer earns 0.0 -- there is no format credit for wrong
  answers, which is why the reward is called "correct-first".

Three answer kinds are supported:

* ``"letter"``: multiple choice, answered with the option's letter;
* ``"yesno"``: a question with no options whose answer is ``Yes`` or ``No``;
* ``"word"``: multiple choice answered with the option's *text* (for tiny models that
  cannot map content to shuffled letters).

Extraction rules (shared by the three kinds):

* the strict pattern is searched over the whole response first; only when it matches
  nowhere is the lenient pattern tried, so a strict match beats an earlier lenient one;
* within one pattern the *first* match wins (not the last);
* the lenient pattern is: an optional backslash, ``boxed`` (any case), optional
  whitespace, one opening bracket among ``{ ( [``, optional whitespace, the answer
  (any case), optional whitespace, one closing bracket among ``} ) ]``. Any opening
  bracket may pair with any closing one (``\\boxed{A)`` is accepted leniently). There is no
  word boundary before ``boxed``, as in the original (``unboxed(a)`` reads as ``A``);
* nested markup such as ``\\boxed{\\text{A}}`` is *not* understood and is a failure;
* matching is ASCII-only for letters and yes/no: Unicode lookalikes (fullwidth ``Ａ``,
  the Kelvin sign) never match, and "whitespace" means ASCII whitespace.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

AnswerKind = Literal["letter", "yesno", "word"]
PromptMode = Literal["letter", "word"]

STATUS_OK = "ok"
STATUS_EXTRACTION_FAILURE = "EXTRACTION_FAILURE"
STATUS_INPUT_ERROR = "INPUT_ERROR"

ACCURACY_WEIGHT = 0.8
FORMAT_WEIGHT = 0.2

YES_NO = ("Yes", "No")
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

MCQ_HEADER = (
    "Please answer the following multiple-choice question. "
    "Choose the best answer from the options provided.\n\n"
)
MCQ_LETTER_FOOTER = (
    "\n\nProvide your final answer in the format \\boxed{X}, where X is the letter of your choice."
)
MCQ_WORD_FOOTER = (
    "\n\nProvide your final answer in the format \\boxed{answer}, "
    "where answer is the text of your choice."
)
YES_NO_HEADER = "Please answer the following question with only 'Yes' or 'No'.\n\n"
YES_NO_FOOTER = "\n\nAnswer with \\boxed{Yes} or \\boxed{No}."

_LENIENT_OPEN = r"\\?boxed\s*[{(\[]\s*"
_LENIENT_CLOSE = r"\s*[})\]]"

_LETTER_STRICT = re.compile(r"\\boxed\{([A-Z])\}")
_LETTER_LENIENT = re.compile(_LENIENT_OPEN + r"([A-Za-z])" + _LENIENT_CLOSE, re.I | re.A)
_YES_NO_STRICT = re.compile(r"\\boxed\{(Yes|No)\}")
_YES_NO_LENIENT = re.compile(_LENIENT_OPEN + r"(yes|no)" + _LENIENT_CLOSE, re.I | re.A)
_NEVER = re.compile(r"(?!)")


@dataclass(frozen=True)
class Extraction:
    """Result of reading an answer out of a model response.

    Attributes:
        value: The normalised answer (``"B"``, ``"Yes"``, a vocabulary entry) or None.
        strict: True when the answer was found in the strict ``\\boxed{...}`` format.
        status: ``"ok"``, ``"EXTRACTION_FAILURE"`` or ``"INPUT_ERROR"``.
    """

    value: str | None
    strict: bool
    status: str


@dataclass(frozen=True)
class AnswerScore:
    """Correct-first reward of one response (field names follow EasyR1's score dicts).

    Attributes:
        overall: Total reward, ``accuracy + format``: 1.0, 0.8 or 0.0.
        accuracy: 0.8 when the extracted answer equals the ground truth, else 0.0.
        format: 0.2 when the answer is correct *and* strictly formatted, else 0.0.
        extracted: The extracted answer, or None.
        strict: Whether the extraction used the strict format.
        status: ``"ok"``, ``"EXTRACTION_FAILURE"`` or ``"INPUT_ERROR"``.
    """

    overall: float
    accuracy: float
    format: float
    extracted: str | None
    strict: bool
    status: str


# --------------------------------------------------------------------------- prompts


def answer_kind(answer: str, options: Sequence[str], mode: PromptMode = "letter") -> AnswerKind:
    """Return the answer kind of a sample.

    ``"yesno"`` when there are no options and the (stripped) answer is ``Yes`` or ``No``
    (exact capitalisation); otherwise ``mode``.
    """
    if not options and isinstance(answer, str) and answer.strip() in YES_NO:
        return "yesno"
    return mode


def format_options(options: Sequence[str]) -> str:
    """Render options as ``"A. red\\nB. blue..."`` (one line per option, in order)."""
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"at most {len(OPTION_LETTERS)} options are supported")
    return "\n".join(f"{OPTION_LETTERS[i]}. {text}" for i, text in enumerate(options))


def build_prompt(question: str, options: Sequence[str], mode: PromptMode = "letter") -> str:
    """Build the user prompt: the yes/no template when ``options`` is empty, else MCQ.

    In both MCQ modes the question is followed by ``"\\nOptions:\\n"`` and the lettered
    options; only the final instruction differs (``\\boxed{X}`` vs ``\\boxed{answer}``).
    """
    if not options:
        return YES_NO_HEADER + question + YES_NO_FOOTER
    footer = MCQ_WORD_FOOTER if mode == "word" else MCQ_LETTER_FOOTER
    return MCQ_HEADER + question + "\nOptions:\n" + format_options(options) + footer


PromptStyle = Literal["protocol", "short"]
PROMPT_STYLES: tuple[str, ...] = ("protocol", "short")


def short_prompt(question: str, options: Sequence[str]) -> str:
    """The question and its options without the protocol's instructions (the tiny Defender's
    pretraining and filter prompts: a third of the tokens, the same content)."""
    return question + (f"\nOptions: {', '.join(options)}" if len(options) else "")


def make_prompt(
    question: str,
    options: Sequence[str],
    style: PromptStyle = "protocol",
    mode: PromptMode = "letter",
) -> str:
    """The prompt in `style`: `protocol` (the paper's, `build_prompt`) or `short`."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")
    if style == "short":
        return short_prompt(question, options)
    return build_prompt(question, options, mode=mode)


def target_completion(
    answer: str,
    answer_text: str | None = None,
    options: Sequence[str] = (),
    mode: PromptMode = "letter",
) -> str:
    """Return the ideal assistant reply, e.g. ``\\boxed{B}``, ``\\boxed{Yes}``, ``\\boxed{red}``.

    Raises:
        ValueError: in word mode (with options) when ``answer_text`` is missing.
    """
    if answer_kind(answer, options, mode) == "word":
        return "\\boxed{" + _require_answer_text(answer_text, options) + "}"
    return "\\boxed{" + answer.strip() + "}"


# ------------------------------------------------------------------------ extraction


def _extract(
    response: str | None,
    strict: re.Pattern[str],
    lenient: re.Pattern[str],
    resolve: Callable[[re.Match[str]], str],
) -> Extraction:
    """Search ``strict`` over the whole response, then ``lenient``; first match wins.

    ``resolve`` turns a match (of either pattern) into the canonical answer string.
    """
    if not isinstance(response, str) or not response.strip():
        return Extraction(None, False, STATUS_INPUT_ERROR)
    found = strict.search(response)
    if found:
        return Extraction(resolve(found), True, STATUS_OK)
    found = lenient.search(response)
    if found:
        return Extraction(resolve(found), False, STATUS_OK)
    return Extraction(None, False, STATUS_EXTRACTION_FAILURE)


def _resolve_upper(found: re.Match[str]) -> str:
    """Canonical letter: the captured letter in upper case."""
    return found.group(1).upper()


def _resolve_yes_no(found: re.Match[str]) -> str:
    """Canonical yes/no: ``"Yes"`` or ``"No"`` whatever the captured case."""
    return "Yes" if found.group(1).lower() == "yes" else "No"


def extract_letter(response: str | None) -> Extraction:
    """Extract a single option letter (``A``-``Z``) from ``\\boxed{X}``-style output."""
    return _extract(response, _LETTER_STRICT, _LETTER_LENIENT, _resolve_upper)


def extract_yes_no(response: str | None) -> Extraction:
    """Extract ``Yes``/``No`` from ``\\boxed{Yes}``-style output (``\\boxed{Nope}`` fails)."""
    return _extract(response, _YES_NO_STRICT, _YES_NO_LENIENT, _resolve_yes_no)


def _vocabulary_alternation(entries: Sequence[str], lenient: bool) -> str:
    """Regex alternation of ``entries`` (already ordered), one named group ``w<i>`` each.

    Entries are escaped; in ``lenient`` form internal whitespace runs match any
    whitespace run and surrounding whitespace is dropped (the pattern tolerates it).
    """
    parts = []
    for index, entry in enumerate(entries):
        if lenient:
            body = r"\s+".join(re.escape(word) for word in entry.split())
        else:
            body = re.escape(entry)
        parts.append(f"(?P<w{index}>{body})")
    return "(?:" + "|".join(parts) + ")"


def extract_word(response: str | None, vocabulary: Sequence[str]) -> Extraction:
    """Extract one vocabulary entry from ``\\boxed{word}``-style output.

    Strict: ``\\boxed{w}`` with ``w`` exactly a vocabulary entry. Lenient: the
    bracket-tolerant pattern, case-insensitive, tolerant of surrounding whitespace and of
    any whitespace run inside multi-word entries; the value is normalised to the
    vocabulary's spelling (the earliest entry when several differ only in case). Longer
    entries are preferred at the same position. Empty entries are ignored; matching is
    ASCII-only (no Unicode case folding) when the whole vocabulary is ASCII.
    """
    entries = sorted(
        dict.fromkeys(word for word in vocabulary if isinstance(word, str) and word.strip()),
        key=len,
        reverse=True,
    )
    if not entries:
        return _extract(response, _NEVER, _NEVER, _resolve_upper)
    flags = re.I | (re.A if all(word.isascii() for word in entries) else 0)
    strict = re.compile(r"\\boxed\{" + _vocabulary_alternation(entries, False) + r"\}")
    lenient = re.compile(
        _LENIENT_OPEN + _vocabulary_alternation(entries, True) + _LENIENT_CLOSE, flags
    )

    def resolve(found: re.Match[str]) -> str:
        assert found.lastgroup is not None  # every alternative is a named group
        return entries[int(found.lastgroup[1:])]

    return _extract(response, strict, lenient, resolve)


# ---------------------------------------------------------------------------- reward


def _require_answer_text(answer_text: str | None, options: Sequence[str]) -> str:
    """Validate the ground-truth text of a word-mode sample and return it."""
    if not isinstance(answer_text, str) or not answer_text.strip():
        raise ValueError("answer_text is required when mode='word' and options are given")
    if answer_text not in options:
        raise ValueError(f"answer_text {answer_text!r} is not one of the options {options!r}")
    return answer_text


def _score(extraction: Extraction, truth: str) -> AnswerScore:
    """Apply the correct-first rule to an extraction and a ground-truth string."""
    correct = extraction.status == STATUS_OK and extraction.value == truth
    accuracy = ACCURACY_WEIGHT if correct else 0.0
    fmt = FORMAT_WEIGHT if correct and extraction.strict else 0.0
    return AnswerScore(
        overall=accuracy + fmt,
        accuracy=accuracy,
        format=fmt,
        extracted=extraction.value,
        strict=extraction.strict,
        status=extraction.status,
    )


def correct_first_reward(
    response: str | None,
    answer: str,
    options: Sequence[str] = (),
    mode: PromptMode = "letter",
    answer_text: str | None = None,
) -> AnswerScore:
    """Score one response with the correct-first reward (1.0 / 0.8 / 0.0).

    Args:
        response: The model's reply.
        answer: Ground truth: a letter (``"B"``) or ``"Yes"``/``"No"``. Surrounding
            whitespace is stripped; the comparison is otherwise exact (``"b"`` never
            equals an extracted ``"B"``).
        options: The option texts; empty for a yes/no question.
        mode: ``"letter"`` or ``"word"`` (answer with the option text).
        answer_text: Ground-truth option text, required when ``mode="word"`` and
            ``options`` is non-empty; must be one of ``options``.

    Returns:
        The score. Missing/empty ground truth gives status ``"INPUT_ERROR"``, reward 0.

    Raises:
        ValueError: word mode with options but no valid ``answer_text``, or word mode
            without options for a non-yes/no answer (there is no vocabulary).
    """
    if not isinstance(answer, str) or not answer.strip():
        return AnswerScore(0.0, 0.0, 0.0, None, False, STATUS_INPUT_ERROR)
    kind = answer_kind(answer, options, mode)
    if kind == "word":
        if not options:
            raise ValueError("mode='word' needs options unless the answer is Yes/No")
        return _score(extract_word(response, options), _require_answer_text(answer_text, options))
    if kind == "yesno":
        return _score(extract_yes_no(response), answer.strip())
    return _score(extract_letter(response), answer.strip())


def is_correct(
    response: str | None,
    answer: str,
    options: Sequence[str] = (),
    mode: PromptMode = "letter",
    answer_text: str | None = None,
) -> bool:
    """True when the response's extracted answer is correct, in any format."""
    return correct_first_reward(response, answer, options, mode, answer_text).accuracy > 0


def score_batch(
    responses: Sequence[str | None],
    answers: Sequence[str],
    options_list: Sequence[Sequence[str]],
    mode: PromptMode = "letter",
    answer_texts: Sequence[str | None] | None = None,
) -> list[dict[str, Any]]:
    """Score a batch; returns one EasyR1-style dict (the AnswerScore fields) per response.

    Raises:
        ValueError: when the sequences differ in length.
    """
    texts: list[str | None] = (
        [None] * len(responses) if answer_texts is None else list(answer_texts)
    )
    lengths = {len(responses), len(answers), len(options_list), len(texts)}
    if len(lengths) != 1:
        raise ValueError("responses, answers, options_list and answer_texts differ in length")
    rows = zip(responses, answers, options_list, texts, strict=True)
    return [
        asdict(correct_first_reward(response, answer, options, mode, text))
        for response, answer, options, text in rows
    ]
