"""Benchmark loaders (POPE, HallusionBench, V*, HR-Bench) and their scoring, on tiny fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from aot.evaluation.benchmarks import (
    BENCHMARK_COLUMNS,
    BenchmarkError,
    hallusion_metrics,
    load_hallusionbench,
    load_hrbench,
    load_pope,
    load_vstar,
    score_benchmark,
    shuffle_options,
)
from aot.evaluation.protocols import answer_table
from aot.rewards import build_prompt
from aot.rewards.answer import MCQ_HEADER, MCQ_LETTER_FOOTER

# ------------------------------------------------------------------------------------- POPE


def test_pope_loader(bench_tsv) -> None:
    table, images = load_pope(bench_tsv("pope"))
    assert list(table.columns[: len(BENCHMARK_COLUMNS)]) == list(BENCHMARK_COLUMNS)
    assert table["answer"].tolist() == ["Yes", "No", "No"]
    assert table["subtype"].tolist() == ["random", "popular", "adversarial,popular"]
    assert table["image"].tolist() == ["pope-1", "pope-1", "pope-3"]  # row 2 reuses row 1's
    assert sorted(images) == ["pope-1", "pope-3"]
    picture = images["pope-3"]()
    assert picture.size == (5, 7) and picture.getpixel((0, 0)) == (30, 30, 200)
    assert table["prompt"][0] == build_prompt("Is there a dog in the image?", [])
    assert (table["family"] == "existence").all() and table["options"].map(len).eq(0).all()


def test_pope_errors_name_file_row_and_column(bench_tsv) -> None:
    path = bench_tsv("pope", lambda rows: [r.pop("category") for r in rows])
    with pytest.raises(BenchmarkError, match=r"pope\.tsv.*'category'"):
        load_pope(path)
    path = bench_tsv("pope", lambda rows: rows[1].update(answer="maybe"))
    with pytest.raises(BenchmarkError, match=r"pope\.tsv: row 2 \(index '2'\): column 'answer'"):
        load_pope(path)
    path = bench_tsv("pope", lambda rows: rows[1].update(image="99"))
    with pytest.raises(BenchmarkError, match=r"row 2.*column 'image'.*'99'"):
        load_pope(path)
    path = bench_tsv("pope", lambda rows: rows[1].update(question=" "))
    with pytest.raises(BenchmarkError, match=r"row 2.*'question' is empty"):
        load_pope(path)


def test_pope_corrupt_image_fails_lazily_naming_the_file(bench_tsv) -> None:
    path = bench_tsv("pope", lambda rows: rows[2].update(image="QUJD" * 40))
    table, images = load_pope(path)  # loading the table does not decode images
    with pytest.raises(BenchmarkError, match=r"pope\.tsv row 3.*cannot be decoded"):
        images["pope-3"]()


def test_pope_end_to_end_scoring(bench_tsv, scripted) -> None:
    table, images = load_pope(bench_tsv("pope"))
    defender = scripted(lambda prompt, k, rng: "Yes, I can see it." if "dog" in prompt else "no")
    out = answer_table(defender, table, images, mode="letter", extractor="pope")
    metrics = score_benchmark(out, "pope")
    assert out["correct"].tolist() == [True, True, True]
    assert metrics["overall"]["f1"] == 1.0 and metrics["overall"]["yes_ratio"] == pytest.approx(
        1 / 3
    )
    assert metrics["popular"]["n"] == 2 and metrics["adversarial"]["n"] == 1


# --------------------------------------------------------------------------- HallusionBench


def test_hallusionbench_loader_and_ids(bench_tsv) -> None:
    table, images = load_hallusionbench(bench_tsv("hallusionbench"))
    assert table["answer"].tolist() == ["Yes", "No", "No", "Yes"]
    assert table["set_id"].tolist() == ["1", "1", "2", "3"]
    assert table["figure_id"].tolist() == ["0", "1", "0", "0"]
    assert table["question_id"].tolist() == ["0", "0", "1", "0"]
    assert table["family"].tolist() == ["VD", "VD", "VD", "VS"]
    assert table["subtype"].tolist() == ["chart", "chart", "chart", "map"]
    assert table["image"][1] == table["image"][0] and len(images) == 3


def test_hallusionbench_ids_from_columns_and_errors(bench_tsv) -> None:
    def with_columns(rows: list[dict]) -> None:
        for i, row in enumerate(rows):
            row.update(set_id=f"s{i}", figure_id="f", question_id="q")

    table, _ = load_hallusionbench(bench_tsv("hallusionbench", with_columns))
    assert table["set_id"].tolist() == ["s0", "s1", "s2", "s3"]
    path = bench_tsv("hallusionbench", lambda rows: rows[3].update(index="VS_3"))
    with pytest.raises(BenchmarkError, match=r"row 4 \(index 'VS_3'\): column 'index'"):
        load_hallusionbench(path)
    path = bench_tsv("hallusionbench", lambda rows: [r.pop("l2-category") for r in rows])
    with pytest.raises(BenchmarkError, match="'l2-category'"):
        load_hallusionbench(path)


def test_hallusion_metrics_hand_computed(bench_tsv) -> None:
    table, _ = load_hallusionbench(bench_tsv("hallusionbench"))
    m = hallusion_metrics(table.assign(correct=[True, False, True, True]))
    assert m["overall"] == {"aAcc": 0.75, "fAcc": 0.75, "qAcc": pytest.approx(2 / 3), "n": 4}
    assert m["category"]["VD"]["aAcc"] == pytest.approx(2 / 3)
    assert m["category"]["VD"]["fAcc"] == pytest.approx(2 / 3)
    assert m["category"]["VD"]["qAcc"] == 0.5
    assert m["l2_category"]["map"] == {"aAcc": 1.0, "fAcc": 1.0, "qAcc": 1.0, "n": 1}
    with pytest.raises(ValueError, match="correct"):
        hallusion_metrics(table)


# ---------------------------------------------------------------------------------- HR-Bench


def test_hrbench_loader_and_prompt(bench_tsv) -> None:
    table, images = load_hrbench(bench_tsv("hrbench"))
    assert table["answer"].tolist() == ["B", "D"]
    assert table["answer_text"].tolist() == ["blue", "4"]
    assert table["family"].tolist() == ["FSP", "FCP"] and table["subtype"].tolist() == ["0", "0"]
    expected = (
        MCQ_HEADER
        + "What colour is the small sign?\nOptions:\nA. red\nB. blue\nC. green\nD. white"
        + MCQ_LETTER_FOOTER
    )
    assert table["prompt"][0] == expected
    assert images[table["image"][1]]().size == (5, 9)


def test_hrbench_image_path_and_errors(bench_tsv, tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (3, 4), (1, 2, 3)).save(tmp_path / "imgs" / "a.png")

    def use_paths(rows: list[dict]) -> None:
        for row in rows:
            row.pop("image")
            row["image_path"] = "imgs/a.png"

    table, images = load_hrbench(bench_tsv("hrbench", use_paths))
    assert table["image"].tolist() == ["hrbench-imgs_a.png"] * 2 and len(images) == 1
    assert images["hrbench-imgs_a.png"]().getpixel((0, 0)) == (1, 2, 3)

    def missing_file(rows: list[dict]) -> None:
        use_paths(rows)
        rows[1]["image_path"] = "imgs/b.png"

    with pytest.raises(BenchmarkError, match=r"row 2.*'image_path'.*imgs/b\.png"):
        load_hrbench(bench_tsv("hrbench", missing_file))
    with pytest.raises(BenchmarkError, match=r"row 1.*column 'answer'.*'E'"):
        load_hrbench(bench_tsv("hrbench", lambda rows: rows[0].update(answer="E")))
    with pytest.raises(BenchmarkError, match=r"row 2.*column 'C'"):
        load_hrbench(bench_tsv("hrbench", lambda rows: rows[1].update(C="")))
    with pytest.raises(BenchmarkError, match="image_path"):
        load_hrbench(bench_tsv("hrbench", lambda rows: [r.pop("image") for r in rows]))


def test_hrbench_scoring_is_lenient_and_micro_averaged(bench_tsv, scripted) -> None:
    table, images = load_hrbench(bench_tsv("hrbench"))
    defender = scripted(lambda prompt, k, rng: "Blue." if "sign" in prompt else "the answer is C")
    out = answer_table(defender, table, images, mode="letter", extractor="hrbench")
    assert out["extracted"].tolist() == ["B", "C"]
    metrics = score_benchmark(out, "hrbench")
    assert metrics["accuracy"] == {"FCP": 0.0, "FSP": 1.0, "overall": 0.5}


# ---------------------------------------------------------------------------------------- V*


def test_vstar_loader(vstar_root: Path) -> None:
    table, images = load_vstar(vstar_root)
    assert table["record_id"].tolist() == [
        "vstar-direct_attributes-sa_1",
        "vstar-direct_attributes-sa_2",
        "vstar-relative_position-sa_3",
    ]
    assert table["answer"].tolist() == ["A", "A", "A"]  # V*: the first option is always right
    assert table["answer_text"][1] == "green"
    assert table["target_boxes"].tolist() == [
        [[2, 3, 6, 8]],
        [[1, 0, 5, 3]],
        [[0, 0, 2, 2], [5, 5, 7, 7]],
    ]
    assert table["family"].tolist() == ["direct_attributes"] * 2 + ["relative_position"]
    prompt = table["prompt"][2]
    assert "\n(A) The cup is on the left side of the plate.\n(B) The cup" in prompt
    assert prompt.startswith(MCQ_HEADER) and prompt.endswith(MCQ_LETTER_FOOTER)
    assert images["vstar-direct_attributes-sa_2"]().getpixel((0, 0)) == (0, 160, 0)


def test_vstar_errors(vstar_root: Path) -> None:
    corrupt = vstar_root / "direct_attributes" / "sa_2.png"
    corrupt.write_bytes(b"not a png")
    _, images = load_vstar(vstar_root)
    with pytest.raises(BenchmarkError, match=r"sa_2\.png.*cannot be decoded"):
        images["vstar-direct_attributes-sa_2"]()
    corrupt.unlink()
    with pytest.raises(BenchmarkError, match=r"sa_2\.json.*'image'.*sa_2\.jpg"):
        load_vstar(vstar_root)
    (vstar_root / "direct_attributes" / "sa_2.json").unlink()
    (vstar_root / "relative_position" / "sa_3.json").write_text('{"question": "Where?"}')
    with pytest.raises(BenchmarkError, match=r"sa_3\.json.*'options'"):
        load_vstar(vstar_root)
    with pytest.raises(BenchmarkError, match="not found"):
        load_vstar(vstar_root / "nowhere")


def test_vstar_shuffle_and_scoring(vstar_root: Path, scripted) -> None:
    table, images = load_vstar(vstar_root)
    shuffled = [shuffle_options(table, seed) for seed in range(4)]
    assert shuffle_options(table, 0).equals(shuffled[0])  # deterministic
    for s in shuffled:
        for row, orig in zip(s.to_dict("records"), table.to_dict("records"), strict=True):
            assert sorted(row["options"]) == sorted(orig["options"])
            assert row["options"]["ABCD".index(row["answer"])] == orig["answer_text"]
            assert f"(A) {row['options'][0]}\n" in row["prompt"]
    assert any((s["answer"] != "A").any() for s in shuffled)
    always_a = scripted(lambda prompt, k, rng: "A. I think so")
    out = answer_table(always_a, table, images, mode="letter", extractor="vstar")
    assert score_benchmark(out, "vstar")["accuracy"]["overall"] == 1.0  # the documented bias
    with pytest.raises(ValueError, match="unknown benchmark"):
        score_benchmark(out, "mmmu")
