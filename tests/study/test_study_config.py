"""Resolving a study: preset <- YAML file <- --set overrides, one world, one-line errors."""

import pytest

from echochamber.errors import UserError
from echochamber.study.config import StudyConfig, load_study


def smoke(*overrides: str) -> StudyConfig:
    return load_study(preset="smoke", overrides=list(overrides))


def test_overrides_reach_nested_keys_and_presets_expand_in_order() -> None:
    study = smoke("mixture=tinygsm+4xomi1", "mixture.seed=3", "rl.grpo.kl_coef=0.01", "world.n_test=20")
    assert [s.repeat for s in study.mixture.sources] == [None, 4]
    assert study.mixture.seed == 3 and study.rl.grpo.kl_coef == 0.01
    # One world, placed everywhere it is read.
    assert study.mixture.world.n_test == study.rl.prompts.world.n_test == 20
    assert study.evaluation("world-hard").world.n_test == study.rl.evaluation("world-hard").world.n_test == 20
    # The study's evaluations sample with seed 0, RL's periodic ones with the RL run's seed.
    assert study.evaluation("world-test").config.seed == 0
    assert smoke("rl.seed=3").rl.evaluation("world-test").config.seed == 3
    assert load_study().algo in ("ppo", "grpo", "ei")  # no argument: the quickstart
    # A preset with some of its keys changed.
    tweaked = smoke("rl={preset: cpu, max_steps: 7}", "rl.seed=2")
    assert tweaked.rl.max_steps == 7 and tweaked.rl.seed == 2 and tweaked.rl.rollout.max_new_tokens == 192


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pretrain.out=/elsewhere", "set by the pipeline"),
        ("rl.reference=/some/model", "rl.reference"),
        ("mixture.world.n_test=3", "set the world once"),
        ("eval.world.n_test=3", "set the world once"),
        ("rl.ppo.kl_coeff=0.1", "rl.ppo.kl_coeff"),
        ("algo=dpo", "algo"),
        ("eval.benchmarks=[world-easy]", "world-easy"),
        ("mixture=no-such-mixture", "no-such-mixture"),
        ("rl.formats=[omi2, tinygsm, omi1]", "rl.formats differs from 'formats'"),
        ("eval.formats=[tinygsm, omi1, omi2, gsm8k]", "eval.formats differs from formats"),
        ("formats=[tinygsm, omi2]", "mixture source 'omi1' is in the omi1 format, which the study's formats"),
        ("formats=[tinygsm, omi1, omi2, other]", "unknown format preset 'other'"),
        (
            "formats=[tinygsm, omi1, omi2, {name: x, priority: 1, recognise: {regex: '('}, answer: text}]",
            "recognise.regex: .* is not a valid regular expression",
        ),
        (
            "formats=[tinygsm, omi1, omi2, {name: other, priority: 1, recognise: boxed, answer: text}]",
            "'other' is not a format that can be declared",
        ),
    ],
)
def test_bad_study_settings_fail_with_one_clear_line(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        smoke(override)


def test_reinforce_is_a_study_algorithm_and_only_its_own_section_is_hashed() -> None:
    from echochamber.study.pipeline import stage_hashes

    study = smoke("algo=reinforce")
    assert study.algo == "reinforce" and study.rl.reinforce.baseline == "mean"
    rl = stage_hashes(study)["rl"]
    assert stage_hashes(smoke("algo=reinforce", "rl.grpo.lr=0.5"))["rl"] == rl
    assert stage_hashes(smoke("algo=reinforce", "rl.reinforce.baseline=loo"))["rl"] != rl


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match="smoke"):
        load_study(preset="nope")


def test_one_registry_reaches_rl_and_every_evaluation_in_full() -> None:
    study = smoke("formats=[tinygsm, omi1, omi2, metamathqa]", "rl.eval.benchmarks=[world-test]")
    assert study.rl.formats == study.formats == ["tinygsm", "omi1", "omi2", "metamathqa"]
    for evaluation in (study.evaluation("world-test"), study.rl.evaluation("world-test")):
        assert evaluation.registry().names == ("tinygsm", "omi1", "omi2", "metamathqa", "other")
        assert evaluation.record()["formats"][3]["recognise"] == {"regex": "^The answer is:[ \\t]*\\S"}
    assert smoke().evaluation("world-test").registry().names == ("tinygsm", "omi1", "omi2", "other")
