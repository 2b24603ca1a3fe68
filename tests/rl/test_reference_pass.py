"""At KL 0 the reference is neither loaded nor run (RLConfig.uses_reference), and every update is the
one the full path (reference pass included) gives: the KL terms are 0 x a finite number there."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from echochamber.config import load_config
from echochamber.model.presets import load_model
from echochamber.rl import core, grpo, ppo, reinforce, rollout
from echochamber.rl.config import RLConfig
from echochamber.rl.core import run_rl
from echochamber.runlog import read_metrics

BUILDERS = {"grpo": grpo.build, "ppo": ppo.build, "reinforce": reinforce.build}
NOT_MEASURED = {"kl_k1", "kl_k2", "kl_k3", "kl_loss"}  # None without a reference pass
TIMING_KEYS = {"time_generate", "time_reward", "time_reference", "time_update", "tokens_per_s", "generate_tokens_per_s"}


def _config(algo: str, kl_coef: float, **values: Any) -> RLConfig:
    # KL in the reward for all three: at KL 0 that path reads the reference in the advantages too.
    section = {"lr": 1e-3, "kl_coef": kl_coef, "kl_placement": "reward"}
    base = {"policy": "p", "out": "o", algo: section, "rollout": {"temperature": 0.7}, "micro_batch_size": 2,
            "dtype": "float32"}
    return load_config(RLConfig, base={**base, **values})


def test_only_a_kl_penalty_or_the_always_setting_needs_the_reference():
    assert _config("grpo", 1e-3).uses_reference("grpo")
    assert not _config("grpo", 0.0).uses_reference("grpo")
    assert not _config("ppo", 0.0).uses_reference("ppo") and not _config("reinforce", 0.0).uses_reference("reinforce")
    assert _config("grpo", 0.0, reference_pass="always").uses_reference("grpo")
    assert not _config("grpo", 1e-3).uses_reference("ei")  # Expert Iteration has no KL term


def _far_reference(tiny_policy: Path) -> torch.nn.Module:
    """The policy with every weight moved: its log-probs differ from the policy's everywhere, so any
    term that read them with a nonzero weight would change the update."""
    ref = load_model(tiny_policy).eval().requires_grad_(False)
    with torch.no_grad():
        for parameter in ref.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    return ref


@pytest.mark.parametrize("algo", ["grpo", "ppo", "reinforce"])
def test_an_update_at_kl_zero_equals_the_full_path_without_the_reference(tiny_policy, own_answers_batch, algo):
    config = _config(algo, 0.0)
    outcomes = []
    for ref in (_far_reference(tiny_policy), None):
        torch.manual_seed(0)  # PPO's fresh value head
        policy = load_model(tiny_policy)
        algorithm = BUILDERS[algo](policy, ref, None, config)
        diagnostics = algorithm.update(own_answers_batch(ref)[2])
        outcomes.append((policy.state_dict(), diagnostics))
    (full, with_ref), (skipped, without_ref) = outcomes
    assert with_ref["kl_loss"] != 0 and without_ref["kl_loss"] is None  # measured vs not measured, never 0
    assert {k: v for k, v in with_ref.items() if k != "kl_loss"} == {k: v for k, v in without_ref.items() if k != "kl_loss"}
    assert with_ref["grad_norm"] > 0 and all(torch.equal(full[name], skipped[name]) for name in full)


@pytest.mark.parametrize("algo", ["grpo", "ppo", "reinforce"])
def test_a_kl_penalty_without_the_reference_is_refused(tiny_policy, own_answers_batch, algo):
    algorithm = BUILDERS[algo](load_model(tiny_policy), None, None, _config(algo, 1e-3))
    with pytest.raises(ValueError, match="needs the reference"):
        algorithm.update(own_answers_batch(None)[2])


def _run(tiny_policy: Path, prompts: Path, world, out: Path, grader, reference_pass: str) -> list[dict[str, Any]]:
    config = load_config(RLConfig, base={
        "policy": str(tiny_policy), "out": str(out), "prompts": {"dataset": "gsm8k", "path": str(prompts),
        "world": dataclasses.asdict(world)}, "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4,
        "max_new_tokens": 32, "grader_workers": 1}, "grpo": {"lr": 1e-4, "kl_coef": 0.0}, "eval_every": 0,
        "max_steps": 2, "micro_batch_size": 8, "checkpoint_every": 2, "tensorboard": False, "progress": False,
        "reference_pass": reference_pass, "dtype": "float32",
    })  # fmt: skip
    run_rl(config, algo="grpo", grader=grader)
    return read_metrics(out / "metrics.jsonl", "rl")


def test_a_kl_zero_run_never_loads_or_runs_the_reference_and_learns_the_same(
    tiny_policy, two_answer_prompts, test_world, grader, tmp_path, monkeypatch
):
    loaded: list[str] = []
    real_load = core.load_model
    monkeypatch.setattr(core, "load_model", lambda path: loaded.append(str(path)) or real_load(path))
    full = _run(tiny_policy, two_answer_prompts, test_world, tmp_path / "full", grader, "always")
    assert len(loaded) == 2 and all(line["kl_k1"] is not None for line in full)  # policy and reference

    def no_reference_pass(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise AssertionError("the reference ran at KL 0")

    loaded.clear()
    monkeypatch.setattr(rollout, "batch_logprobs", no_reference_pass)
    skipped = _run(tiny_policy, two_answer_prompts, test_world, tmp_path / "skipped", grader, "auto")
    assert loaded == [str(tiny_policy)]  # the policy only
    assert all(line["time_reference"] == 0.0 and all(line[k] is None for k in NOT_MEASURED) for line in skipped)
    ignored = NOT_MEASURED | TIMING_KEYS
    assert [{k: v for k, v in line.items() if k not in ignored} for line in skipped] == [
        {k: v for k, v in line.items() if k not in ignored} for line in full
    ]
    final = {"full": load_model(tmp_path / "full" / "final"), "skipped": load_model(tmp_path / "skipped" / "final")}
    weights = {name: model.state_dict() for name, model in final.items()}
    assert all(torch.equal(weights["full"][k], weights["skipped"][k]) for k in weights["full"])


def test_the_reference_pass_setting_reruns_no_study_stage():
    """It changes only what a KL-0 run's metrics report, so a study that turns it on (paper-cpu's KL
    dose) keeps every stage hash: nothing already done is run again."""
    from echochamber.study.config import load_study
    from echochamber.study.hashes import stage_hashes

    always = load_study(preset="quickstart", overrides=["rl.reference_pass=always"])
    assert always.rl.reference_pass == "always"
    assert stage_hashes(always) == stage_hashes(load_study(preset="quickstart"))
