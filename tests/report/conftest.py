"""Synthetic run and sweep folders for the report tests, laid out as the pipeline writes them.

The numbers follow a small generative story close to the paper's: each prompt is solvable or not
and has a skill level; each format has a relative accuracy (TinyGSM code best); RL moves the
format mix towards one format along a sigmoid and raises the chance of a correct sample on
solvable prompts. So maj@k rises while pass@k (already ~1 on solvable prompts) stays flat, and the
collapse coincides with the pass@1 rise. results.json comes from the eval suite's own `summarize`,
so the report reads exactly what `echochamber eval` would have written.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from echochamber.data.world import WorldConfig, world_records
from echochamber.eval.config import EvalConfig
from echochamber.eval.store import write_prompts
from echochamber.eval.suite import summarize
from echochamber.formats.registry import default_registry
from echochamber.verify.normalize import vote_key

WORLD = WorldConfig(seed=0, n_pretrain=200, n_rl=40, n_test=30, n_hard=20)
RELATIVE_ACCURACY = {"tinygsm": 1.0, "omi1": 0.6, "omi2": 0.45, "other": 0.0}
BASE_MIX = {"omi1": 0.6, "tinygsm": 0.3, "omi2": 0.1}  # the paper's TinyGSM+4xOMI1 base model


@dataclass
class RunSpec:
    """One synthetic run. `final_mix` is the format mix after RL, `boost` scales the per-sample
    accuracy after RL, `solvable` is the fraction of prompts a model can solve before/after."""

    name: str = "run"
    algo: str = "ppo"
    kl_coef: float | None = 1e-3
    seed: int = 0
    steps: int = 40
    eval_every: int = 5
    samples: int = 8
    final_mix: dict[str, float] = field(
        default_factory=lambda: {"tinygsm": 0.97, "omi1": 0.02, "other": 0.01}
    )
    base_mix: dict[str, float] = field(default_factory=lambda: dict(BASE_MIX))
    boost: float = 1.6
    solvable: tuple[float, float] = (0.75, 0.75)
    dip: bool = False  # GRPO's brief crash of training accuracy mid-run
    collapse_delay: int = 0  # RL steps between the accuracy rise and the format-share rise
    pretrain: bool = True
    rl: bool = True
    evaluations: tuple[str, ...] = ("base", "final")  # which eval/<phase> folders exist
    eval_location: str = "eval"  # "eval" (eval/base, eval/final) or "rl" (rl/eval/step_N: RL's own)
    provenance: bool = True  # generations, results and RL lines traced to the pretraining sources
    # Stages run.json records as not done although their folders exist: still running, or stale
    # after a config change (study/pipeline.py); e.g. ("rl", "eval-final") for a cell mid-RL.
    unfinished: tuple[str, ...] = ()
    parameters: int | None = None  # a pretrain/final/model.safetensors of this many parameters


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _progress(spec: RunSpec, step: int, delay: int = 0) -> float:
    """How far RL has moved, 0 -> 1, a steep sigmoid centred at a third of the run (+ `delay` steps)."""
    return _sigmoid((step - spec.steps / 3 - delay) / (spec.steps / 40))


def _mix(spec: RunSpec, t: float) -> dict[str, float]:
    return {
        name: (1 - t) * spec.base_mix.get(name, 0.0) + t * spec.final_mix.get(name, 0.0)
        for name in default_registry().names
    }


def paper_rule(text: str) -> str:
    """The paper's format rule (its official code): `<llm-code>` -> OMI1, else `def` -> TinyGSM, else text."""
    return "omi1" if "<llm-code>" in text else "tinygsm" if "def" in text else "omi2"


SOURCES = ("tinygsm", "omi1", "omi2")  # the synthetic runs' pretraining sources, named after their formats


def dominant_of(fmt: str, key: str) -> str | None:
    """The planted dominant source of a generation: its format's source, except for one generation in
    ten (by a hash of `key`, so the rows' random draws stay as they were), which echoes the next
    source; None for `other` text."""
    if fmt not in SOURCES:
        return None
    shift = zlib.crc32(key.encode()) % 10 == 0
    return SOURCES[(SOURCES.index(fmt) + shift) % len(SOURCES)]


