"""The difficulty ladder: declared pool shares, one disjoint test split per rung, easy-only RL prompts,
validation, the benchmarks that read the rungs, and a ladder-free world unchanged."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from echochamber.config import from_dict, load_config
from echochamber.data import world as world_module
from echochamber.data.benchmarks import load_benchmark
from echochamber.data.mixture import MixtureConfig, build_shards
from echochamber.data.shards import open_shards
from echochamber.data.tokenizer import PROMPT_SEPARATOR
from echochamber.data.world import (
    SPLITS,
    Problem,
    WorldConfig,
    fits,
    generate_world,
    rung_splits,
    world_records,
    world_splits,
    write_world,
)
from echochamber.errors import UserError
from echochamber.eval.config import EvalConfig
from echochamber.rl.config import PromptConfig
from echochamber.rl.rollout import load_prompts
from echochamber.study.config import load_study

SIZES = {"n_pretrain": 1500, "n_rl": 300, "n_test": 200, "n_hard": 200}
ONE_STEP = {"min_steps": 1, "max_steps": 1}
TWO_STEP_HARD = {"min_steps": 2, "max_steps": 2, "max_number": 20, "max_factor": 5, "max_result": 100}
BIG_NUMBERS = {"min_steps": 2, "max_steps": 2, "max_number": 100, "max_factor": 10, "max_result": 1000}
LADDER = [{"steps": 2, "share": 0.3}, {"steps": 3, "share": 0.1}, {"steps": 4, "share": 0.0}]


def config(**overrides: object) -> WorldConfig:
    return from_dict(WorldConfig, {**SIZES, "difficulty": ONE_STEP, "hard": BIG_NUMBERS, **overrides})


@pytest.fixture(scope="module")
def laddered() -> tuple[WorldConfig, dict[str, list[Problem]]]:
    world = config(ladder=LADDER)
    return world, generate_world(world)


def digest(world: dict[str, list[Problem]]) -> str:
    blob = json.dumps({s: [dataclasses.asdict(p) for p in world[s]] for s in SPLITS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# Digests of every problem (text, numbers, steps, ids) of two worlds, computed with the generator as
# it was before the ladder existed (commit a4e56ec): the default world and the quickstart's levels.
BEFORE_THE_LADDER = [
    ({**SIZES}, "4ec672ebb49ec6b9c2a49269e57cfa1b3d735a2b25b783b720aecff183f90a23"),
    ({**SIZES, "difficulty": ONE_STEP, "hard": TWO_STEP_HARD}, "75efd12c3746aa3e51a6c8724c720194c56e6c23d15300c76666f68a53717e06"),
]  # fmt: skip


@pytest.mark.parametrize(("settings", "expected"), BEFORE_THE_LADDER)
def test_a_world_without_a_ladder_draws_exactly_what_it_drew_before(settings: dict, expected: str) -> None:
    world_module._generate_cached.cache_clear()
    for ladder in (None, []):
        world = from_dict(WorldConfig, settings if ladder is None else {**settings, "ladder": ladder})
        assert world_splits(world) == SPLITS
        assert digest(generate_world(world)) == expected


def test_the_pool_holds_each_rungs_declared_share_after_the_unchanged_easy_draw(laddered) -> None:
    world, problems = laddered
    pool = problems["pretrain"]
    assert len(pool) == SIZES["n_pretrain"]
    assert Counter(len(p.steps) for p in pool) == {1: 900, 2: 450, 3: 150}  # round(share x 1500); 4: share 0
    flat = generate_world(config())  # the same world without a ladder
    assert pool[:900] == flat["pretrain"][:900]  # the rungs take the tail of the pool, nothing else moves
    for split in ("test", "rl"):
        assert problems[split] == flat[split]
    for rung in world.ladder:
        assert all(fits(p, world.rung_level(rung)) for p in pool if len(p.steps) == rung.steps)
    assert len({p.id for p in pool}) == len(pool)


def test_rl_prompts_come_from_the_easy_level_only(laddered) -> None:
    world, problems = laddered
    prompts = load_prompts(PromptConfig(world=world))
    easy = {p.question: p for p in problems["rl"]}
    assert [r.prompt for r in prompts] == list(easy)
    assert all(fits(p, world.difficulty) for p in problems["rl"])


def test_each_rung_has_a_test_split_of_exactly_its_steps_disjoint_from_every_other_split(laddered) -> None:
    world, problems = laddered
    assert rung_splits(world) == ("2step", "3step", "4step")
    assert world_splits(world) == (*SPLITS, "2step", "3step", "4step")
    texts = {split: {p.question for p in ps} for split, ps in problems.items()}
    for rung in world.ladder:
        split = problems[rung.split]
        assert len(texts[rung.split]) == len(split) == SIZES["n_test"]
        assert {len(p.steps) for p in split} == {rung.steps}
        assert all(fits(p, world.rung_level(rung)) for p in split)  # the easy level's numbers
        assert all(p.id.startswith(f"world-{rung.split}-") for p in split)
    for a in texts:
        for b in texts:
            assert a == b or not texts[a] & texts[b], (a, b)


def test_hard_keeps_only_problems_the_pool_cannot_contain() -> None:
    # Hard spans 2..3 steps over the easy numbers; the 2-step rung is in the pool, the 3-step one is not.
    world = config(
        hard={**TWO_STEP_HARD, "max_steps": 3},
        ladder=[{"steps": 2, "share": 0.2}, {"steps": 3, "share": 0.0}],
    )
    problems = generate_world(world, ("hard", "3step"))
    assert {len(p.steps) for p in problems["hard"]} == {3}
    assert not {p.question for p in problems["hard"]} & {p.question for p in problems["3step"]}
    # Without a share the 2-step rung is only a test split, so hard may draw 2-step problems too.
    probe = config(hard=TWO_STEP_HARD, ladder=[{"steps": 2, "share": 0.0}])
    problems = generate_world(probe, ("hard", "2step"))
    assert {len(p.steps) for p in problems["hard"]} == {2}
    assert not {p.question for p in problems["hard"]} & {p.question for p in problems["2step"]}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ladder=[{steps: 2, share: 1.0}]"], r"2-step rung's share must be in \[0, 1\), got 1.0"),
        (["ladder=[{steps: 2, share: -0.1}]"], "share must be in"),
        (["ladder=[{steps: 1, share: 0.2}]"], "1-step rung is not harder than difficulty"),
        (["difficulty.max_steps=2", "ladder=[{steps: 2}]"], "2-step rung is not harder than difficulty"),
        (["ladder=[{steps: 9, share: 0.1}]"], "beyond the generator's limit of 8 steps"),
        (["ladder=[{steps: 2, share: 0.1}, {steps: 2, share: 0.2}]"], "two rungs have the same steps"),
        (["ladder=[{steps: 2, share: 0.6}, {steps: 3, share: 0.4}]"], "shares sum to 1"),
        (["ladder=[{steps: 2, share: 0.2}]", *[f"hard.{k}={v}" for k, v in TWO_STEP_HARD.items()]], "hard must allow"),
        (["ladder=[{steps: 2, weight: 0.2}]"], "unknown config key 'ladder\\[0\\].weight'"),
        (["ladder=[{share: 0.2}]"], "missing config key 'ladder\\[0\\].steps'"),
    ],
)  # fmt: skip
def test_bad_ladders_fail_with_one_clear_line(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        load_config(WorldConfig, None, ["difficulty.max_steps=1", *overrides])
    assert "\n" not in str(error.value)


def test_a_rung_split_the_ladder_lacks_is_refused(laddered) -> None:
    world, _ = laddered
    with pytest.raises(UserError, match="unknown world split '5step'"):
        generate_world(world, ("5step",))
    with pytest.raises(UserError, match="unknown benchmark 'world-5step'.*needs a k-step rung"):
        EvalConfig().evaluation("world-5step", world)
    with pytest.raises(UserError, match="unknown benchmark 'world-2step'"):
        EvalConfig().evaluation("world-2step")  # the default world has no ladder
    with pytest.raises(UserError, match="unknown benchmark 'world-4step'"):
        load_study(overrides=["eval.benchmarks=[world-test, world-4step]"])  # the quickstart: 2 and 3


def test_rung_benchmarks_load_the_rung_and_rebuild_from_the_recorded_settings(laddered) -> None:
    world, problems = laddered
    evaluation = EvalConfig().evaluation("world-3step", world)
    records = load_benchmark(evaluation.benchmark, evaluation.world)
    assert [(r.prompt, r.answer) for r in records] == [(p.question, str(p.answer)) for p in problems["3step"]]
    # The report rebuilds prompt texts from the world recorded with the generations.
    recorded = from_dict(WorldConfig, json.loads(json.dumps(evaluation.generation_settings()["world"])))
    assert world_records(recorded, "3step", "gsm8k") == records
    study = load_study(
        overrides=[
            "world.ladder=[{steps: 2, share: 0.25}]",
            "world.hard={min_steps: 2, max_steps: 2, max_number: 100, max_factor: 10, max_result: 1000}",
            "eval.benchmarks=[world-test, world-2step, world-hard]",
        ]
    )
    assert study.mixture.world == study.rl.prompts.world == study.world


def test_written_world_has_one_file_set_per_rung_and_counts_steps(laddered, tmp_path: Path) -> None:
    world, problems = laddered
    manifest = write_world(world, tmp_path / "world")
    for split in world_splits(world):
        assert manifest["counts"][split] == len(problems[split])
        lines = (tmp_path / "world" / f"{split}.omi1.jsonl").read_text().splitlines()
        assert len(lines) == len(problems[split])
    assert manifest["steps"]["pretrain"] == {"1": 900, "2": 450, "3": 150}
    assert manifest["steps"]["4step"] == {"4": SIZES["n_test"]}


def test_every_format_pretrains_on_the_rungs(tmp_path: Path) -> None:
    world = {"n_pretrain": 300, "n_rl": 5, "n_test": 5, "n_hard": 5, "seed": 3, "hard": BIG_NUMBERS}
    world |= {"difficulty": ONE_STEP, "ladder": [{"steps": 2, "share": 0.3}]}
    spec = {
        "seed": 7,
        "world": world,
        "tokenizer": {"vocab_size": 400},
        "val_docs": 10,
        "workers": 1,
        "sources": [{"world": "tinygsm"}, {"world": "omi1", "subset": 0.5}, {"world": "omi2"}],
    }
    out = tmp_path / "shards"
    manifest = build_shards(from_dict(MixtureConfig, spec), out, progress=False)
    shards = open_shards(out)
    tokenizer = AutoTokenizer.from_pretrained(str(shards.tokenizer_path))
    world_config = from_dict(WorldConfig, world)
    steps = {p.question: len(p.steps) for p in generate_world(world_config, ("pretrain",))["pretrain"]}
    styles = {
        r.prompt + PROMPT_SEPARATOR + r.solution: (style, r.prompt)
        for style in ("tinygsm", "omi1", "omi2")
        for r in world_records(world_config, "pretrain", style)
    }
    eos = manifest["eos_token_id"]
    stream = np.asarray(shards.train)
    ends = np.flatnonzero(stream == eos)
    per_format: dict[str, Counter[int]] = {}
    for start, end in zip(np.concatenate([[0], ends[:-1] + 1]), ends, strict=True):
        style, prompt = styles[tokenizer.decode(stream[start:end].tolist())]
        per_format.setdefault(style, Counter())[steps[prompt]] += 1
    assert set(per_format) == {"tinygsm", "omi1", "omi2"}
    for style, counts in per_format.items():
        share = counts[2] / sum(counts.values())
        assert 0.2 < share < 0.4, (style, counts)  # the declared 30 %, in every format
