"""`Defender`: a VLM plus its processor, loaded through transformers' Auto classes, that answers."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

from aot.defender.image_cache import BoundedCache, cached_image_features
from aot.defender.rope_cache import ROPE_CACHE_BYTES, cached_rope_index
from aot.defender.shared_prefill import (
    can_share_prefill,
    generate_greedy_and_sampled,
    generate_with_shared_prefill,
)
from aot.defender.token_cache import LimitedCache, cached_tokenization
from aot.defender.vision_attention import batch_vision_attention

logger = logging.getLogger(__name__)

# Upper bound on the prompts whose chat text, and on the texts whose token ids, a Defender keeps
# (each a few hundred bytes; a few KB for ids).
CHAT_TEXTS_KEPT = 100_000


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"Defender folder '{path}' does not exist")
    if (path / "adapter_config.json").exists():
        return
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"Defender folder '{path}' has no config.json; is it a model folder?"
        )
    if (
        not any(p.suffix == ".safetensors" for p in path.iterdir())
        and not (path / "model.safetensors.index.json").exists()
    ):
        raise FileNotFoundError(
            f"Defender folder '{path}' has no .safetensors weights (only safetensors are loaded)"
        )


def user_content(prompt: str, with_image: bool = True) -> list[dict[str, str]]:
    """A user turn: the text first, then the image, as the paper's evaluation harness sends it.

    The order also matters for a small model: image tokens placed after the question can attend
    back to it, so each image token can tell whether it is what the question asks about.
    """
    return [{"type": "text", "text": prompt}] + ([{"type": "image"}] if with_image else [])


class Defender:
    """A vision-language model that answers questions about images.

    Works the same for the tiny default and for a real checkpoint such as Qwen2.5-VL-7B-Instruct.
    """

    # `generate(..., greedy_first=True)` exists (the evaluation asks for it when it can).
    answers_greedy_first = True

    def __init__(self, model: Any, processor: Any) -> None:
        batch_vision_attention(model)  # the same numbers, fewer attention calls
        self.model = model
        self.processor = processor
        self._image_cache: MutableMapping[Any, Any] | None = None
        self._chat_texts: dict[str, str] = {}
        self._encodings = LimitedCache(CHAT_TEXTS_KEPT)
        self._rope_rows = BoundedCache(ROPE_CACHE_BYTES)
        # Batched generation with a decoder-only LM needs left padding.
        self.processor.tokenizer.padding_side = "left"

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | None = None,
        processor_args: dict[str, Any] | None = None,
    ) -> Defender:
        """Loads a full model folder, or a peft adapter folder on top of its base model."""
        path = Path(path)
        _check_folder(path)
        if isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)
        kwargs: dict[str, Any] = {"use_safetensors": True}
        if dtype is not None:
            kwargs["dtype"] = dtype
        adapter = path / "adapter_config.json"
        if adapter.exists():
            from peft import PeftModel

            base_path = Path(json.loads(adapter.read_text())["base_model_name_or_path"])
            _check_folder(base_path)
            model = AutoModelForImageTextToText.from_pretrained(base_path, **kwargs)
            model = PeftModel.from_pretrained(model, path)
        else:
            model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        processor = AutoProcessor.from_pretrained(path, **(processor_args or {}))
        if device:
            model = model.to(device)
        return cls(model.eval(), processor)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @contextmanager
    def reusing_images(self, cache: MutableMapping[Any, Any]) -> Iterator[None]:
        """Within the block, `generate` keeps each image's vision features in ``cache`` and
        reuses them on later calls (`aot.defender.image_cache`). The weights must not change
        inside the block. Outside one, an image that a batch holds several times is still
        encoded once."""
        previous, self._image_cache = self._image_cache, cache
        try:
            yield
        finally:
            self._image_cache = previous

    def chat_text(self, prompt: str) -> str:
        """The model's input text for one image and one user prompt (layout of `user_content`).

        Kept per prompt: the evaluation asks a few hundred distinct prompts tens of thousands
        of times (65,592 renderings of the jinja template, 2.45 s of the default stage under
        `bench_overhead.py --functions`).
        """
        text = self._chat_texts.get(prompt)
        if text is None:
            messages = [{"role": "user", "content": user_content(prompt)}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            if len(self._chat_texts) < CHAT_TEXTS_KEPT:
                self._chat_texts[prompt] = text
        return text

    @torch.inference_mode()
    def generate(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int = 16,
        batch_size: int = 16,
        seed: int | None = None,
        progress: bool = False,
        greedy_first: bool = False,
    ) -> list[list[str]]:
        """Answers each (image, prompt) pair `n` times; greedy when temperature is 0.

        Returns one list of `n` decoded answers per prompt. Uses the KV cache and batches of
        `batch_size` prompts (each expanded to `n` sequences when sampling, after its prompt is
        encoded once: `aot.defender.shared_prefill`).

        ``greedy_first`` (sampling only): each list starts with a greedy answer, then the `n`
        samples (`n + 1` in all), from the same processor pass and prefill; the samples are
        the ones the call without it draws.
        """
        if len(images) != len(prompts):
            raise ValueError(f"generate: {len(images)} images but {len(prompts)} prompts")
        if n < 1 or batch_size < 1 or max_new_tokens < 1:
            raise ValueError("generate: n, batch_size and max_new_tokens must be positive")
        sample = temperature > 0
        if not sample and n > 1:
            raise ValueError("generate: n > 1 needs temperature > 0 (greedy answers are identical)")
        if greedy_first and not sample:
            raise ValueError("generate: greedy_first needs temperature > 0 (samples to follow)")
        if seed is not None:
            torch.manual_seed(seed)
        self.model.eval()
        common: dict[str, Any] = dict(max_new_tokens=max_new_tokens, use_cache=True)
        greedy_kwargs = common | dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        gen_kwargs = common | dict(num_return_sequences=n)
        if sample:
            gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            gen_kwargs.update(greedy_kwargs)
        answers: list[list[str]] = []
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="answering", disable=not progress, unit="batch"):
            end = start + batch_size
            # The processor runs on the whole batch, uncached: its images are nearly always
            # distinct (the n samples come from num_return_sequences), and one call on 16 is
            # cheaper than 16 on one. Features are still keyed by the patches they come from.
            # Its texts were nearly all tokenized before, and their rows' layouts (the rope
            # positions) seen before: a few hundred questions, one image size.
            features = self._image_cache if self._image_cache is not None else {}
            with (
                cached_image_features(self.model, features),
                cached_tokenization(self.processor.tokenizer, self._encodings),
                cached_rope_index(self.model, self._rope_rows),
            ):
                batch_images = [im.convert("RGB") for im in images[start:end]]
                texts = [self.chat_text(p) for p in prompts[start:end]]
                inputs = self.processor(
                    images=batch_images, text=texts, padding=True, return_tensors="pt"
                ).to(self.device)
                greedy = None
                if greedy_first and can_share_prefill(self.model, inputs, n + 1):
                    greedy, output = generate_greedy_and_sampled(
                        self.model, inputs, n, greedy_kwargs=greedy_kwargs, sample_kwargs=gen_kwargs
                    )
                else:
                    if greedy_first:  # greedy decoding draws no random numbers
                        greedy = self.model.generate(**inputs, **greedy_kwargs)
                    if can_share_prefill(self.model, inputs, n):
                        output = generate_with_shared_prefill(self.model, inputs, n, **gen_kwargs)
                    else:
                        output = self.model.generate(**inputs, **gen_kwargs)
                decoded = self._decode(output, inputs)
                firsts = self._decode(greedy, inputs) if greedy is not None else None
                for row, i in enumerate(range(0, len(decoded), n)):
                    answers.append(([firsts[row]] if firsts else []) + decoded[i : i + n])
        return answers

    def _decode(self, output: torch.Tensor, inputs: Any) -> list[str]:
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)

    @torch.inference_mode()
    def completion_probability(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        completions: Sequence[str],
        *,
        batch_size: int = 16,
    ) -> list[float]:
        """The model's probability of replying exactly `completions[i]` (teacher-forced).

        A dense view of how sure the Defender is of an answer (transformers has no scoring
        call for chat models, so it is written here): the product of the completion tokens'
        probabilities after the generation prompt. Padding is on the left (as for `generate`),
        so each row's completion is its last tokens.
        """
        if not len(images) == len(prompts) == len(completions):
            raise ValueError(
                f"completion_probability: {len(images)} images, {len(prompts)} prompts, "
                f"{len(completions)} completions"
            )
        if batch_size < 1:
            raise ValueError("completion_probability: batch_size must be positive")
        tokenizer = self.processor.tokenizer
        self.model.eval()
        out: list[float] = []
        for start in range(0, len(prompts), batch_size):
            batch_images = [im.convert("RGB") for im in images[start : start + batch_size]]
            prefixes = [self.chat_text(p) for p in prompts[start : start + batch_size]]
            texts = [
                prefix + completion
                for prefix, completion in zip(
                    prefixes, completions[start : start + batch_size], strict=True
                )
            ]
            # Completion tokens: the difference in length, so a merge across the boundary counts.
            # Batched and cached: the prompts and the answers are few, their pairs too.
            with cached_tokenization(tokenizer, self._encodings):
                full = tokenizer(texts)["input_ids"]
                lengths = [
                    len(ids) - len(prefix)
                    for ids, prefix in zip(full, tokenizer(prefixes)["input_ids"], strict=True)
                ]
                empty = [start + row for row, n in enumerate(lengths) if n < 1]
                if empty:
                    raise ValueError(f"completion_probability: empty completion at {empty[0]}")
                inputs = self.processor(
                    images=batch_images, text=texts, padding=True, return_tensors="pt"
                ).to(self.device)
            with cached_rope_index(self.model, self._rope_rows):
                logits = self.model(**inputs).logits.float()
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = inputs["input_ids"][:, 1:]
            token_lp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            out.extend(float(token_lp[row, -n:].sum().exp()) for row, n in enumerate(lengths))
        return out
