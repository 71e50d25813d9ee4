"""Tests for the VQA Defender answer protocol and the correct-first reward."""

from __future__ import annotations

import pytest

from aot.rewards import (
    STATUS_EXTRACTION_FAILURE,
    STATUS_INPUT_ERROR,
    STATUS_OK,
    AnswerScore,
    Extraction,
    answer_kind,
    build_prompt,
    correct_first_reward,
    extract_letter,
    extract_word,
    extract_yes_no,
    is_correct,
    score_batch,
    target_completion,
)

OK, FAIL, INPUT = STATUS_OK, STATUS_EXTRACTION_FAILURE, STATUS_INPUT_ERROR
COLOURS = ["red", "blue", "light blue", "3"]

# ------------------------------------------------------------------------ extraction


@pytest.mark.parametrize(
    ("response", "value", "strict", "status"),
    [
        ("\\boxed{B}", "B", True, OK),
        ("The answer is \\boxed{B}.", "B", True, OK),
        ("$\\boxed{Z}$", "Z", True, OK),
        ("The answer is \\boxed{ B }", "B", False, OK),
        ("\\boxed {B}", "B", False, OK),  # whitespace after "boxed" is lenient only
        ("\\boxed{b}", "B", False, OK),
        ("boxed(c)", "C", False, OK),
        ("boxed[d]", "D", False, OK),
        ("BOXED{ e }", "E", False, OK),
        ("**\\boxed{\tf\n}**", "F", False, OK),
        # any opening bracket pairs with any closing one (documented leniency)
        ("\\boxed{A)", "A", False, OK),
        ("boxed(A]", "A", False, OK),
        # no word boundary before "boxed", as in the original recipe
        ("unboxed(a)", "A", False, OK),
        # first match wins, within the strict pass and within the lenient pass
        ("\\boxed{A} but actually \\boxed{B}", "A", True, OK),
        ("boxed(a) then boxed(c)", "A", False, OK),
        # strict is searched over the whole string before lenient
        ("boxed[b] ... \\boxed{C}", "C", True, OK),
        ("\\boxed{ a } \\boxed{D}", "D", True, OK),
        # failures
        ("\\boxed{AB}", None, False, FAIL),  # two letters: neither strict nor lenient
        ("\\boxed{ A B }", None, False, FAIL),
        ("I think B", None, False, FAIL),
        ("The answer is (B)", None, False, FAIL),
        ("\\boxed{}", None, False, FAIL),
        ("\\boxed{A", None, False, FAIL),  # unclosed
        ("\\boxed A", None, False, FAIL),  # no bracket
        ("\\boxed{{A}}", None, False, FAIL),  # exactly one opening bracket
        ("\\boxed{\\text{A}}", None, False, FAIL),  # nested markup is not understood
        ("\\boxed{\\mathrm{B}}", None, False, FAIL),
        ("\\boxed{1}", None, False, FAIL),
        ("\\boxed{Ａ}", None, False, FAIL),  # fullwidth A
        ("\\boxed{\u212a}", None, False, FAIL),  # Kelvin sign, case-folds to k in Unicode
        ("\\boxed{\u017f}", None, False, FAIL),  # long s, case-folds to s in Unicode
        ("\\boxed\u3010A\u3011", None, False, FAIL),  # CJK brackets
        ("\\boxed{\u00a0A\u00a0}", None, False, FAIL),  # non-ASCII whitespace
        ("\\fbox{A}", None, False, FAIL),
        # input errors
        (None, None, False, INPUT),
        ("", None, False, INPUT),
        ("  \n\t ", None, False, INPUT),
    ],
)
def test_extract_letter(response: str | None, value: str | None, strict: bool, status: str):
    assert extract_letter(response) == Extraction(value, strict, status)


