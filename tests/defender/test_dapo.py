"""Defender DAPO: the group filter, refill, the try limit, resuming, and that a short run learns."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from transformers import TrainerCallback

from aot.defender import Defender
from aot.defender.dapo import (
    CorrectFirstReward,
    DefenderDAPOConfig,
    build_dapo_trainer,
    dapo_dataset,
    log_sampling_summary,
    step_metrics,
    train_defender_dapo,
)
from aot.defender.dynamic_sampling import (
    EpochSeededRepeatSampler,
    InformativeBatch,
    group_means,
    informative_groups,
    merge_rollouts,
)
from aot.defender.examples import world_examples
from aot.defender.sft import DefenderSFTConfig, train_defender_sft
from aot.rewards import is_correct, make_prompt
from aot.world import COLORS, SHAPES

BLANK = Image.new("RGB", (56, 56), "gray")  # 4 image tokens: the tasks here are text-only
LOGGER = "aot.defender.dynamic_sampling"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _records(n: int) -> tuple[pd.DataFrame, dict[str, Image.Image]]:
    """n yes/no records `item <i>`, one image key each (all the same blank image)."""
    rows = [
        {
            "record_id": f"item{i}",
            "image": f"img{i}",
            "family": "existence",
            "question": f"Is item {i} ready?",
            "options": [],
            "answer": "Yes",
            "answer_text": "Yes",
        }
        for i in range(n)
    ]
    return pd.DataFrame(rows), {f"img{i}": BLANK for i in range(n)}


def _coloured_records(n: int) -> tuple[pd.DataFrame, dict[str, Image.Image]]:
    """`_records(n)` with a distinct plain colour per image, so no two groups look alike."""
    records, _ = _records(n)
    colours = list(COLORS)[:n]
    images = {
        k: Image.new("RGB", (56, 56), c) for k, c in zip(records["image"], colours, strict=True)
    }
    return records, images


def _scripted(patterns: dict[str, list[float]], group_size: int):  # noqa: ANN202
    """A reward giving the k-th rollout of record r the reward patterns[r][k]."""

    def scripted(completions, record_id, **_):  # noqa: ANN001, ANN003, ANN202
        return [patterns[r][i % group_size] for i, r in enumerate(record_id)]

    return scripted


def _config(**overrides) -> DefenderDAPOConfig:  # noqa: ANN003
    base = dict(
        num_generations=3,
        groups_per_step=2,
        max_steps=3,
        max_new_tokens=4,
        learning_rate=1e-3,
        prompt_style="short",
        save_steps=100,
        threads=1,
        seed=0,
    )
    return DefenderDAPOConfig(**(base | overrides))


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------- pure filter


def test_filter_keeps_groups_strictly_between_the_thresholds() -> None:
    means = group_means([0, 0.01, 0.02, 0.5, 0.98, 0.99, 1.0, np.nan], 1)
    assert informative_groups(means, 0.01, 0.99).tolist() == [
        False,  # all wrong
        False,  # <= 0.01
        True,
        True,
        True,
        False,  # >= 0.99
        False,  # all right
        False,  # unscorable
    ]
    # groups of 5: one right (0.2); all right but one lenient (0.96: kept, as in EasyR1)
    rewards = [1, 0, 0, 0, 0] + [0.8, 1, 1, 1, 1] + [1] * 5 + [0] * 5
    means = group_means(rewards, 5)
    np.testing.assert_allclose(means, [0.2, 0.96, 1.0, 0.0])
    assert informative_groups(means, 0.01, 0.99).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="groups of 5"):
        group_means([1, 0, 1], 5)


def test_informative_batch_accumulates_rounds_until_full() -> None:
    batch = InformativeBatch(target=3)
    # round 0: groups (0, 1/2, 1) -> only the middle one is informative
    assert batch.add([0, 0, 1, 0, 1, 1], 2) == [1]
    assert not batch.full and batch.missing == 2
    # round 1: four informative groups, two are needed; the rest is surplus, not "filtered"
    assert batch.add([1, 0, 0, 1, 1, 0, 0, 0, 1, 0], 2) == [0, 1]
    assert batch.full
    assert batch.kept == [(0, 1), (1, 0), (1, 1)]
    assert (batch.tries, batch.sampled, batch.filtered, batch.surplus) == (2, 8, 3, 2)
    assert batch.frac_filtered == pytest.approx(3 / 8)


def test_merge_rollouts_pads_prompts_left_and_completions_right() -> None:
    first = {
        "prompt_ids": torch.tensor([[0, 5], [6, 7]]),
        "prompt_mask": torch.tensor([[0, 1], [1, 1]]),
        "completion_ids": torch.tensor([[8, 0], [9, 9]]),
        "completion_mask": torch.tensor([[1, 0], [1, 1]]),
        "mm_token_type_ids": torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0]]),
        "advantages": torch.tensor([1.0, -1.0]),
        "num_images": [1, 1],
        "pixel_values": [torch.ones(4, 2), 2 * torch.ones(4, 2)],
        "num_items_in_batch": torch.tensor(3),
    }
    second = {
        "prompt_ids": torch.tensor([[1, 2, 3]]),
        "prompt_mask": torch.tensor([[1, 1, 1]]),
        "completion_ids": torch.tensor([[4]]),
        "completion_mask": torch.tensor([[1]]),
        "mm_token_type_ids": torch.tensor([[1, 1, 0, 0]]),
        "advantages": torch.tensor([0.5]),
        "num_images": [1],
        "pixel_values": [3 * torch.ones(4, 2)],
        "num_items_in_batch": torch.tensor(1),
    }
    merged = merge_rollouts([(first, [1]), (second, [0])], pad_token_id=0)
    assert merged["prompt_ids"].tolist() == [[0, 6, 7], [1, 2, 3]]
    assert merged["prompt_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert merged["completion_ids"].tolist() == [[9, 9], [4, 0]]
    assert merged["completion_mask"].tolist() == [[1, 1], [1, 0]]
    assert merged["mm_token_type_ids"].tolist() == [[0, 1, 0, 0, 0], [1, 1, 0, 0, 0]]
    assert merged["advantages"].tolist() == [-1.0, 0.5]
    assert [float(p[0, 0]) for p in merged["pixel_values"]] == [2.0, 3.0]
    assert int(merged["num_items_in_batch"]) == 3
    with pytest.raises(ValueError, match="weird"):
        merge_rollouts([(first | {"weird": torch.zeros(2, 2, 2)}, [0])], pad_token_id=0)


def test_sampler_order_depends_on_seed_and_epoch_only() -> None:
    def order(epoch: int, seed: int = 0) -> list[int]:
        sampler = EpochSeededRepeatSampler(range(12), mini_repeat_count=2, batch_size=3, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1) == order(1)  # a fresh sampler (a resumed run) repeats an epoch's order
    assert order(0) != order(1)
    assert order(1) != order(1, seed=1)
    assert order(0)[:6:2] == order(0)[1:6:2]  # each prompt twice in a row: one group


# ---------------------------------------------------------------------------- the trainer


def test_refill_fills_the_batch_with_exactly_the_informative_groups(
    tiny_defender_dir: Path, tmp_path: Path
) -> None:
    records, images = _records(8)
    g = 3
    patterns = {f"item{i}": [0.0, 0.0, 0.0] for i in range(8)}
    patterns |= {"item1": [1.0, 1.0, 1.0], "item4": [1.0, 1.0, 1.0]}  # all right: dropped too
    informative = {"item2": [1.0, 0.0, 0.0], "item5": [0.0, 1.0, 1.0], "item7": [1.0, 0.0, 1.0]}
    patterns |= informative
    config = _config(num_generations=g, groups_per_step=2, max_tries=30, max_steps=4)
    defender = Defender.from_pretrained(tiny_defender_dir)
    trainer = build_dapo_trainer(
        defender,
        dapo_dataset(records, images, prompt_style="short"),
        config,
        tmp_path,
        reward_funcs=[_scripted(patterns, g)],
    )
    batches = []
    generate = trainer._generate_and_score_completions

    def spy(inputs):  # noqa: ANN001, ANN202
        out = generate(inputs)
        batches.append(out)
        return out

    trainer._generate_and_score_completions = spy
    trainer.train()

    tokenizer = defender.processor.tokenizer
    assert len(batches) == 4
    for out in batches:
        assert out["completion_ids"].shape[0] == 2 * g  # full: groups_per_step groups
        prompts = tokenizer.batch_decode(out["prompt_ids"], skip_special_tokens=True)
        for start in range(0, 2 * g, g):
            tags = {
                p.split("Is ")[1].split(" ready")[0].replace(" ", "")
                for p in prompts[start : start + g]
            }
            assert len(tags) == 1  # a group stays together
            tag = tags.pop()
            assert tag in informative
            wanted = np.sign(np.array(informative[tag]) - np.mean(informative[tag]))
            got = np.sign(out["advantages"][start : start + g].numpy())
            assert got.tolist() == wanted.tolist()
        assert int(out["num_items_in_batch"]) == int(out["completion_mask"].sum())
    log = pd.DataFrame([r for r in trainer.state.log_history if "dapo/tries" in r])
    assert (log["dapo/groups_kept"] == 2).all()
    assert (log["dapo/tries"] > 1).any()  # the dataloader's batch alone was not enough
    assert (log["dapo/groups_sampled"] == 2 * log["dapo/tries"]).all()  # 2 prompts a round
    assert (log["dapo/frac_filtered"] > 0).any()
    assert {"clip_ratio/low_mean", "clip_ratio/high_mean", "completions/mean_length"} <= set(
        log.columns
    )


def test_try_limit_warns_and_skips_the_update(
    tiny_defender_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records, images = _records(6)
    patterns = {f"item{i}": [0.0, 0.0, 0.0] for i in range(6)} | {"item3": [1.0, 1.0, 1.0]}
    defender = Defender.from_pretrained(tiny_defender_dir)
    before = _weights(defender.model)
    with caplog.at_level(logging.INFO):
        trained, metrics = train_defender_dapo(
            defender,
            records,
            images,
            _config(max_tries=3, max_steps=2),
            tmp_path,
            reward_funcs=[_scripted(patterns, 3)],
        )
    skips = [r for r in caplog.records if "no informative group in 3 tries" in r.getMessage()]
    assert [r.levelno for r in skips] == [logging.WARNING, logging.INFO]  # the first warns
    summary = [r for r in caplog.records if r.getMessage().startswith("DAPO: of 2 steps")]
    assert [r.levelno for r in summary] == [logging.WARNING]
    assert "2 had no informative group (no update) and 0 fewer than" in summary[0].getMessage()
    assert metrics["dapo/tries"].tolist() == [3, 3]
    assert metrics["dapo/skipped"].tolist() == [1, 1]
    after = trained.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no update, not even momentum


def test_try_limit_trains_on_a_partial_batch(
    tiny_defender_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records, images = _records(6)
    patterns = {f"item{i}": [0.0, 0.0, 0.0] for i in range(6)} | {"item3": [1.0, 0.0, 0.0]}
    defender = Defender.from_pretrained(tiny_defender_dir)
    before = _weights(defender.model)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        trained, metrics = train_defender_dapo(
            defender,
            records,
            images,
            _config(max_tries=2, max_steps=1, groups_per_step=3),
            tmp_path,
            reward_funcs=[_scripted(patterns, 3)],
        )
    # 2 rounds x 3 prompts out of 6, no prompt drawn twice: item3 is rolled out exactly once
    assert metrics["dapo/groups_kept"].tolist() == [1]
    assert any(
        "only 1/3 informative groups after 2 tries" in r.getMessage() for r in caplog.records
    )
    after = trained.model.state_dict()
    assert not all(torch.equal(before[k], after[k]) for k in before)


def test_only_the_first_short_step_warns_and_nothing_deprecated_does(
    tiny_defender_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records, images = _records(6)
    patterns = {f"item{i}": [0.0, 0.0, 0.0] for i in range(6)} | {"item3": [1.0, 0.0, 0.0]}
    with caplog.at_level(logging.INFO, logger=LOGGER), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _, metrics = train_defender_dapo(
            Defender.from_pretrained(tiny_defender_dir),
            records,
            images,
            _config(max_tries=2, max_steps=2, groups_per_step=3),
            tmp_path,
            reward_funcs=[_scripted(patterns, 3)],
        )
    assert metrics["dapo/groups_kept"].tolist() == [1, 1]
    # neither transformers' deprecated argument nor the property TRL asks warns on every step
    assert not [w for w in seen if "gradient_checkpointing` is deprecated" in str(w.message)]
    short = [r for r in caplog.records if "informative groups after 2 tries" in r.getMessage()]
    assert [r.levelno for r in short] == [logging.WARNING]  # the first short step only
    assert any(
        "0 had no informative group (no update) and 2 fewer than 3" in r.getMessage()
        for r in caplog.records
    )
    steps = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(m.startswith("DAPO step 2: 1/3 informative groups, 2 tries") for m in steps)


def test_sampling_summary_counts_skipped_and_short_steps(caplog: pytest.LogCaptureFixture) -> None:
    metrics = pd.DataFrame({"dapo/skipped": [0.0, 1.0, 0.0, 0.0], "dapo/groups_kept": [8, 0, 5, 8]})
    with caplog.at_level(logging.INFO, logger="aot.defender.dapo"):
        log_sampling_summary(metrics, groups_per_step=8)
        log_sampling_summary(metrics.iloc[[0, 3]], groups_per_step=8)
        log_sampling_summary(pd.DataFrame({"step": [1]}), groups_per_step=8)  # no DAPO columns
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(lines) == 2
    assert lines[0][0] == logging.WARNING
    assert "of 4 steps, 1 had no informative group (no update) and 1 fewer than 8" in lines[0][1]
    assert lines[1][0] == logging.INFO and "of 2 steps, 0 had" in lines[1][1]


class _Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
        if state.global_step == 3:  # checkpoint-2 is on disk, step 3 is lost
            raise RuntimeError("simulated crash")


def _length_parity(completions, **_):  # noqa: ANN001, ANN003, ANN202
    """Depends on what was sampled, so a resumed run must restore the sampling RNG too."""
    return [float(len(c[0]["content"]) % 2 == 0) for c in completions]


def test_resumed_run_continues_like_an_uninterrupted_one(
    tiny_defender_dir: Path, tmp_path: Path
) -> None:
    records, images = _records(8)
    params = _config(max_steps=4, save_steps=2, groups_per_step=3, seed=3).to_dict()
    straight, straight_log = train_defender_dapo(
        tiny_defender_dir, records, images, params, tmp_path / "a", reward_funcs=[_length_parity]
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_defender_dapo(
            tiny_defender_dir,
            records,
            images,
            params,
            tmp_path / "b",
            reward_funcs=[_length_parity],
            callbacks=[_Crash()],
        )
    assert (tmp_path / "b" / "checkpoints" / "checkpoint-2" / "optimizer.pt").exists()
    resumed, resumed_log = train_defender_dapo(
        tiny_defender_dir, records, images, params, tmp_path / "b", reward_funcs=[_length_parity]
    )
    assert resumed_log["step"].tolist() == [1, 2, 3, 4]
    for column in ("loss", "reward", "dapo/tries", "grad_norm"):
        np.testing.assert_allclose(resumed_log[column], straight_log[column], rtol=1e-6)
    assert straight_log["reward"].nunique() > 1  # the reward really depends on the samples
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)  # Adam state restored too
    # the final model is a plain Defender folder
    files = {p.name for p in (tmp_path / "b" / "defender").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    # resuming a finished run trains nothing more
    again, again_log = train_defender_dapo(
        tiny_defender_dir, records, images, params, tmp_path / "b", reward_funcs=[_length_parity]
    )
    assert again_log["step"].tolist() == [1, 2, 3, 4]
    assert all(torch.equal(b[k], again.model.state_dict()[k]) for k in b)


def test_lora_run_returns_a_plain_merged_defender(tiny_defender_dir: Path, tmp_path: Path) -> None:
    records, images = _records(4)
    patterns = {f"item{i}": [1.0, 0.0, 0.0] for i in range(4)}
    defender = Defender.from_pretrained(tiny_defender_dir)
    n_params = defender.num_parameters()
    config = _config(max_steps=1, lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    trained, _ = train_defender_dapo(
        defender, records, images, config, tmp_path, reward_funcs=[_scripted(patterns, 3)]
    )
    assert type(trained.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert trained.num_parameters() == n_params
    assert Defender.from_pretrained(tmp_path / "defender").num_parameters() == n_params


def test_config_names_bad_keys() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        DefenderDAPOConfig.from_dict({"num_generation": 5})
    for key, value in [
        ("num_generations", 1),
        ("groups_per_step", 0),
        ("max_tries", 0),
        ("temperature", 0),
        ("loss_type", "ppo"),
        ("answer_mode", "yesno"),
        ("prompt_style", "long"),
        ("filter_low", 1.5),
        ("freeze_vision", "yes"),
        ("time_budget_s", -1),
    ]:
        with pytest.raises(ValueError, match=f"x\\.{key}"):
            DefenderDAPOConfig.from_dict({key: value}, prefix="x")
    with pytest.raises(ValueError, match="filter_low"):
        DefenderDAPOConfig.from_dict({"filter_low": 0.5, "filter_high": 0.4})
    config = DefenderDAPOConfig.from_dict({"max_steps": 3})
    assert (config.num_generations, config.epsilon, config.epsilon_high, config.beta) == (
        5,
        0.2,
        0.28,
        0.0,
    )
    with pytest.raises(ValueError, match="lacks column"):
        dapo_dataset(pd.DataFrame({"image": ["a"]}), {})


def test_dapo_dataset_attaches_each_image_from_memory() -> None:
    records, _ = _records(3)
    records.loc[2, "image"] = "img0"  # two records share an image
    rng = np.random.default_rng(0)
    pictures = {
        f"img{i}": Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))
        for i in range(2)
    }
    dataset = dapo_dataset(records, pictures, prompt_style="short")
    assert "image" not in dataset.column_names  # no PNG copy per row in the arrow table
    rows = [dataset[i] for i in range(3)]
    assert [r["record_id"] for r in rows] == ["item0", "item1", "item2"]
    assert rows[0]["image"] is rows[2]["image"]  # one decoded picture per distinct image
    for row, key in zip(rows, ["img0", "img1", "img0"], strict=True):
        assert np.array_equal(np.asarray(row["image"]), np.asarray(pictures[key]))
        assert row["image"].mode == "RGB" and row["answer"] == "Yes"
    batch = dataset.__getitems__([1, 2])  # how the trainer's DataLoader reads a batch
    assert [r["record_id"] for r in batch] == ["item1", "item2"]
    assert batch[1]["image"] is rows[0]["image"]


def test_correct_first_reward_reads_the_records_columns() -> None:
    reward = CorrectFirstReward("word")
    completions = [
        [{"role": "assistant", "content": c}] for c in ("\\boxed{red}", "boxed(red)", "x")
    ]
    options = [["red", "blue"]] * 3
    assert reward(completions, ["A"] * 3, options, ["red"] * 3) == [1.0, 0.8, 0.0]
    assert reward([[{"content": "\\boxed{Yes}"}]], ["Yes"], [[]], ["Yes"]) == [1.0]


# --------------------------------------------------------------------------- it learns

SIZES = ("small", "large", "tiny", "big")


def _yes_task() -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Image.Image]]:
    """168 yes/no questions whose answer is always Yes; 120 to train on, 48 held out."""
    rows = [
        {
            "record_id": f"{size}-{colour}-{shape}",
            "image": f"{size}-{colour}-{shape}",
            "family": "existence",
            "question": f"Is a {size} {colour} {shape} shown in the picture?",
            "options": [],
            "answer": "Yes",
            "answer_text": "Yes",
        }
        for shape in SHAPES
        for colour in COLORS
        for size in SIZES
    ]
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)
    return table.iloc[:120], table.iloc[120:], {k: BLANK for k in table["image"]}


def _sampled_accuracy(defender: Defender, records: pd.DataFrame, n: int = 4) -> float:
    prompts = [
        make_prompt(q, list(o), "short", "word")
        for q, o in zip(records["question"], records["options"], strict=True)
    ]
    answers = defender.generate(
        [BLANK] * len(prompts),
        prompts,
        n=n,
        temperature=1.0,
        max_new_tokens=8,
        batch_size=48,
        seed=123,
    )
    return float(
        np.mean(
            [is_correct(answer, "Yes", [], "word", "Yes") for group in answers for answer in group]
        )
    )


@pytest.mark.slow
def test_a_short_dapo_run_raises_held_out_accuracy(tiny_defender_dir: Path, tmp_path: Path) -> None:
    """The smallest learnable task: a brief SFT on coin-flip labels teaches the \\boxed{...}
    format and leaves Yes/No at chance; DAPO on the true labels (always Yes) must move the
    sampling policy on held-out questions. Sampled accuracy (temperature 1, the rollout
    policy) is measured, not greedy, whose before-value is 0 or 1 by the luck of the SFT."""
    train, held_out, images = _yes_task()
    rng = np.random.default_rng(0)
    coin = train.assign(answer=rng.choice(["Yes", "No"], len(train)))
    coin["answer_text"] = coin["answer"]
    defender = Defender.from_pretrained(tiny_defender_dir)
    sft = DefenderSFTConfig(
        max_steps=40,
        batch_size=16,
        learning_rate=3e-3,
        warmup_steps=5,
        lr_scheduler_type="constant_with_warmup",
        dense_weight=0.0,
        logging_steps=1000,
    )
    examples = world_examples(coin, images, None, mode="word", style="short")
    defender, _ = train_defender_sft(defender, examples, sft, tmp_path / "sft")
    before = _sampled_accuracy(defender, held_out)
    config = _config(
        num_generations=5,
        groups_per_step=4,
        max_steps=20,
        max_new_tokens=8,
        learning_rate=2e-3,
        weight_decay=0.0,
        max_tries=3,
    )
    trained, metrics = train_defender_dapo(defender, train, images, config, tmp_path / "dapo")
    after = _sampled_accuracy(trained, held_out)
    logging.getLogger(__name__).info("held-out sampled accuracy %.3f -> %.3f", before, after)
    # measured: 0.375 -> 0.927 here; 0.34 / 0.45 / 0.47 -> 0.96 / 0.96 / 0.97 with other seeds
    # and 200 training questions (a scratch run), so a 0.3 gain is a conservative bar
    assert after >= before + 0.3, (before, after)
    assert after >= 0.8, (before, after)
    assert metrics["reward"].iloc[-5:].mean() > metrics["reward"].iloc[:5].mean()


def test_rollouts_encode_each_prompt_once_and_train_the_same(
    tiny_defender_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRL rolls out num_generations copies of each prompt; the rollout encodes each prompt once
    (`sharing_group_prefill`) and the run trains exactly as with TRL's own generate."""
    import aot.defender.dynamic_sampling as dynamic_sampling
    import aot.defender.shared_prefill as shared_prefill

    records, images = _coloured_records(6)
    config = _config(num_generations=4, groups_per_step=3, max_steps=2, dynamic_sampling=False)
    groups: list[tuple[int, int]] = []
    original = shared_prefill.generate_with_shared_prefill

    def spy(model, inputs, n, **kwargs):  # noqa: ANN001, ANN003, ANN202
        groups.append((inputs["input_ids"].shape[0], n))
        return original(model, inputs, n, **kwargs)

    monkeypatch.setattr(shared_prefill, "generate_with_shared_prefill", spy)
    defender = Defender.from_pretrained(tiny_defender_dir)
    shared, _ = train_defender_dapo(defender, records, images, config, tmp_path / "shared")
    assert groups and all(g == (3, 4) for g in groups)  # 3 prompts x 4 rollouts, one prefill each

    def unchanged(model, group):  # noqa: ANN001, ANN202
        return contextlib.nullcontext()

    monkeypatch.setattr(dynamic_sampling, "sharing_group_prefill", unchanged)
    defender = Defender.from_pretrained(tiny_defender_dir)
    plain, _ = train_defender_dapo(defender, records, images, config, tmp_path / "plain")
    first, second = _weights(shared.model), _weights(plain.model)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    before = _weights(Defender.from_pretrained(tiny_defender_dir).model)
    assert any(not torch.equal(first[k], before[k]) for k in first)  # it did train