def _provenance(text: str, fmt: str, key: str) -> dict[str, Any]:
    """A generation's `provenance` object as the eval suite writes it (provenance/records.py)."""
    source = dominant_of(fmt, key)
    alone = {name: (0.6 if name == source else 0.02) for name in SOURCES}
    span = text[5:45]
    return {
        "n": 8, "ngrams": 40, "source_share": {name: alone[name] + 0.2 for name in SOURCES}, "unique_share": alone,
        "novelty": 0.1 if source else 0.9, "dominant_source": source,
        "longest_match": {
            "tokens": 12, "start": 2, "source": source or "omi2", "doc": "world-pretrain-000042", "doc_offset": 30,
            "text": span, "chars": [5, 5 + len(span)],
            "context": {"before": "Question text\n\n", "after": " and more", "cut_before": True, "cut_after": False},
        },
    }  # fmt: skip


def _row(
    record: Any, mode: str, index: int, fmt: str, correct: bool, rng: random.Random, texts: dict, traced: bool
) -> dict[str, Any]:
    gold = int(record.answer)
    answer = str(gold if correct else gold + rng.choice([1, 2, -1, 10]))  # a few wrong answers: votes split
    if fmt == "tinygsm" and rng.random() < 0.5:
        answer += ".0"  # a TinyGSM function often returns a float; it votes with the integer spelling
    text = texts[fmt][record.id] if fmt != "other" else "So the answer is probably"
    row = {
        "prompt_id": record.id, "mode": mode, "sample_index": index, "gold": record.answer, "text": text,
        "format": fmt, "paper_format": paper_rule(text), "answer": answer if fmt != "other" else None,
        "vote": vote_key(answer) if fmt != "other" else None, "status": "ok" if correct else "wrong",
        "detail": "", "correct": correct, "truncated": False, "n_tokens": 40 + 10 * len(fmt) + rng.randrange(20),
    }  # fmt: skip
    if traced:
        row["provenance"] = _provenance(text, fmt, f"{record.id}-{mode}-{index}")
    return row


def _generations(spec: RunSpec, split: str, t: float) -> tuple[list[dict[str, Any]], list[Any]]:
    """Graded generation rows (greedy + sampled) for the world `split` with the model at RL progress t."""
    records = world_records(WORLD, split, "gsm8k")
    texts = {
        style: {r.id: r.solution for r in world_records(WORLD, split, style)}
        for style in ("tinygsm", "omi1", "omi2")
    }
    mix = _mix(spec, t)
    boost = 1 + t * (spec.boost - 1)
    hardness = 0.55 if split == "hard" else 1.0
    rows = []
    for index, record in enumerate(records):
        rng = random.Random(f"{spec.seed}-{split}-{index}")
        level = rng.random()  # fixed per prompt: the same prompt is easy or hard before and after RL
        solvable = level < (1 - t) * spec.solvable[0] + t * spec.solvable[1]
        skill = 0.5 + 0.4 * rng.random()
        # The base model is one per pretraining seed; each RL'd model draws its own generations.
        rng = random.Random(f"{spec.seed}-{split}-{index}" + (f"-{spec.name}-{t:.3f}" if t else ""))
        top = max(mix, key=mix.__getitem__)
        # Greedy decoding: the most likely format, a little more accurate than a sample of it.
        greedy_p = min(1.0, 1.3 * hardness * skill * RELATIVE_ACCURACY[top] * boost)
        rows.append(_row(record, "greedy", 0, top, solvable and rng.random() < greedy_p, rng, texts, spec.provenance))
        for i in range(spec.samples):
            fmt = rng.choices(list(mix), weights=list(mix.values()))[0]
            p_correct = min(0.97, hardness * skill * RELATIVE_ACCURACY[fmt] * boost)
            rows.append(_row(record, "sampled", i, fmt, solvable and rng.random() < p_correct, rng, texts, spec.provenance))
    return rows, records