@pytest.mark.parametrize(
    ("response", "value", "strict", "status"),
    [
        ("\\boxed{Yes}", "Yes", True, OK),
        ("\\boxed{No}", "No", True, OK),
        ("So: \\boxed{No}.", "No", True, OK),
        ("\\boxed{yes}", "Yes", False, OK),
        ("\\boxed{NO}", "No", False, OK),
        ("boxed( Yes ]", "Yes", False, OK),
        ("\\boxed {no}", "No", False, OK),
        ("\\boxed{Yes} no wait \\boxed{No}", "Yes", True, OK),
        ("boxed(no) ... \\boxed{Yes}", "Yes", True, OK),
        ("\\boxed{Yesterday}", None, False, FAIL),
        ("\\boxed{Nope}", None, False, FAIL),
        ("\\boxed{Not}", None, False, FAIL),
        ("\\boxed{Y}", None, False, FAIL),
        ("\\boxed{Yes.}", None, False, FAIL),
        ("\\boxed{Yes, it is}", None, False, FAIL),
        ("\\boxed{\\text{Yes}}", None, False, FAIL),
        ("Yes", None, False, FAIL),
        ("\\boxed{Ｙes}", None, False, FAIL),  # fullwidth Y
        (None, None, False, INPUT),
        ("", None, False, INPUT),
    ],
)
def test_extract_yes_no(response: str | None, value: str | None, strict: bool, status: str):
    assert extract_yes_no(response) == Extraction(value, strict, status)


@pytest.mark.parametrize(
    ("response", "value", "strict", "status"),
    [
        ("\\boxed{red}", "red", True, OK),
        ("\\boxed{ Red }", "red", False, OK),
        ("boxed(RED]", "red", False, OK),
        ("\\boxed{light blue}", "light blue", True, OK),
        ("\\boxed{Light  Blue}", "light blue", False, OK),
        ("\\boxed{light\nblue}", "light blue", False, OK),
        ("\\boxed{blue}", "blue", True, OK),
        ("\\boxed{3}", "3", True, OK),
        ("\\boxed{ 3 }", "3", False, OK),
        ("\\boxed{blue} or \\boxed{red}", "blue", True, OK),
        ("boxed(red) ... \\boxed{blue}", "blue", True, OK),
        ("\\boxed{reddish}", None, False, FAIL),
        ("\\boxed{dark blue}", None, False, FAIL),
        ("\\boxed{lightblue}", None, False, FAIL),
        ("\\boxed{green}", None, False, FAIL),
        ("\\boxed{33}", None, False, FAIL),
        ("\\boxed{B}", None, False, FAIL),  # a letter is not a word answer
        ("\\boxed{\\text{red}}", None, False, FAIL),
        ("the answer is red", None, False, FAIL),
        (None, None, False, INPUT),
        ("   ", None, False, INPUT),
    ],
)
def test_extract_word(response: str | None, value: str | None, strict: bool, status: str):
    assert extract_word(response, COLOURS) == Extraction(value, strict, status)


def test_extract_word_prefers_longest_entry_and_escapes_regex_characters():
    vocabulary = ["a", "a+b", "(x)", "light", "light blue"]
    assert extract_word("\\boxed{a+b}", vocabulary) == Extraction("a+b", True, OK)
    assert extract_word("\\boxed{aab}", vocabulary).status == FAIL
    assert extract_word("\\boxed{(x)}", vocabulary) == Extraction("(x)", True, OK)
    assert extract_word("boxed[ Light Blue )", vocabulary).value == "light blue"
    assert extract_word("boxed[ light )", vocabulary).value == "light"


def test_extract_word_case_variants_and_empty_vocabulary():
    assert extract_word("\\boxed{Red}", ["red", "Red"]) == Extraction("Red", True, OK)
    assert extract_word("\\boxed{RED}", ["red", "Red"]) == Extraction("red", False, OK)
    assert extract_word("\\boxed{}", ["", "  "]).status == FAIL
    assert extract_word("\\boxed{x}", []).status == FAIL
    assert extract_word(None, []).status == INPUT


def test_extract_word_non_ascii_vocabulary_is_case_insensitive():
    assert extract_word("\\boxed{ÉCRU}", ["écru", "red"]) == Extraction("écru", False, OK)


# --------------------------------------------------------------------------- prompts