def test_rollouts_process_each_prompt_once_and_train_the_same(
    tiny_defender_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRL runs the processor on every copy of a prompt; the rollout processes each distinct
    prompt once (`processing_distinct_examples_once`) and the run trains exactly as without."""
    import aot.defender.dynamic_sampling as dynamic_sampling

    records, images = _coloured_records(6)
    config = _config(num_generations=4, groups_per_step=3, max_steps=2, dynamic_sampling=False)
    defender = Defender.from_pretrained(tiny_defender_dir)
    processor_class = type(defender.processor)
    texts: list[int] = []
    original = processor_class.__call__

    def counting(self, images=None, text=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
        texts.append(len(text))
        return original(self, images=images, text=text, **kwargs)

    monkeypatch.setattr(processor_class, "__call__", counting)
    once, _ = train_defender_dapo(defender, records, images, config, tmp_path / "once")
    assert type(once.processor) is processor_class
    # two processor calls per rollout batch (prompts, then the scoring inputs), 3 prompts each
    assert texts and set(texts) == {3}

    def unchanged(processor):  # noqa: ANN001, ANN202
        return contextlib.nullcontext()

    monkeypatch.setattr(dynamic_sampling, "processing_distinct_examples_once", unchanged)
    texts.clear()
    defender = Defender.from_pretrained(tiny_defender_dir)
    every, _ = train_defender_dapo(defender, records, images, config, tmp_path / "every")
    assert set(texts) == {12}
    first, second = _weights(once.model), _weights(every.model)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_step_metrics_keep_one_row_per_step_and_no_wall_clock() -> None:
    history = [
        {"step": 1, "loss": 0.5, "reward": 0.2, "step_time": 0.91},
        {"step": 1, "dapo/tries": 2.0},
        {"step": 2, "loss": 0.4, "reward": 0.3, "step_time": 0.87},
        {"step": 2, "train_runtime": 3.2, "train_steps_per_second": 0.6},
    ]
    table = step_metrics(history)
    assert table["step"].tolist() == [1, 2]
    assert table["loss"].tolist() == [0.5, 0.4]
    assert table.loc[0, "dapo/tries"] == 2.0
    # seconds differ from run to run; the saved log must not, for `dvc repro` to leave git clean
    assert not {"step_time", "train_runtime", "train_steps_per_second"} & set(table.columns)
