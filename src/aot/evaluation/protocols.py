"""Answering protocols: a single greedy answer, or the paper's strict multi-trial protocol.

``answer_table`` asks a Defender (anything with ``aot.defender.Defender.generate``'s signature)
every row of a record table and scores the replies.

* ``protocol="greedy"``: one greedy answer per row (temperature 0).
* ``protocol="strict"`` (§6.1 of the method notes): up to ``trials`` queries per row; a row is
  correct only if *every* trial is correct, and its replies stop at its first wrong trial.
  With ``temperature > 0`` the trials are samples, drawn in one ``generate`` call per chunk
  (``n=trials``): one processor pass, one prefill (``aot.defender.shared_prefill``) and one
  decoding loop instead of one per trial, 0.46 of the time of asking trial by trial on the
  evaluation's suites (``benchmarks/results/strict_protocol.md``); the replies after a row's
  first wrong one are dropped, so the output reads as if the trials had been asked one at a
  time. With ``temperature == 0`` they are repeated greedy answers, asked trial by trial
  (identical for a deterministic model, so the protocol then equals greedy at ``trials`` times
  the cost; the paper used it at temperature 0 as a nondeterminism penalty of its vLLM server).

``answer_tables`` answers under several protocols; greedy and sampled strict then come from
one ``generate`` call per chunk when the Defender offers ``greedy_first`` (one processor pass
and one prefill for both, the same answers).

Scoring uses the training protocol (``aot.rewards.correct_first_reward`` in ``mode`` word or
letter) unless an ``extractor`` (a callable, or a name in ``aot.evaluation.extraction``) is
given: then ``extracted = extractor(response)`` and ``correct = extracted == answer``.

Prompts: a ``prompt`` column, when present, is used verbatim (the benchmark loaders write the
benchmark's own layout there); otherwise ``aot.rewards.build_prompt(question, options, mode)``,
i.e. ``aot.defender.examples.make_prompt`` with the "protocol" style.

Reproducibility: sampling seeds are derived from ``(seed, trial, chunk)`` (trial 0 for the
sampled strict call that draws every trial), so the same table,
Defender and seed give the same answers. Images are loaded per chunk of ``batch_size`` rows, so
large benchmark images are never all in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from aot.evaluation.extraction import Extractor, get_extractor
from aot.rewards import build_prompt, correct_first_reward

Protocol = Literal["greedy", "strict"]
PROTOCOLS: tuple[str, ...] = ("greedy", "strict")
OUTPUT_COLUMNS: tuple[str, ...] = ("responses", "response", "extracted", "correct", "trials")


def load_picture(images: Mapping[str, Any], key: str) -> Any:
    """The RGB image stored (or lazily loadable by calling the value) under ``key``.

    Same contract as ``aot.defender.examples.load_image``, without importing the Defender
    package (and torch) just to evaluate.
    """
    if key not in images:
        raise KeyError(f"image {key!r} is referenced by a record but missing from the images")
    value = images[key]
    return (value() if callable(value) else value).convert("RGB")


class DecodedImages(Mapping[str, Any]):
    """``images`` whose pictures, once loaded and decoded, are kept in ``cache`` (a dict, or an
    ``aot.defender.image_cache.BoundedCache`` that stops keeping them when full), so that the
    strict protocol's later trials do not decode the same PNG again.

    A lazily loaded image whose dataset keeps the process's decoded pictures
    (``aot.datasets.images.PictureDataset``: its ``load_shared``) is kept as that very picture,
    not as a copy, so the cache holds no second copy of it; readers get a copy through
    `load_picture`, so no one can draw on the shared one.
    """

    def __init__(self, images: Mapping[str, Any], cache: MutableMapping[Any, Any]) -> None:
        self.images = images
        self.cache = cache

    def __getitem__(self, key: str) -> Any:
        hit = self.cache.get(("picture", key))
        if hit is None:
            value = self.images.get(key)
            shared = getattr(getattr(value, "__self__", None), "load_shared", None)
            hit = shared() if shared is not None else None
            if hit is None or hit.mode != "RGB":
                hit = load_picture(self.images, key)
            self.cache[("picture", key)] = hit
        return hit

    def __iter__(self) -> Iterator[str]:
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __contains__(self, key: object) -> bool:
        return key in self.images


def table_prompts(table: pd.DataFrame, mode: str) -> list[str]:
    """The ``prompt`` column verbatim when present, else the protocol prompt of each row."""
    if "prompt" in table.columns:
        return [str(p) for p in table["prompt"]]
    return [
        build_prompt(q, list(o), mode=mode)  # type: ignore[arg-type]
        for q, o in zip(table["question"], table["options"], strict=True)
    ]


def resolve_extractor(extractor: Extractor | str | None) -> Extractor | None:
    """A callable extractor from a name, a callable or None (None: the training protocol)."""
    return get_extractor(extractor) if isinstance(extractor, str) else extractor


def score_rows(
    rows: pd.DataFrame, responses: Sequence[str], mode: str, extractor: Extractor | None
) -> tuple[list[str | None], list[bool]]:
    """(extracted answers, correctness) of ``responses`` to ``rows`` (same order)."""
    if extractor is not None:
        extracted = [extractor(r) for r in responses]
        truths = [str(a).strip() for a in rows["answer"]]
        return extracted, [e is not None and e == t for e, t in zip(extracted, truths, strict=True)]
    texts = rows["answer_text"] if "answer_text" in rows.columns else [None] * len(rows)
    scores = [
        correct_first_reward(r, a, list(o), mode=mode, answer_text=t)  # type: ignore[arg-type]
        for r, a, o, t in zip(responses, rows["answer"], rows["options"], texts, strict=True)
    ]
    return [s.extracted for s in scores], [s.accuracy > 0 for s in scores]


def chunk_seed(seed: int, trial: int, chunk: int) -> int:
    """A 31-bit sampling seed derived from (seed, trial, chunk): distinct per call, stable."""
    return int(np.random.SeedSequence([seed, trial, chunk]).generate_state(1)[0] >> 1)


def ask(
    defender: Any,
    keys: Sequence[str],
    prompts: Sequence[str],
    images: Mapping[str, Any],
    *,
    temperature: float,
    batch_size: int,
    max_new_tokens: int,
    seed: int,
    trial: int,
    n: int = 1,
    greedy_first: bool = False,
) -> list[list[str]]:
    """``n`` answers per (image key, prompt), asked in chunks of ``batch_size`` rows; with
    ``greedy_first``, a greedy answer before them (``Defender.generate``'s option)."""
    extra = {"greedy_first": True} if greedy_first else {}
    expected = n + int(greedy_first)
    answers: list[list[str]] = []
    for chunk, start in enumerate(range(0, len(prompts), batch_size)):
        chunk_keys = keys[start : start + batch_size]
        pictures = [load_picture(images, k) for k in chunk_keys]
        out = defender.generate(
            pictures,
            list(prompts[start : start + batch_size]),
            n=n,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            seed=chunk_seed(seed, trial, chunk),
            progress=False,
            **extra,
        )
        if len(out) != len(chunk_keys) or any(len(a) != expected for a in out):
            raise ValueError(
                f"answer_table: the defender returned {len(out)} answer lists for "
                f"{len(chunk_keys)} prompts (or a list without {expected} answers)"
            )
        answers.extend(list(a) for a in out)
    return answers


def check_arguments(table: pd.DataFrame, image_column: str, protocol: str, trials: int) -> None:
    """Reject unknown protocols, bad trial counts and tables missing needed columns."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"answer_table: protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if trials < 1:
        raise ValueError(f"answer_table: trials must be >= 1, got {trials}")
    needed = [image_column, "answer"]
    if "prompt" not in table.columns:
        needed += ["question", "options"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"answer_table: the table lacks column(s) {missing}")


def answer_table(
    defender: Any,
    table: pd.DataFrame,
    images: Mapping[str, Any],
    *,
    protocol: Protocol = "greedy",
    **options: Any,
) -> pd.DataFrame:
    """The table (index reset) plus the protocol's answers and scores; ``options`` are
    `answer_tables`' (``image_column``, ``mode``, ``trials``, ``temperature``, ``batch_size``,
    ``max_new_tokens``, ``seed``, ``extractor``).

    Added columns: ``responses`` (the replies up to the first wrong one, 1 to ``trials``),
    ``response`` (the decisive reply: the first wrong one, else the last), ``extracted``
    (its extracted answer), ``correct`` (all trials right) and ``trials`` (how many count).
    ``temperature`` and ``trials`` are ignored by the greedy protocol.
    """
    return answer_tables(defender, table, images, protocols=(protocol,), **options)[protocol]


def answer_tables(
    defender: Any,
    table: pd.DataFrame,
    images: Mapping[str, Any],
    *,
    protocols: Sequence[str] = PROTOCOLS,
    image_column: str = "image",
    mode: str = "word",
    trials: int = 3,
    temperature: float = 1.0,
    batch_size: int = 32,
    max_new_tokens: int = 12,
    seed: int = 0,
    extractor: Extractor | str | None = None,
) -> dict[str, pd.DataFrame]:
    """``answer_table`` under each of ``protocols``, by protocol name.

    Greedy and sampled strict together: a Defender whose ``answers_greedy_first`` is true
    answers both in one ``generate`` call per chunk (one processor pass and one prefill:
    ``aot.defender.shared_prefill.generate_greedy_and_sampled``); the answers are the ones
    asking protocol by protocol gives.
    """
    for protocol in protocols:
        check_arguments(table, image_column, protocol, trials)
    rows = table.reset_index(drop=True)
    scorer = resolve_extractor(extractor)
    prompts = table_prompts(rows, mode)
    keys = [str(k) for k in rows[image_column]]
    asking = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed, trial=0)
    sampled = "strict" in protocols and temperature > 0
    greedy: list[list[str]] | None = None
    drawn: list[list[str]] | None = None
    if "greedy" in protocols and sampled and getattr(defender, "answers_greedy_first", False):
        both = ask(
            defender,
            keys,
            prompts,
            images,
            temperature=temperature,
            n=trials,
            greedy_first=True,
            **asking,
        )
        greedy, drawn = [a[:1] for a in both], [a[1:] for a in both]
    else:
        if "greedy" in protocols:
            greedy = ask(defender, keys, prompts, images, temperature=0.0, **asking)
        if sampled:  # all trials in one call (module docstring)
            drawn = ask(
                defender, keys, prompts, images, temperature=temperature, n=trials, **asking
            )
    out = {}
    for protocol in protocols:
        if protocol == "greedy":
            out[protocol] = score_trials(
                rows, 1, lambda t, alive: [greedy[i][t] for i in alive], mode, scorer
            )
        elif drawn is not None:
            out[protocol] = score_trials(
                rows, trials, lambda t, alive: [drawn[i][t] for i in alive], mode, scorer
            )
        else:  # greedy trials, asked one by one (identical for a deterministic Defender)

            def repeat(trial: int, alive: np.ndarray) -> list[str]:
                sub_keys, sub_prompts = [keys[i] for i in alive], [prompts[i] for i in alive]
                answers = ask(
                    defender,
                    sub_keys,
                    sub_prompts,
                    images,
                    temperature=0.0,
                    **(asking | {"trial": trial}),
                )
                return [a[0] for a in answers]

            out[protocol] = score_trials(rows, trials, repeat, mode, scorer)
    return out


def score_trials(
    rows: pd.DataFrame,
    trials: int,
    answers_at: Callable[[int, np.ndarray], list[str]],
    mode: str,
    scorer: Extractor | None,
) -> pd.DataFrame:
    """Up to ``trials`` answers per row (``answers_at(trial, rows still right)``), scored;
    a row is right only if every trial is, and stops at its first wrong one."""
    responses: list[list[str]] = [[] for _ in range(len(rows))]
    extracted: list[str | None] = [None] * len(rows)
    correct = np.ones(len(rows), dtype=bool)
    alive = np.arange(len(rows))
    for trial in range(trials):
        if alive.size == 0:
            break
        answers = answers_at(trial, alive)
        found, ok = score_rows(rows.iloc[alive], answers, mode, scorer)
        for j, i in enumerate(alive):
            responses[i].append(answers[j])
            extracted[i] = found[j]
        correct[alive[~np.asarray(ok, dtype=bool)]] = False
        alive = alive[np.asarray(ok, dtype=bool)]
    return with_answers(rows, responses, extracted, correct)


def with_answers(
    rows: pd.DataFrame,
    responses: list[list[str]],
    extracted: list[str | None],
    correct: np.ndarray,
) -> pd.DataFrame:
    """A copy of ``rows`` with the ``OUTPUT_COLUMNS`` filled in."""
    out = rows.copy()
    out["responses"] = responses
    out["response"] = [r[-1] if r else None for r in responses]
    out["extracted"] = extracted
    out["correct"] = correct.astype(bool)
    out["trials"] = [len(r) for r in responses]
    return out