def test_build_prompt_letter_mode_exact():
    prompt = build_prompt("What colour is the car?", ["red", "blue", "green"])
    assert prompt == (
        "Please answer the following multiple-choice question. Choose the best answer from "
        "the options provided.\n\nWhat colour is the car?\nOptions:\nA. red\nB. blue\n"
        "C. green\n\nProvide your final answer in the format \\boxed{X}, where X is the "
        "letter of your choice."
    )


def test_build_prompt_yes_no_exact():
    prompt = build_prompt("Is there a dog?", [])
    assert prompt == (
        "Please answer the following question with only 'Yes' or 'No'.\n\n"
        "Is there a dog?\n\nAnswer with \\boxed{Yes} or \\boxed{No}."
    )
    assert build_prompt("Is there a dog?", [], mode="word") == prompt


def test_build_prompt_word_mode_exact():
    prompt = build_prompt("What colour?", ["red", "light blue"], mode="word")
    assert prompt == (
        "Please answer the following multiple-choice question. Choose the best answer from "
        "the options provided.\n\nWhat colour?\nOptions:\nA. red\nB. light blue\n\n"
        "Provide your final answer in the format \\boxed{answer}, where answer is the text "
        "of your choice."
    )


def test_build_prompt_keeps_option_order_and_rejects_too_many():
    options = [f"opt{i}" for i in range(26)]
    prompt = build_prompt("Q?", options)
    positions = [prompt.index(f"\n{chr(65 + i)}. opt{i}\n") for i in range(26)]
    assert positions == sorted(positions)
    with pytest.raises(ValueError):
        build_prompt("Q?", [*options, "one too many"])


@pytest.mark.parametrize(
    ("answer", "options", "mode", "kind"),
    [
        ("Yes", [], "letter", "yesno"),
        ("No", [], "word", "yesno"),
        ("B", ["x", "y"], "letter", "letter"),
        ("B", ["x", "y"], "word", "word"),
        ("Yes", ["Yes", "No"], "letter", "letter"),  # options given: an MCQ
        ("yes", [], "letter", "letter"),  # exact capitalisation required
    ],
)
def test_answer_kind(answer: str, options: list[str], mode: str, kind: str):
    assert answer_kind(answer, options, mode) == kind  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- reward


@pytest.mark.parametrize(
    ("response", "answer", "overall", "accuracy", "fmt", "status"),
    [
        ("\\boxed{B}", "B", 1.0, 0.8, 0.2, OK),
        ("\\boxed{ B }", "B", 0.8, 0.8, 0.0, OK),
        ("boxed(b)", "B", 0.8, 0.8, 0.0, OK),
        ("\\boxed{C}", "B", 0.0, 0.0, 0.0, OK),  # wrong but strict: no format credit
        ("boxed(c)", "B", 0.0, 0.0, 0.0, OK),
        ("I think B", "B", 0.0, 0.0, 0.0, FAIL),
        ("\\boxed{A} but actually \\boxed{B}", "B", 0.0, 0.0, 0.0, OK),
        (None, "B", 0.0, 0.0, 0.0, INPUT),
        ("\\boxed{B}", "", 0.0, 0.0, 0.0, INPUT),
        ("\\boxed{B}", "  ", 0.0, 0.0, 0.0, INPUT),
        ("\\boxed{B}", " B ", 1.0, 0.8, 0.2, OK),  # ground truth is stripped
        ("\\boxed{B}", "b", 0.0, 0.0, 0.0, OK),  # otherwise compared exactly
    ],
)
def test_correct_first_reward_letter(
    response: str | None, answer: str, overall: float, accuracy: float, fmt: float, status: str
):
    score = correct_first_reward(response, answer, ["w", "x", "y", "z"])
    assert (score.overall, score.accuracy, score.format, score.status) == (
        overall,
        accuracy,
        fmt,
        status,
    )


@pytest.mark.parametrize(
    ("response", "answer", "overall", "strict"),
    [
        ("\\boxed{Yes}", "Yes", 1.0, True),
        ("\\boxed{yes}", "Yes", 0.8, False),
        ("\\boxed{No}", "Yes", 0.0, True),
        ("\\boxed{No}", "No", 1.0, True),
        ("\\boxed{Nope}", "No", 0.0, False),
    ],
)
def test_correct_first_reward_yes_no(response: str, answer: str, overall: float, strict: bool):
    score = correct_first_reward(response, answer)
    assert score.overall == overall
    assert score.strict is strict


