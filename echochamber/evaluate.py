"""The evaluation suite: greedy pass@1, sampled pass@k / maj@k, and the format mix of generations.

`evaluate` takes an in-memory model + tokenizer (RL's periodic evaluation calls it directly);
`run_eval` loads a checkpoint folder and a benchmark for `echochamber eval`. Every generation is
appended to `generations.jsonl` one prompt chunk at a time, so a killed evaluation resumes where it
stopped: prompts already complete in the file are skipped and the results are recomputed from the
file. Because the sampler derives each sample's randomness from (seed, prompt id, sample index), a
resumed run produces exactly the generations an uninterrupted one would have.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from echochamber.config import save_config
from echochamber.data.paths import ENV_VAR, data_dir
from echochamber.data.records import Record
from echochamber.data.sources import benchmark_records
from echochamber.data.tokenizer import encode_prompt, load_tokenizer
from echochamber.data.world import WorldConfig, world_records
from echochamber.errors import UserError
from echochamber.formats import FORMATS
from echochamber.metrics import read_jsonl
from echochamber.metrics_passk import MAX_SAMPLES, default_ks, maj_at_ks, pass_at_k, vote_key
from echochamber.model import load_model
from echochamber.sampler import Sampler, SamplingParams, build_sampler
from echochamber.verify.grade import Grader

BENCHMARKS = ("world-test", "world-hard", "gsm8k", "math500", "aime")
GENERATIONS_FILE = "generations.jsonl"
RESULTS_FILE = "results.json"
SETTINGS_FILE = "eval_settings.json"
MODES = ("greedy", "sampled")


# ---------------------------------------------------------------------------------------------
# Config


@dataclass
class EvalConfig:
    """One evaluation: which prompts, how many generations per prompt, and how they are drawn."""

    benchmark: str  # one of BENCHMARKS
    n: int = 64  # sampled generations per prompt for pass@k / maj@k (0 = greedy only)
    temperature: float = 0.7  # of the sampled generations (the paper: T=0.7, top-p 0.95)
    top_p: float = 0.95
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 2048  # the paper's evaluation limit
    greedy: bool = True  # also one greedy generation per prompt, for pass@1
    ks: list[int] | None = None  # pass@k / maj@k sizes; default 1, 2, 4, ... and n
    limit: int | None = None  # evaluate only the first `limit` prompts of the benchmark
    seed: int = 0  # sample i of prompt p draws its randomness from (seed, p, i)
    truncated_is_wrong: bool = True  # a generation cut off by max_new_tokens scores 0 and casts no vote
    data: str | None = None  # real-data folder (default: $ECHOCHAMBER_DATA, then shared/data)
    world: WorldConfig = field(default_factory=WorldConfig)  # the world behind world-test/world-hard
    batch_size: int = 256  # sequences per sampler batch
    backend: Literal["torch", "vllm"] = "torch"  # sampler backend (vllm: GPU only)
    device: str = "auto"  # where run_eval puts the model: auto (cuda when available), cpu, cuda, ...
    workers: int = 2  # grader processes (code sandbox and math-verify)

    def validate(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise UserError(f"unknown benchmark {self.benchmark!r}; known benchmarks: {', '.join(BENCHMARKS)}")
        if not 0 <= self.n <= MAX_SAMPLES:
            raise UserError(f"n must be between 0 and {MAX_SAMPLES}, got {self.n}")
        if self.n == 0 and not self.greedy:
            raise UserError("nothing to evaluate: n is 0 and greedy is off")
        for k in self.ks or []:
            if not 1 <= k <= self.n:
                raise UserError(f"every k in ks must be between 1 and n={self.n}, got {k}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"limit must be at least 1, got {self.limit}")
        if self.batch_size < 1 or self.workers < 1:
            raise UserError("batch_size and workers must be at least 1")
        self.sampling_params()  # SamplingParams checks temperature, top_p, top_k, max_new_tokens

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
        )

    def passes(self) -> list[tuple[str, int, SamplingParams]]:
        """(mode, generations per prompt, sampling params) for each kind of generation asked for."""
        passes = []
        if self.greedy:
            passes.append(("greedy", 1, SamplingParams(temperature=0.0, max_new_tokens=self.max_new_tokens, seed=self.seed)))
        if self.n > 0:
            passes.append(("sampled", self.n, self.sampling_params()))
        return passes

    def resolved_ks(self) -> list[int]:
        return sorted(set(self.ks)) if self.ks else default_ks(self.n)

    def generation_settings(self) -> dict[str, Any]:
        """Everything that decides the content of generations.jsonl: a resumed run must match it."""
        settings = {
            "benchmark": self.benchmark,
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "truncated_is_wrong": self.truncated_is_wrong,
            "backend": self.backend,
        }
        if self.benchmark.startswith("world-"):
            settings["world"] = asdict(self.world)
        return settings


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate(
    model: Any,
    tokenizer: Any,
    records: Sequence[Record],
    config: EvalConfig,
    *,
    grader: Grader | None = None,
    sampler: Sampler | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate, grade and score `records` (the first `config.limit` of them) with an in-memory model.

    With `out_dir`, every graded generation is appended to generations.jsonl one prompt chunk at a
    time and results.json is written at the end; prompts already complete in that file are not
    generated again, and the results are recomputed from the file. `grader` and `sampler` let a
    caller (RL) reuse its own; otherwise a Grader is started and closed here and a sampler is built
    over `model` (then unused when `sampler` is given). `meta` (e.g. checkpoint, RL step) is copied
    into the results.
    """
    records = _select(records, config.limit)
    store = _GenerationStore(Path(out_dir), config) if out_dir is not None else None
    rows = store.load() if store is not None else []
    done = {(row["mode"], row["prompt_id"]) for row in rows}
    if sampler is None:
        sampler = build_sampler(model, tokenizer, backend=config.backend, batch_size=config.batch_size)
    scope = nullcontext(grader) if grader is not None else Grader(workers=config.workers)
    with scope as active_grader:
        for mode, n, params in config.passes():
            todo = [record for record in records if (mode, record.id) not in done]
            # A chunk fills about one sampler batch; it is also the unit that a kill can lose.
            per_chunk = max(1, config.batch_size // n)
            with tqdm(
                total=len(records),
                initial=len(records) - len(todo),
                desc=f"{config.benchmark} {mode}",
                unit="prompt",
                disable=not progress,
            ) as bar:
                for start in range(0, len(todo), per_chunk):
                    chunk = todo[start : start + per_chunk]
                    new_rows = _generate_rows(sampler, tokenizer, active_grader, chunk, mode, n, params, config)
                    if store is not None:
                        store.append(new_rows)
                    rows.extend(new_rows)
                    bar.update(len(chunk))
    if store is not None:
        rows = store.load()  # the results are a function of the file alone
    results = summarize(rows, records, config)
    results.update(meta or {})
    if store is not None:
        _write_json_atomic(store.folder / RESULTS_FILE, results)
    return results


def _select(records: Sequence[Record], limit: int | None) -> list[Record]:
    selected = list(records[:limit] if limit is not None else records)
    if not selected:
        raise UserError("no prompts to evaluate")
    seen: set[str] = set()
    for record in selected:
        if record.id in seen:
            raise UserError(f"prompt id {record.id!r} appears twice; ids key generations and seeds")
        seen.add(record.id)
    return selected


def _generate_rows(
    sampler: Sampler,
    tokenizer: Any,
    grader: Grader,
    chunk: list[Record],
    mode: str,
    n: int,
    params: SamplingParams,
    config: EvalConfig,
) -> list[dict[str, Any]]:
    """Generate and grade `n` completions for each record of `chunk`: one generations.jsonl row each."""
    # encode_prompt is the pretraining documents' own prefix (question + "\n\n", no BOS), so the
    # model starts exactly where its training documents went on to the solution.
    prompt_tokens = [encode_prompt(tokenizer, record.prompt) for record in chunk]
    samples = sampler.generate_tokens(prompt_tokens, [record.id for record in chunk], n, params)
    pairs = [(record, sample) for record, row in zip(chunk, samples, strict=True) for sample in row]
    grades = grader.grade([sample.text for _, sample in pairs], [record.answer for record, _ in pairs])
    rows = []
    for (record, sample), grade in zip(pairs, grades, strict=True):
        correct, status, detail = grade.correct, grade.status, grade.detail
        if sample.truncated and correct and config.truncated_is_wrong:
            correct, status = False, "truncated"
            detail = f"graded correct ({grade.status}) but cut off at max_new_tokens"
        rows.append(
            {
                "prompt_id": record.id,
                "mode": mode,
                "sample_index": sample.sample_index,
                "gold": record.answer,
                "text": sample.text,
                "format": grade.format,
                "answer": grade.answer,
                "status": status,
                "detail": detail,
                "correct": correct,
                "truncated": sample.truncated,
                "n_tokens": len(sample.token_ids),  # generated tokens, the final EOS included
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Scoring


def summarize(rows: Sequence[Mapping[str, Any]], records: Sequence[Record], config: EvalConfig) -> dict[str, Any]:
    """results.json from generation rows: greedy pass@1, sampled pass@k/maj@k, per-format statistics.

    Only rows of `records` count (the file may hold more, e.g. from a run with a larger limit).
    """
    by_prompt: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        by_prompt[(row["mode"], row["prompt_id"])].append(row)
    results: dict[str, Any] = {
        "benchmark": config.benchmark,
        "n_prompts": len(records),
        "config": asdict(config),
    }
    for mode, n, _ in config.passes():
        groups = []
        for record in records:
            group = sorted(by_prompt.get((mode, record.id), []), key=lambda row: row["sample_index"])
            if [row["sample_index"] for row in group] != list(range(n)):
                raise RuntimeError(f"{mode} generations of prompt {record.id!r} are incomplete")
            groups.append(group)
        summary: dict[str, Any] = {}
        if mode == "greedy":
            summary["pass@1"] = float(np.mean([group[0]["correct"] for group in groups]))
        else:
            summary["n"] = n
            ks = config.resolved_ks()
            for k in ks:
                summary[f"pass@{k}"] = float(np.mean([pass_at_k(n, sum(r["correct"] for r in g), k) for g in groups]))
            majority = [_majority(group, ks, config.truncated_is_wrong) for group in groups]
            for k in ks:
                summary[f"maj@{k}"] = float(np.mean([m[k] for m in majority]))
        summary.update(generation_stats([row for group in groups for row in group]))
        results[mode] = summary
    return results


def _majority(group: Sequence[Mapping[str, Any]], ks: Sequence[int], truncated_is_wrong: bool) -> dict[int, float]:
    votes = [
        None if row["truncated"] and truncated_is_wrong else vote_key(row["answer"])
        for row in group
    ]
    return maj_at_ks(votes, [bool(row["correct"]) for row in group], ks)


def generation_stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy, truncation rate, mean length, status counts and, per format: count, share of all
    generations, accuracy and mean length (None where a format has no generations, never 0)."""
    total = len(rows)
    formats = {}
    for name in FORMATS:
        mine = [row for row in rows if row["format"] == name]
        formats[name] = {
            "count": len(mine),
            "share": len(mine) / total if total else None,
            "accuracy": float(np.mean([row["correct"] for row in mine])) if mine else None,
            "mean_tokens": float(np.mean([row["n_tokens"] for row in mine])) if mine else None,
        }
    unknown = {row["format"] for row in rows} - set(FORMATS)
    if unknown:
        raise RuntimeError(f"generations carry unknown formats {sorted(unknown)}")
    return {
        "n_generations": total,
        "accuracy": float(np.mean([row["correct"] for row in rows])) if rows else None,
        "truncation_rate": float(np.mean([row["truncated"] for row in rows])) if rows else None,
        "mean_tokens": float(np.mean([row["n_tokens"] for row in rows])) if rows else None,
        "status_counts": dict(sorted(Counter(row["status"] for row in rows).items())),
        "formats": formats,
    }


# ---------------------------------------------------------------------------------------------
# generations.jsonl: append per chunk, resume from complete prompts


class _GenerationStore:
    """The output folder of one evaluation; holds only complete (mode, prompt) groups after load."""

    def __init__(self, folder: Path, config: EvalConfig) -> None:
        self.folder = folder
        self.path = folder / GENERATIONS_FILE
        self.expected = {mode: n for mode, n, _ in config.passes()}
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create output folder {folder}: {error.strerror}") from None
        _check_settings(folder / SETTINGS_FILE, config.generation_settings())

    def load(self) -> list[dict[str, Any]]:
        """Rows of complete groups. A group cut short by a kill (or a torn last line) is dropped from
        the file, so the prompt is generated again in full; rows of a mode this run does not ask
        for (e.g. greedy when greedy is now off) are kept in the file but not returned."""
        if not self.path.is_file():
            return []
        rows, torn = _read_jsonl(self.path)
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            groups[(row["mode"], row["prompt_id"])].append(row)
        expected = {**{mode: None for mode in MODES}, **self.expected}
        complete = {
            key
            for key, group in groups.items()
            if expected[key[0]] is None or sorted(r["sample_index"] for r in group) == list(range(expected[key[0]]))
        }
        kept = [row for row in rows if (row["mode"], row["prompt_id"]) in complete]
        if torn or len(kept) != len(rows):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
            os.replace(tmp, self.path)
        return [row for row in kept if row["mode"] in self.expected]

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        with self.path.open("a") as file:
            file.write("".join(json.dumps(row) + "\n" for row in rows))
            file.flush()
            os.fsync(file.fileno())


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """(rows, whether a torn last line was skipped); a corrupt or foreign line is a UserError."""
    rows, torn = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or row.get("mode") not in MODES or "prompt_id" not in row:
            raise UserError(f"{path}: row {number} is not a generation row (needs mode and prompt_id)")
    return rows, torn


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix generations made under different settings in one folder."""
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they come back from the file
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = sorted(key for key in settings.keys() | stored.keys() if settings.get(key) != stored.get(key))
        if changed:
            raise UserError(
                f"{path.parent} holds an evaluation with different {', '.join(changed)}; "
                "use another output folder (or delete it to start over)"
            )
        return
    _write_json_atomic(path, settings)


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# `echochamber eval CKPT`


def benchmark_prompts(config: EvalConfig) -> list[Record]:
    """The records of `config.benchmark`: the controlled world's test/hard split, or a real
    benchmark from the data folder."""
    if config.benchmark.startswith("world-"):
        split = config.benchmark.removeprefix("world-")
        # Any style will do: the prompt is the question text, whatever the solution's format.
        return world_records(config.world, split, "gsm8k")
    if config.data is not None and not Path(config.data).is_dir():
        raise UserError(f"data folder {config.data} does not exist")
    folder = data_dir(config.data)
    if folder is None:
        raise UserError(f"benchmark {config.benchmark} reads the real data: pass --data DIR or set ${ENV_VAR}")
    return benchmark_records(config.benchmark, folder)


def default_out_dir(ckpt: Path, config: EvalConfig) -> Path:
    return Path(ckpt) / "eval" / config.benchmark


def run_eval(ckpt: Path, config: EvalConfig, out_dir: Path | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Evaluate a Hugging Face causal-LM folder (config, weights, tokenizer) on `config.benchmark`.

    Writes config.yaml, generations.jsonl and results.json into `out_dir` (default CKPT/eval/NAME);
    rerunning into the same folder resumes.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(ckpt, config)
    records = benchmark_prompts(config)
    model = load_model(ckpt)
    tokenizer = load_tokenizer(ckpt)
    model.to(_device(config.device))
    results = evaluate(
        model, tokenizer, records, config, out_dir=out_dir, progress=progress, meta={"checkpoint": str(ckpt)}
    )
    save_config(config, out_dir / "config.yaml")
    return results


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N, mps)") from None


def render_summary(results: Mapping[str, Any]) -> str:
    """A few lines for the terminal; results.json has everything."""
    lines = [f"{results['benchmark']}: {results['n_prompts']} prompts"]
    for mode in MODES:
        summary = results.get(mode)
        if summary is None:
            continue
        scores = "  ".join(f"{key} {value:.3f}" for key, value in summary.items() if "@" in key)
        shares = "  ".join(
            f"{name} {stats['share']:.0%}" for name, stats in summary["formats"].items() if stats["count"]
        )
        lines.append(f"  {mode}: {scores}  | truncated {summary['truncation_rate']:.1%}  | formats: {shares}")
    return "\n".join(lines)