def _write_eval(folder: Path, spec: RunSpec, split: str, t: float) -> dict[str, Any]:
    rows, records = _generations(spec, split, t)
    evaluation = EvalConfig(n=spec.samples).evaluation(f"world-{split}", WORLD)
    results = summarize(rows, records, evaluation)
    folder.mkdir(parents=True, exist_ok=True)
    write_prompts(folder, records)
    (folder / "generations.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    return results


def write_run(folder: Path, spec: RunSpec) -> Path:
    """A run folder as the pipeline lays it out (see echochamber/report/collect.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    in_eval = spec.eval_location == "eval"
    ran = {"data": spec.pretrain, "pretrain": spec.pretrain, "eval-base": in_eval and "base" in spec.evaluations,
           "rl": spec.rl, "eval-final": in_eval and "final" in spec.evaluations}  # fmt: skip
    stages = {name: {"hash": "0" * 16, "done": name not in spec.unfinished} for name, on in ran.items() if on}
    run_json = {"name": spec.name, "preset": "cpu", "config_hash": "0" * 16, "stages": stages}
    (folder / "run.json").write_text(json.dumps(run_json))
    (folder / "config.yaml").write_text(f"name: {spec.name}\nseed: {spec.seed}\n")
    if spec.pretrain:
        (folder / "pretrain").mkdir(exist_ok=True)
        lines = [
            {"stage": "pretrain", "step": s, "tokens": s * 4096, "loss": 6 * math.exp(-s / 60) + 1.2, "lr": 1e-3,
             **({"val_loss/world": 6 * math.exp(-s / 60) + 1.3, "val_loss": 6 * math.exp(-s / 60) + 1.3} if s % 50 == 0 else {})}
            for s in range(5, 301, 5)
        ]  # fmt: skip
        (folder / "pretrain" / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        if spec.parameters:
            (folder / "pretrain" / "final").mkdir()
            save_file({"weight": np.zeros(spec.parameters, np.float32)}, folder / "pretrain" / "final" / "model.safetensors")
    if spec.rl:
        _write_rl(folder / "rl", spec)
    for phase in spec.evaluations:
        t = 0.0 if phase == "base" else _progress(spec, spec.steps)
        for split in ("test", "hard"):
            if spec.eval_location == "eval":
                where = folder / "eval" / phase / f"world-{split}"
            else:
                where = (
                    folder
                    / "rl"
                    / "eval"
                    / f"step_{0 if phase == 'base' else spec.steps:06d}"
                    / f"world-{split}"
                )
            _write_eval(where, spec, split, t)
    return folder


def _write_rl(folder: Path, spec: RunSpec) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    section = {"kl_coef": spec.kl_coef} if spec.kl_coef is not None else {}
    (folder / "config.yaml").write_text(f"seed: {spec.seed}\n{spec.algo}: {json.dumps(section)}\n")
    rng = random.Random(spec.seed)
    lines = []
    for step in range(1, spec.steps + 1):
        t = _progress(spec, step)
        mix = _mix(spec, _progress(spec, step, spec.collapse_delay))
        accuracy = (
            0.35
            + 0.3 * t
            + rng.gauss(0, 0.015)
            - (0.25 if spec.dip and spec.steps // 2 <= step < spec.steps // 2 + 3 else 0)
        )
        lines.append({
            "stage": "rl", "step": step, "algo": spec.algo, "n_samples": 512, "reward_mean": accuracy, "accuracy": accuracy,
            "format_share": mix,
            "format_accuracy": {name: (min(1.0, accuracy * RELATIVE_ACCURACY[name] * 1.3) if mix[name] > 0 else None) for name in default_registry().names},
            "kl_k1": None if spec.algo == "ei" else 0.02 * t, "kl_k2": None if spec.algo == "ei" else 0.018 * t,
            "kl_k3": None if spec.algo == "ei" else 0.019 * t, "entropy": 0.9 - 0.5 * t,
            "response_length": 120 - 30 * t, "truncation_rate": 0.02 * (1 - t),
        })  # fmt: skip
        if spec.provenance:  # the rollouts echo their formats' sources, a little of them in several
            alone = {name: 0.8 * mix[name] for name in SOURCES}
            lines[-1]["provenance"] = {
                "n": 8, "generations": 512, "ngrams": 40_000, "source_share": {n: v + 0.1 for n, v in alone.items()},
                "unique_share": alone, "novelty": 0.05 + 0.8 * mix["other"], "longest_match_mean": 30 + 20 * t,
                "longest_match_max": 120,
            }  # fmt: skip
        if step % spec.eval_every == 0 or step == 1:
            for split, base in (("test", 0.3), ("hard", 0.12)):
                e = 0 if step == 1 else step
                p = _progress(spec, e) if e else 0.0
                lines.append({
                    "stage": "eval", "step": e, "benchmark": f"world-{split}", "n_prompts": 30,
                    "greedy": {"pass@1": base + 0.35 * p},
                    "sampled": {"n": 8, "pass@1": base + 0.3 * p, "pass@8": 0.8 + 0.01 * p, "maj@8": base + 0.4 * p},
                })  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def write_sweep(
    folder: Path, cells: list[tuple[str, dict[str, Any], RunSpec]], axes: dict[str, list[Any]]
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, params, spec in cells:
        write_run(folder / "cells" / name, spec)
        entries.append({"name": name, "params": params, "dir": f"cells/{name}"})
    (folder / "sweep.json").write_text(json.dumps({"name": folder.name, "axes": axes, "cells": entries}))
    return folder


def kl_algo_sweep(folder: Path) -> Path:
    """PPO at KL 0 / 1e-3 / 1e-2 with two seeds each, plus GRPO and EI at 1e-3 (one seed)."""
    strong_kl_mix = {"tinygsm": 0.72, "omi2": 0.2, "omi1": 0.08}  # the paper: KL 0.01 keeps some OMI2
    cells = []
    for kl in (0.0, 1e-3, 1e-2):
        for seed in (0, 1):
            spec = RunSpec(name=f"ppo-kl{kl:g}-s{seed}", kl_coef=kl, seed=seed, steps=30, samples=6)
            if kl == 1e-2:
                spec.final_mix = strong_kl_mix
            cells.append((spec.name, {"algo": "ppo", "rl.kl_coef": kl, "seed": seed}, spec))
    grpo = RunSpec(name="grpo-kl0.001-s0", algo="grpo", steps=30, samples=6, dip=True)
    ei = RunSpec(name="ei-kl0.001-s0", algo="ei", kl_coef=None, steps=3, eval_every=1, samples=6, boost=1.15,
                 final_mix={"tinygsm": 0.42, "omi1": 0.48, "omi2": 0.1})  # fmt: skip
    cells += [(grpo.name, {"algo": "grpo", "rl.kl_coef": 1e-3, "seed": 0}, grpo)]
    cells += [(ei.name, {"algo": "ei", "rl.kl_coef": 1e-3, "seed": 0}, ei)]
    axes = {"algo": ["ppo", "grpo", "ei"], "rl.kl_coef": [0.0, 1e-3, 1e-2], "seed": [0, 1]}
    return write_sweep(folder, cells, axes)


def write_planted_eval(folder: Path, correct: list[int], n: int) -> None:
    """One evaluation with known per-prompt counts: prompt i has `correct[i]` right samples of n
    (answer "7", in TinyGSM form); the wrong ones all answer "8", so a majority of right samples wins."""
    folder.mkdir(parents=True)
    rows = [
        {"prompt_id": f"p{i}", "mode": "sampled", "sample_index": s, "gold": "7", "correct": s < c,
         "answer": "7" if s < c else "8", "vote": "7" if s < c else "8", "format": "tinygsm",
         "truncated": False}
        for i, c in enumerate(correct) for s in range(n)
    ]  # fmt: skip
    (folder / "generations.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_planted_run(folder: Path, counts: dict[str, tuple[list[int], list[int]]], n: int) -> Path:
    """A run folder with only eval/base and eval/final: benchmark -> (correct counts before, after)."""
    (folder / "eval").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"name": folder.name}))
    for bench, (base, final) in counts.items():
        write_planted_eval(folder / "eval" / "base" / bench, base, n)
        write_planted_eval(folder / "eval" / "final" / bench, final, n)
    return folder


@pytest.fixture(scope="session")
def synthetic() -> SimpleNamespace:
    """The builders, for tests that need their own variant of a run or sweep."""
    return SimpleNamespace(
        RunSpec=RunSpec, write_run=write_run, write_sweep=write_sweep, write_planted_run=write_planted_run
    )


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("report") / "run", RunSpec())


@pytest.fixture(scope="session")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kl_algo_sweep(tmp_path_factory.mktemp("report") / "sweep")