@pytest.mark.parametrize(
    ("response", "answer_text", "overall"),
    [
        ("\\boxed{light blue}", "light blue", 1.0),
        ("\\boxed{ Light Blue }", "light blue", 0.8),
        ("\\boxed{blue}", "light blue", 0.0),
        ("\\boxed{B}", "blue", 0.0),  # the letter of the right option is not a word answer
        ("\\boxed{3}", "3", 1.0),
    ],
)
def test_correct_first_reward_word(response: str, answer_text: str, overall: float):
    answer = "ABCD"[COLOURS.index(answer_text)]
    score = correct_first_reward(response, answer, COLOURS, "word", answer_text)
    assert score.overall == overall


def test_word_mode_requires_answer_text():
    with pytest.raises(ValueError, match="answer_text"):
        correct_first_reward("\\boxed{red}", "A", COLOURS, "word")
    with pytest.raises(ValueError, match="answer_text"):
        correct_first_reward("\\boxed{red}", "A", COLOURS, "word", "purple")
    with pytest.raises(ValueError, match="answer_text"):
        target_completion("A", None, COLOURS, "word")
    with pytest.raises(ValueError, match="options"):
        correct_first_reward("\\boxed{red}", "red", [], "word", "red")
    # yes/no questions need no answer_text even in word mode
    assert correct_first_reward("\\boxed{No}", "No", [], "word").overall == 1.0


def test_answer_score_fields():
    score = correct_first_reward("boxed(b)", "B", ["x", "y"])
    assert score == AnswerScore(0.8, 0.8, 0.0, "B", False, OK)


def test_is_correct():
    assert is_correct("\\boxed{B}", "B", ["x", "y"])
    assert is_correct("boxed(b)", "B", ["x", "y"])
    assert not is_correct("\\boxed{A}", "B", ["x", "y"])
    assert not is_correct(None, "B", ["x", "y"])
    assert is_correct("\\boxed{red}", "A", COLOURS, "word", "red")


def test_score_batch():
    rows = score_batch(
        ["\\boxed{A}", "\\boxed{yes}", "nothing"],
        ["A", "Yes", "B"],
        [["x", "y"], [], ["x", "y"]],
    )
    assert [row["overall"] for row in rows] == [1.0, 0.8, 0.0]
    assert set(rows[0]) == {"overall", "accuracy", "format", "extracted", "strict", "status"}
    assert rows[2]["status"] == FAIL
    words = score_batch(["\\boxed{red}"], ["A"], [COLOURS], "word", ["red"])
    assert words[0]["overall"] == 1.0
    with pytest.raises(ValueError):
        score_batch(["\\boxed{A}"], ["A", "B"], [["x"], ["y"]])


# ------------------------------------------------------------------------ round trip


@pytest.mark.parametrize(
    ("answer", "answer_text", "options", "mode", "expected"),
    [
        ("B", "blue", ["red", "blue"], "letter", "\\boxed{B}"),
        ("Yes", None, [], "letter", "\\boxed{Yes}"),
        ("No", None, [], "word", "\\boxed{No}"),
        ("A", "red", COLOURS, "word", "\\boxed{red}"),
        ("C", "light blue", COLOURS, "word", "\\boxed{light blue}"),
        ("D", "3", COLOURS, "word", "\\boxed{3}"),
    ],
)
def test_target_completion_round_trip(
    answer: str, answer_text: str | None, options: list[str], mode: str, expected: str
):
    kwargs = {"answer_text": answer_text, "options": options, "mode": mode}
    completion = target_completion(answer, **kwargs)  # type: ignore[arg-type]
    assert completion == expected
    score = correct_first_reward(completion, answer, **kwargs)  # type: ignore[arg-type]
    assert score == AnswerScore(1.0, 0.8, 0.2, score.extracted, True, OK)
