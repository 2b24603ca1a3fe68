"""Stage hashes: keys added to a config later leave the run folders made before them up to date, and
re-run exactly the stages they change once set to something else."""

from __future__ import annotations

import pytest

from echochamber.study.config import load_study
from echochamber.study.hashes import LATER_KEYS, _settings, stage_hashes

AFTER_PRETRAIN = {"eval-base", "rl", "eval-final", "report"}


def changed(*overrides: str) -> set[str]:
    """The stages whose hash differs from the smoke preset's under `overrides`."""
    base = stage_hashes(load_study(preset="smoke"))
    other = stage_hashes(load_study(preset="smoke", overrides=list(overrides)))
    return {name for name in base if base[name] != other[name]}


@pytest.mark.parametrize(
    ("key", "value", "reruns"),
    [
        ("pretrain.epochs", "2", {"pretrain", *AFTER_PRETRAIN}),
        ("eval.over_context", "skip", {"eval-base", "eval-final", "report"}),
        ("rl.prompts.over_context", "shorten", {"rl", "eval-final", "report"}),
        ("rl.eval.over_context", "skip", {"rl", "eval-final", "report"}),
        ("rl.rollout.backend", "vllm", {"rl", "eval-final", "report"}),
    ],
)
def test_a_key_added_later_is_hashed_only_away_from_its_old_behaviour(key: str, value: str, reruns: set[str]) -> None:
    section, name = key.rsplit(".", 1)
    unchanged = LATER_KEYS[(tuple(section.split(".")), name)]
    assert changed(f"{key}={'null' if unchanged is None else unchanged}") == set()
    assert changed(f"{key}={value}") == reruns


def test_local_copies_are_part_of_the_data_only_when_given() -> None:
    assert changed("mixture.paths={}") == set()
    assert changed("mixture.paths.omi1=/data/omi1") == {"data", "pretrain", *AFTER_PRETRAIN}


def test_the_vllm_engines_settings_count_only_under_that_backend_and_its_memory_share_never() -> None:
    assert changed("rl.rollout.vllm.dtype=bfloat16", "rl.rollout.vllm.memory=0.5") == set()  # torch samples
    vllm = ["rl.rollout.backend=vllm"]
    base = stage_hashes(load_study(preset="smoke", overrides=vllm))
    for override, reruns in (("rl.rollout.vllm.memory=0.5", set()), ("rl.rollout.vllm.dtype=bfloat16", {"rl", "eval-final", "report"})):
        other = stage_hashes(load_study(preset="smoke", overrides=[*vllm, override]))
        assert {name for name in base if base[name] != other[name]} == reruns, override


def test_the_rl_dtype_leaves_float32_runs_made_before_it_up_to_date() -> None:
    """RL trained in float32 before it had a dtype: a study pinning float32 (the quickstart, the
    sweeps) hashes as if the key did not exist; "auto" and "bfloat16" re-run RL onwards."""
    pinned = load_study(preset="smoke", overrides=["rl.dtype=float32"])
    assert "dtype" not in _settings(pinned)["rl"] and "dtype" in _settings(load_study(preset="smoke"))["rl"]
    for dtype in ("auto", "bfloat16"):
        other = stage_hashes(load_study(preset="smoke", overrides=[f"rl.dtype={dtype}"]))
        assert {name for name, value in stage_hashes(pinned).items() if other[name] != value} == {
            "rl", "eval-final", "report"
        }, dtype
