"""The controlled world: determinism, variety, the difficulty knob, exact arithmetic, disjoint splits, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from echochamber import cli
from echochamber.config import from_dict, load_config
from echochamber.data import world as world_module
from echochamber.data.records import Record
from echochamber.data.world import (
    FAMILIES,
    SPLITS,
    Problem,
    WorldConfig,
    fits,
    generate_world,
    world_records,
    write_world,
)
from echochamber.errors import UserError
from echochamber.formats.render import RENDER_STYLES, render

SIZES = {"n_pretrain": 1500, "n_rl": 300, "n_test": 200, "n_hard": 200}


def small(seed: int = 0, **overrides: object) -> WorldConfig:
    return from_dict(WorldConfig, {**SIZES, "seed": seed, **overrides})


@pytest.fixture(scope="module")
def world() -> dict[str, list[Problem]]:
    return generate_world(small())


def fresh_world(config: WorldConfig) -> dict[str, list[Problem]]:
    """Generate without the in-process cache, so determinism is really re-derived."""
    world_module._generate_cached.cache_clear()
    return generate_world(config)


def rows(world: dict[str, list[Problem]]) -> list[dict[str, str]]:
    return [render(p, style) for split in SPLITS for p in world[split] for style in RENDER_STYLES]


def test_same_seed_gives_identical_rows_and_another_seed_differs() -> None:
    first, second, other = [fresh_world(small(seed=seed)) for seed in (7, 7, 8)]
    assert rows(first) == rows(second)
    questions = [{p.question for split in SPLITS for p in w[split]} for w in (first, other)]
    assert len(questions[0] & questions[1]) < 0.05 * len(questions[0])  # another seed, another world


def test_generation_does_not_depend_on_the_process_hash_seed(world: dict[str, list[Problem]]) -> None:
    # String hashing is salted per process; a generator that iterated over a set of strings would
    # give different worlds in different runs. Compare against a fresh interpreter.
    code = (
        "from echochamber.config import from_dict; from echochamber.data.world import WorldConfig, generate_world;"
        f"w = generate_world(from_dict(WorldConfig, {SIZES!r}));"
        "print(w['pretrain'][-1].question); print(w['hard'][-1].question)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.splitlines() == [world["pretrain"][-1].question, world["hard"][-1].question]


def test_at_least_twelve_families_appear_in_every_split(world: dict[str, list[Problem]]) -> None:
    assert len(FAMILIES) >= 12
    for split in ("pretrain", "rl", "hard"):
        assert len({p.family for p in world[split]}) >= 12, split


def test_wording_names_and_objects_vary(world: dict[str, list[Problem]]) -> None:
    pool = world["pretrain"]
    first_words = {p.question.split()[0] for p in pool}
    variables = {q.name for p in pool for q in p.quantities}
    assert len(first_words) >= 40  # names, "A", "There", "Farmer", ...
    assert len(variables) >= 100
    assert len({p.question.split(".")[0] for p in pool}) > 0.5 * len(pool)


def test_steps_and_numbers_stay_within_the_difficulty_knob(world: dict[str, list[Problem]]) -> None:
    config = small()
    for split in ("pretrain", "rl", "test"):
        assert all(fits(p, config.difficulty) for p in world[split]), split
    steps = {len(p.steps) for p in world["pretrain"]}
    assert steps == set(range(config.difficulty.min_steps, config.difficulty.max_steps + 1))
    for p in world["hard"]:
        assert fits(p, config.hard)
        assert not fits(p, config.difficulty)  # disjoint from the normal splits by construction
    assert {len(p.steps) for p in world["hard"]} == set(
        range(config.hard.min_steps, config.hard.max_steps + 1)
    )


def test_custom_difficulty_is_respected() -> None:
    config = small(
        n_pretrain=400,
        difficulty={"min_steps": 2, "max_steps": 4, "max_number": 50, "max_factor": 7, "max_result": 400},
    )
    pool = fresh_world(config)["pretrain"]
    assert {len(p.steps) for p in pool} == {2, 3, 4}
    assert max(q.value for p in pool for q in p.quantities) > 20  # the larger range is used
    assert all(fits(p, config.difficulty) for p in pool)


def test_every_step_is_exact_integer_arithmetic_and_the_answer_is_the_last_step(
    world: dict[str, list[Problem]],
) -> None:
    ops = {"+", "-", "*", "/"}
    for split in SPLITS:
        for p in world[split]:
            values = {q.name: q.value for q in p.quantities}
            assert len(values) == len(p.quantities)  # one variable per quantity
            for s in p.steps:
                assert s.op in ops and s.name not in values
                a, b = values[s.left], values[s.right]
                if s.op == "/":
                    assert a % b == 0, (p.id, s)
                exact = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[s.op]
                assert s.value == exact and isinstance(s.value, int) and s.value >= 2, (p.id, s)
                assert "{calc}" in s.statement
                values[s.name] = s.value
            assert p.answer == p.steps[-1].value
            # every stated quantity is used by some step
            used = {s.left for s in p.steps} | {s.right for s in p.steps}
            assert {q.name for q in p.quantities} <= used, p.id


def test_question_texts_are_unique_and_splits_never_overlap(world: dict[str, list[Problem]]) -> None:
    texts = {split: [p.question for p in world[split]] for split in SPLITS}
    for split, questions in texts.items():
        assert len(questions) == len(set(questions)) == SIZES[f"n_{split}"], split
    pretrain, rl = set(texts["pretrain"]), set(texts["rl"])
    for held_out in ("test", "hard"):
        assert not set(texts[held_out]) & pretrain
        assert not set(texts[held_out]) & rl
    assert not set(texts["test"]) & set(texts["hard"])
    assert not pretrain & rl


def test_held_out_splits_do_not_change_when_the_pool_grows(world: dict[str, list[Problem]]) -> None:
    bigger = fresh_world(small(n_pretrain=3000, n_rl=500))
    assert bigger["test"] == world["test"]
    assert bigger["hard"] == world["hard"]
    assert bigger["rl"][:300] == world["rl"]


def test_world_records_carry_the_rendered_solution() -> None:
    config = small()
    problems = generate_world(config, ("test",))["test"]
    for style in RENDER_STYLES:
        records = world_records(config, "test", style)
        assert all(isinstance(r, Record) for r in records)
        assert [r.prompt for r in records] == [p.question for p in problems]
        assert [r.answer for r in records] == [str(p.answer) for p in problems]
        assert {r.source for r in records} == {"world"} and {r.style for r in records} == {style}
        assert len({r.id for r in records}) == len(records)
    assert world_records(config, "test", "gsm8k")[0].solution.endswith(f"#### {problems[0].answer}")
    with pytest.raises(UserError, match="unknown world style"):
        world_records(config, "test", "latex")
    with pytest.raises(UserError, match="unknown world split"):
        generate_world(config, ("train",))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["difficulty.min_steps=3"], "min_steps <= max_steps"),
        (["difficulty.max_factor=40"], "max_factor"),
        (["difficulty.max_result=15"], "max_result"),
        (["n_test=-1"], "n_test"),
        (
            [
                "hard.max_steps=2",
                "hard.min_steps=1",
                "hard.max_number=20",
                "hard.max_factor=5",
                "hard.max_result=100",
            ],
            "hard must allow",
        ),
        (["difficulty.steps=3"], "unknown config key 'difficulty.steps'"),
    ],
)
def test_bad_configs_fail_with_one_clear_line(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config(WorldConfig, None, overrides)


def test_a_split_that_cannot_be_filled_fails_instead_of_looping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(world_module, "_draft", lambda *args: None)
    monkeypatch.setattr(world_module, "_MAX_MISSES", 50)
    with pytest.raises(UserError, match="distinct problems"):
        fresh_world(small(seed=99))
    world_module._generate_cached.cache_clear()


def test_cli_writes_every_split_and_style_and_a_manifest(tmp_path: Path) -> None:
    out = tmp_path / "world"
    argv = [
        "data",
        "world",
        "--out",
        str(out),
        "--n",
        "120",
        "--seed",
        "5",
        "--set",
        "n_rl=40",
        "--set",
        "n_test=30",
        "--set",
        "n_hard=20",
    ]
    assert cli.main(argv) == 0
    expected = {f"{split}.{style}.jsonl" for split in SPLITS for style in RENDER_STYLES} | {"manifest.json"}
    assert {p.name for p in out.iterdir()} == expected
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"pretrain": 120, "rl": 40, "test": 30, "hard": 20}
    assert manifest["seed"] == 5 and manifest["generator_version"] == world_module.GENERATOR_VERSION
    fields = {
        "tinygsm": {"question", "code"},
        "omi1": {"question", "generated_solution", "expected_answer"},
        "omi2": {"problem", "generated_solution", "expected_answer", "problem_source"},
        "gsm8k": {"question", "answer"},
    }
    for split in SPLITS:
        for style in RENDER_STYLES:
            lines = (out / f"{split}.{style}.jsonl").read_text().splitlines()
            assert len(lines) == manifest["counts"][split]
            assert all(set(json.loads(line)) == fields[style] for line in lines)
    # the same config writes the same bytes, and an existing world folder is replaced in place
    before = (out / "test.omi2.jsonl").read_bytes()
    assert cli.main(argv) == 0
    assert (out / "test.omi2.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no temp folder left


@pytest.mark.parametrize("manifest", [None, '{"stage": "pretrain"}', "not json"])
def test_cli_refuses_a_folder_that_is_not_a_world(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], manifest: str | None
) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    if manifest is not None:  # e.g. a run folder: it has a manifest too, but not a world's
        (tmp_path / "manifest.json").write_text(manifest)
    assert cli.main(["data", "world", "--out", str(tmp_path), "--n", "10"]) == 2
    assert "not a world folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_a_crash_while_writing_leaves_no_folder_that_looks_complete(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = {"n": 0}

    def failing_render(problem: Problem, style: str) -> dict[str, str]:
        calls["n"] += 1
        if calls["n"] > 100:
            raise RuntimeError("disk full")
        return render(problem, style)

    monkeypatch.setattr(world_module, "render", failing_render)
    out = tmp_path / "world"
    with pytest.raises(RuntimeError, match="disk full"):
        write_world(small(n_pretrain=50, n_rl=10, n_test=10, n_hard=10), out)
    assert list(tmp_path.iterdir()) == []
