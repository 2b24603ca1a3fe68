"""A study's config: one world, a pretraining mixture, pretraining, RL with one algorithm, the eval
suite and the formats they track, resolved from a preset, a YAML file and `--set` overrides (in that
order). `mixture` and `rl` may name their own presets. pipeline.py runs it."""

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
from echochamber.data.adapters import get_spec
from echochamber.data.mixture import MixtureConfig, mixture_preset
from echochamber.data.world import WorldConfig
from echochamber.errors import UserError
from echochamber.eval.config import EvalConfig, Evaluation
from echochamber.formats.registry import FormatSpec, build_registry, builtin_names, default_entries
from echochamber.pretrain.config import PretrainConfig
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
class StudyConfig:
    """A whole study: one world that the mixture, RL prompts and world benchmarks all read, the
    pretraining mixture, pretraining, RL with `algo`, the eval suite, and one format registry that
    RL and every evaluation label and grade by."""

    mixture: MixtureConfig  # in YAML also a preset name (tinygsm+omi1+omi2) or {preset: NAME, key: value}
    pretrain: PretrainConfig
    rl: RLConfig  # in YAML also a preset name (cpu) or {preset: NAME, key: value}
    algo: Literal["ppo", "grpo", "reinforce", "ei"] = "ppo"
    world: WorldConfig = field(default_factory=WorldConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # run on the pretrained model (eval/base) and the RL policy (eval/final)
    # The formats tracked, in display order: built-in names (tinygsm, omi1, omi2, metamathqa, gsm8k)
    # and formats declared in full (formats.registry); recognition follows their priorities.
    formats: list[str | FormatSpec] = field(default_factory=default_entries)
    # An existing HF model folder (weights + tokenizer, e.g. the paper's released checkpoints) that
    # stands in for the data and pretraining stages: RUN/pretrain/final links to it, and `mixture` and
    # `pretrain` only record what it was trained on. Its context and tokenizer are checked at the start.
    pretrained: str | None = None

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
        self.eval.check_world(self.world, "world")
        registry = build_registry(self.formats)
        if build_registry(self.rl.formats).record() != registry.record():
            raise UserError("rl.formats differs from 'formats': set the formats once, under 'formats'")
        self.eval.check_formats(self.formats, "formats")
        _check_tracked(self.mixture, registry.real)
        for benchmark in self.eval.benchmarks:
            self.evaluation(benchmark)  # each benchmark checked now, before any stage runs

    def evaluation(self, benchmark: str) -> Evaluation:
        """The study's evaluation of one benchmark (base and final alike): its world and formats, seed
        0 unless set."""
        return self.eval.evaluation(benchmark, self.world, formats=self.formats)


def _check_tracked(mixture: MixtureConfig, tracked: tuple[str, ...]) -> None:
    """A pretraining source written in a built-in format the study does not track would have its
    generations counted as `other`, which the report reads as degenerate text: refused before any
    compute is spent."""
    for source in mixture.sources:
        style = source.world if source.world is not None else get_spec(str(source.dataset)).style
        if style in builtin_names() and style not in tracked:
            raise UserError(
                f"mixture source '{source.label}' is in the {style} format, which the study's formats "
                f"({', '.join(tracked)}) do not track: add '{style}' to formats"
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
    _section(data, "rl").setdefault("formats", data.setdefault("formats", default_entries()))
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
