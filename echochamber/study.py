"""A study's config: one world, a pretraining mixture, pretraining, RL with one algorithm, and the
eval suite, resolved from a preset, a YAML file and `--set` overrides (in that order). `mixture` and
`rl` may name their own presets. pipeline.py runs it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from echochamber.config import (
    apply_overrides,
    from_dict,
    merge,
    preset_names,
    read_preset,
    read_yaml,
    to_dict,
)
from echochamber.data.mixture import MixtureConfig, mixture_preset
from echochamber.data.world import WorldConfig
from echochamber.errors import UserError
from echochamber.pretrain import PretrainConfig
from echochamber.rl.config import RLConfig, rl_preset

STUDY_PRESETS: tuple[str, ...] = preset_names("study")
DEFAULT_PRESET = "quickstart"
# Where the pipeline puts each stage's inputs and outputs, relative to the run folder. They are part
# of the resolved config (so config.yaml is complete) but only these values are accepted.
PLACED = {
    "pretrain.shards": "shards",
    "pretrain.out": "pretrain",
    "rl.policy": "pretrain/final",
    "rl.out": "rl",
}


@dataclass
class StudyEvalConfig:
    """The eval suite, run on the pretrained model (eval/base) and on the RL policy (eval/final)."""

    benchmarks: list[str] = field(default_factory=lambda: ["world-test", "world-hard"])
    n: int = 64  # sampled generations per prompt for pass@k / maj@k (0 = greedy only)
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 2048
    greedy: bool = True  # also one greedy generation per prompt (pass@1)
    limit: int | None = None  # first this many prompts of each benchmark
    seed: int = 0
    data: str | None = None  # real-data folder for gsm8k/math500/aime (default: data_dir())
    batch_size: int = 256
    workers: int = 2  # grader processes, shared by both evaluations and RL (not hashed)

    def validate(self) -> None:
        if not self.benchmarks:
            raise UserError("eval.benchmarks must name at least one benchmark")


@dataclass
class StudyConfig:
    """A whole study: one world that the mixture, RL prompts and world benchmarks all read, the
    pretraining mixture, pretraining, RL with `algo`, and the eval suite."""

    mixture: MixtureConfig  # in YAML also a preset name (tinygsm+omi1+omi2) or {preset: NAME, key: value}
    pretrain: PretrainConfig
    rl: RLConfig  # in YAML also a preset name (cpu) or {preset: NAME, key: value}
    algo: Literal["ppo", "grpo", "ei"] = "ppo"
    world: WorldConfig = field(default_factory=WorldConfig)
    eval: StudyEvalConfig = field(default_factory=StudyEvalConfig)

    def validate(self) -> None:
        for dotted, value in PLACED.items():
            section, key = dotted.split(".")
            if getattr(getattr(self, section), key) != value:
                raise UserError(f"{dotted} is set by the pipeline ('{value}' in the run folder); remove it")
        if self.rl.reference is not None:
            raise UserError("rl.reference is the pretrained model in a study; remove it")
        for where, world in (
            ("mixture.world", self.mixture.world),
            ("rl.prompts.world", self.rl.prompts.world),
        ):
            if to_dict(world) != to_dict(self.world):
                raise UserError(f"{where} differs from 'world': set the world once, under 'world'")
        for benchmark in self.eval.benchmarks:
            eval_config(self, benchmark)  # validates each benchmark's settings


def eval_config(study: StudyConfig, benchmark: str) -> Any:
    """The EvalConfig of one benchmark (built through from_dict: a key EvalConfig lacks fails loudly)."""
    from echochamber.eval.suite import EvalConfig

    settings = {k: v for k, v in to_dict(study.eval).items() if k != "benchmarks"}
    return from_dict(
        EvalConfig, {**settings, "benchmark": benchmark, "world": to_dict(study.world)}, prefix="eval."
    )


# ---------------------------------------------------------------------------------------------
# Loading a study: preset <- YAML file <- --set overrides


def study_preset(name: str) -> dict[str, Any]:
    return read_preset("study", name, "study")


def load_study(
    config: str | Path | None = None, preset: str | None = None, overrides: list[str] | None = None
) -> StudyConfig:
    """Resolve a study. No file and no preset means the quickstart; `mixture` and `rl` may name presets."""
    if config is None and preset is None:
        preset = DEFAULT_PRESET
    data = _expand(study_preset(preset)) if preset is not None else {}
    if config is not None:
        data = merge(data, _expand(read_yaml(config)))
    for item in overrides or []:  # one at a time: `mixture=NAME` then `mixture.seed=1` both apply
        data = _expand(apply_overrides(data, [item]))
    return study_from_dict(data)


def study_from_dict(data: dict[str, Any]) -> StudyConfig:
    data = json.loads(json.dumps(data))  # deep copy: the world is placed into several sections
    world = _section(data, "world")
    _section(data, "mixture").setdefault("world", world)
    _section(_section(data, "rl"), "prompts").setdefault("world", world)
    for dotted, value in PLACED.items():
        section, key = dotted.split(".")
        _section(data, section).setdefault(key, value)
    return from_dict(StudyConfig, data)


def _expand(data: dict[str, Any]) -> dict[str, Any]:
    """`mixture: NAME` / `rl: NAME` -> the preset's mapping; `{preset: NAME, key: value}` -> the
    preset with those keys changed."""
    for key, preset in (("mixture", mixture_preset), ("rl", rl_preset)):
        value = data.get(key)
        if isinstance(value, str):
            data = {**data, key: preset(value)}
        elif isinstance(value, dict) and "preset" in value:
            rest = {k: v for k, v in value.items() if k != "preset"}
            data = {**data, key: merge(preset(str(value["preset"])), rest)}
    return data


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.setdefault(key, {})
    if not isinstance(value, dict):
        raise UserError(f"config key '{key}': expected a mapping, got {value!r}")
    return value
