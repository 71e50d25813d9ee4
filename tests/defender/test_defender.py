"""The Defender family: build, save, load and generate, offline, through the Auto classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from aot.defender import Defender, TinyDefenderConfig
from aot.defender.build import _mrope_section


def _images(n: int) -> list[Image.Image]:
    colours = ["red", "blue", "green", "yellow"]
    return [Image.new("RGB", (112, 112), colours[i % 4]) for i in range(n)]


def test_saved_folder_is_a_plain_qwen2_5_vl_with_safetensors(tiny_defender_dir: Path) -> None:
    files = {p.name for p in tiny_defender_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    model = AutoModelForImageTextToText.from_pretrained(tiny_defender_dir)
    processor = AutoProcessor.from_pretrained(tiny_defender_dir)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"


def test_processor_keeps_the_world_image_on_the_patch_grid(tiny_defender_dir: Path) -> None:
    defender = Defender.from_pretrained(tiny_defender_dir)
    inputs = defender.processor(
        images=_images(1), text=[defender.chat_text("hi")], return_tensors="pt"
    )
    # 112 px = 8 x 8 patches of 14 px; merged 2x2 -> 16 image tokens in the text.
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]
    image_token = defender.model.config.image_token_id
    assert int((inputs["input_ids"] == image_token).sum()) == 16


def test_greedy_generation_is_batched_and_deterministic(tiny_defender_dir: Path) -> None:
    defender = Defender.from_pretrained(tiny_defender_dir)
    prompts = ["What colour is the circle?", "How many stars are there?", "Is there a red star?"]
    batched = defender.generate(_images(3), prompts, max_new_tokens=8, batch_size=3)
    one_by_one = [
        defender.generate(_images(3)[i : i + 1], prompts[i : i + 1], max_new_tokens=8)[0]
        for i in range(3)
    ]
    assert [len(a) for a in batched] == [1, 1, 1]
    assert batched == one_by_one  # left padding makes batching invisible


def test_chat_text_is_rendered_once_per_prompt(tiny_defender_dir: Path, monkeypatch) -> None:  # noqa: ANN001
    defender = Defender.from_pretrained(tiny_defender_dir)
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image"}]}]
    want = defender.processor.apply_chat_template(messages, add_generation_prompt=True)
    renders: list[int] = []
    original = defender.processor.apply_chat_template

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        renders.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(defender.processor, "apply_chat_template", counting)
    monkeypatch.setattr("aot.defender.model.CHAT_TEXTS_KEPT", 2)
    assert [defender.chat_text("hi") for _ in range(3)] == [want] * 3
    assert len(renders) == 1
    for prompt in ["a", "b", "c", "c"]:  # the third prompt is past the bound: rendered each time
        defender.chat_text(prompt)
    assert len(renders) == 1 + 4 and set(defender._chat_texts) == {"hi", "a"}


def test_sampling_returns_n_answers_and_is_seeded(tiny_defender_dir: Path) -> None:
    defender = Defender.from_pretrained(tiny_defender_dir)
    kwargs = dict(n=4, temperature=1.0, max_new_tokens=6, batch_size=2)
    first = defender.generate(_images(3), ["q"] * 3, seed=7, **kwargs)
    second = defender.generate(_images(3), ["q"] * 3, seed=7, **kwargs)
    other = defender.generate(_images(3), ["q"] * 3, seed=8, **kwargs)
    assert [len(a) for a in first] == [4, 4, 4]
    assert first == second
    assert first != other


def test_completion_probability_is_a_distribution_and_ignores_padding(
    tiny_defender_dir: Path,
) -> None:
    """Scores of the four colour answers to one question sum to at most 1 (they are disjoint
    replies), each matches the product of the step-by-step next-token probabilities, and a
    score does not change when a longer prompt in the batch pads it on the left."""
    defender = Defender.from_pretrained(tiny_defender_dir)
    image = _images(1)[0]
    prompt = "What colour is the square?"
    answers = ["\\boxed{red}", "\\boxed{blue}", "\\boxed{green}", "\\boxed{yellow}"]
    probs = defender.completion_probability([image] * 4, [prompt] * 4, answers)
    assert all(0.0 < p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 1e-5
    # The same probability from one forward per reply token, on the input cut before it.
    tok = defender.processor.tokenizer
    prefix = defender.chat_text(prompt)
    n = len(tok(prefix + answers[0])["input_ids"]) - len(tok(prefix)["input_ids"])
    full = defender.processor(images=[image], text=[prefix + answers[0]], return_tensors="pt")
    length, manual = full["input_ids"].shape[1], 1.0
    for cut in range(length - n, length):
        part = {k: v[:, :cut] if k.endswith(("_ids", "_mask")) else v for k, v in full.items()}
        with torch.no_grad():
            logits = defender.model(**part).logits[0, -1].float()
        manual *= float(torch.softmax(logits, -1)[full["input_ids"][0, cut]])
    assert n >= 3 and probs[0] == pytest.approx(manual, rel=1e-3)
    padded = defender.completion_probability(
        [image, image], [prompt, prompt + " Think about the options carefully."], answers[:2]
    )
    assert padded[0] == pytest.approx(probs[0], rel=1e-3)
    with pytest.raises(ValueError, match="completion_probability"):
        defender.completion_probability([image], [prompt, prompt], answers[:2])
    with pytest.raises(ValueError, match="empty completion at 1"):
        defender.completion_probability([image, image], [prompt, prompt], [answers[0], ""])


def test_generate_rejects_bad_arguments(tiny_defender_dir: Path) -> None:
    defender = Defender.from_pretrained(tiny_defender_dir)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        defender.generate(_images(2), ["q"])
    with pytest.raises(ValueError, match="temperature"):
        defender.generate(_images(1), ["q"], n=2)


def test_chat_template_marks_only_the_answer_as_assistant(tiny_defender_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(tiny_defender_dir)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "\\boxed{B}"}]},
    ]
    out = processor.apply_chat_template(
        messages,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        images=_images(1),
    )
    ids = torch.tensor(out["input_ids"]).flatten()
    mask = torch.tensor(out["assistant_masks"]).flatten().bool()
    assert processor.tokenizer.decode(ids[mask]) == "\\boxed{B}<|im_end|>"


def test_loading_refuses_folders_without_safetensors(
    tmp_path: Path, tiny_defender_dir: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Defender.from_pretrained(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_defender_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="safetensors"):
        Defender.from_pretrained(broken)


def test_tiny_config_validates_every_key() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        TinyDefenderConfig.from_dict({"hiden_size": 64})
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        TinyDefenderConfig.from_dict({"num_layers": 0})
    with pytest.raises(ValueError, match="divisible"):
        TinyDefenderConfig.from_dict({"hidden_size": 130})
    assert TinyDefenderConfig.from_dict({"hidden_size": 256}).hidden_size == 256
    with pytest.raises(ValueError, match="rope_theta must be a number above 1"):
        TinyDefenderConfig.from_dict({"rope_theta": "ten"})
    with pytest.raises(ValueError, match="rope_theta must be a number above 1"):
        TinyDefenderConfig.from_dict({"rope_theta": 0.5})
    with pytest.raises(ValueError, match="mrope_layout must be one of"):
        TinyDefenderConfig.from_dict({"mrope_layout": "diagonal"})


def _saved_and_loaded(folder: Path, **sizes: object) -> Defender:
    """A small tiny Defender built with `sizes`, saved to `folder` and loaded back."""
    from aot.defender import build_tiny_defender
    from aot.pipelines.bootstrap_dataset.defender_nodes import defender_corpus

    config = TinyDefenderConfig(
        **{"hidden_size": 64, "intermediate_size": 128, "vision_hidden_size": 32} | sizes,
        vocab_size=400,
    )
    corpus = defender_corpus({"image_size": 112}, n_scenes=5)
    build_tiny_defender(config, corpus, seed=0).save_pretrained(folder)
    return Defender.from_pretrained(folder)


def test_rope_theta_reaches_the_saved_config_and_the_rotary_frequencies(tmp_path: Path) -> None:
    loaded = _saved_and_loaded(tmp_path / "d", rope_theta=10)
    assert loaded.model.config.text_config.rope_parameters["rope_theta"] == 10.0
    inv_freq = loaded.model.model.language_model.rotary_emb.inv_freq
    head_dim = 64 // loaded.model.config.text_config.num_attention_heads
    # width takes the last (lowest) frequencies: at theta 10 they still turn across a row
    width_freqs = inv_freq[-_mrope_section(head_dim)[2] :]
    assert float(width_freqs.max()) * 5 > 0.5


@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
def test_mrope_section_sums_to_half_the_head(head_dim: int) -> None:
    section = _mrope_section(head_dim)
    assert sum(section) == head_dim // 2
    if head_dim == 128:
        assert section == [16, 24, 24]  # Qwen2.5-VL's own split


@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
def test_interleaved_mrope_gives_every_axis_fast_and_slow_frequencies(head_dim: int) -> None:
    half = head_dim // 2
    sections = _mrope_section(head_dim, "interleaved")
    assert sum(sections) == half and len(sections) % 3 == 0 and min(sections) >= 1
    axis = [i % 3 for i, n in enumerate(sections) for _ in range(n)]  # frequency -> t/h/w
    for a in (0, 1, 2):
        used = [k for k, x in enumerate(axis) if x == a]
        assert used[0] <= 2 and used[-1] >= half - 5, (a, used)
    # Qwen2.5-VL's blocks give width only the slowest quarter-plus
    blocks = _mrope_section(head_dim)
    assert [i % 3 for i, n in enumerate(blocks) for _ in range(n)][-1] == 2
    assert sum(blocks[:2]) >= half // 2


def test_interleaved_mrope_turns_width_across_a_row_in_the_saved_model(tmp_path: Path) -> None:
    speeds = {}
    for layout in ("sections", "interleaved"):
        # 32-wide heads, as the default Defender's
        model = _saved_and_loaded(tmp_path / layout, num_heads=2, mrope_layout=layout).model
        rotary = model.model.language_model.rotary_emb
        # positions that differ in width only: (t, h, w) = (0, 0, w)
        pos = torch.zeros(3, 1, 6, dtype=torch.long)
        pos[2, 0] = torch.arange(6)
        cos, _ = rotary(torch.zeros(1, 6, 32), pos)
        # how far the rotation moves across the row, over the head's dimensions
        speeds[layout] = float((cos[0, -1] - cos[0, 0]).abs().max())
    assert speeds["sections"] < 0.01
    assert speeds["interleaved"] > 0.3
