"""Before a study spends compute: does every prompt it will sample fit the model's context?

The prompt sets are the study's evaluation benchmarks (base and final), RL's prompts and RL's
periodic evaluations, each with its own generation budget and `over_context` policy
(eval/context.py: error, skip or shorten). In "error" mode the first set that does not fit stops
the study with one line (the count, the budget, the context, the longest prompt); otherwise each set
that loses prompts or budget is announced, and the eval suite and RL record what they did.

When the check runs. Prompt lengths depend on the tokenizer, which may not exist before the data
stage (a BPE trained on the mixture), and the context on the model (a preset's, or a checkpoint's).
- Before the data stage, when the tokenizer is known without it: the study starts from a
  `pretrained` checkpoint (its tokenizer and its context), `mixture.tokenizer.path` is a local folder
  (the paper presets: Llama-2's), or the data stage is already done (shards/tokenizer/). At paper
  scale the data stage tokenizes billions of tokens, so this is where it matters.
- Otherwise right after the data stage, before pretraining: a trained BPE exists only then, and a
  mixture that trains its own BPE is a CPU-scale one whose data stage takes seconds.
The eval suite and RL check again on the model they load (eval/suite.py, rl/core.py), which covers
`echochamber eval` and `echochamber rl` on a user's checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from echochamber.data.records import Record
from echochamber.eval.config import EvalConfig
from echochamber.eval.context import OverContext, context_note, fit_prompts
from echochamber.study.config import StudyConfig


@dataclass(frozen=True)
class PromptSet:
    """One set of prompts a study samples, with its budget and policy."""

    name: str
    load: Callable[[], list[Record]]
    max_new_tokens: int
    policy: OverContext
    setting: str  # the config key of the policy, for the error message


def prompt_sets(study: StudyConfig) -> list[PromptSet]:
    """Every prompt set the study's stages will sample, as they will sample it (limits applied)."""
    from echochamber.data.benchmarks import load_benchmark
    from echochamber.rl.rollout import load_prompts

    def benchmark(config: EvalConfig, name: str) -> Callable[[], list[Record]]:
        return lambda: load_benchmark(name, study.world, config.data)[: config.limit]

    sets = [
        PromptSet(name, benchmark(study.eval, name), study.eval.max_new_tokens, study.eval.over_context, "eval.over_context")
        for name in study.eval.benchmarks
    ]
    rl = study.rl
    budget = (rl.ei.max_new_tokens or rl.rollout.max_new_tokens) if study.algo == "ei" else rl.rollout.max_new_tokens
    sets.append(
        PromptSet(
            f"RL prompts ({rl.prompts.dataset})", lambda: load_prompts(rl.prompts), budget,
            rl.prompts.over_context, "rl.prompts.over_context",
        )
    )  # fmt: skip
    if rl.eval_every > 0:
        sets += [
            PromptSet(f"{name} (RL's evaluations)", benchmark(rl.eval, name), rl.eval.max_new_tokens,
                      rl.eval.over_context, "rl.eval.over_context")
            for name in rl.eval.benchmarks
        ]  # fmt: skip
    return sets


def check_prompts(study: StudyConfig, tokenizer: Any, context: int) -> list[str]:
    """Check every prompt set; raises UserError (error mode) or returns one note per set that loses
    prompts or budget."""
    notes = []
    for prompts in prompt_sets(study):
        kept, record = fit_prompts(
            prompts.name, prompts.load(), tokenizer, context=context, max_new_tokens=prompts.max_new_tokens,
            policy=prompts.policy, setting=prompts.setting,
        )  # fmt: skip
        note = context_note(record)
        if note:
            notes.append(f"{prompts.name}: {len(kept)} of {record['prompts']} prompts will run{note}")
    return notes


def tokenizer_folder(study: StudyConfig, run_dir: Path) -> Path | None:
    """Where the study's tokenizer is, if it is known without running the data stage: a pretrained
    checkpoint's, the mixture's own tokenizer folder, or the shards of a data stage already done."""
    if study.pretrained is not None:
        return Path(study.pretrained)
    given = study.mixture.tokenizer.path
    if given is not None and Path(given).is_dir():
        return Path(given)
    built = run_dir / "shards" / "tokenizer"
    return built if (run_dir / "shards" / "manifest.json").is_file() and built.is_dir() else None


def preflight(study: StudyConfig, run_dir: Path) -> list[str] | None:
    """Check the study's prompts if its tokenizer is known; None when it is not (yet)."""
    from echochamber.data.tokenizer import load_tokenizer
    from echochamber.model.presets import checkpoint_context

    folder = tokenizer_folder(study, run_dir)
    if folder is None:
        return None
    # A pretrained checkpoint's own context (a missing folder or config.json fails here, in one line).
    context = checkpoint_context(folder) if study.pretrained is not None else study.pretrain.context()
    return check_prompts(study, load_tokenizer(folder), context)
