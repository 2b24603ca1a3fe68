"""The evaluation suite: greedy pass@1, sampled pass@k / maj@k, and the format mix of generations.

`evaluate` takes an in-memory model + tokenizer and an `Evaluation` (config.py: one benchmark under
the eval settings); `evaluate_benchmark` loads the benchmark's problems first (a study's and RL's
evaluations call it), and `run_eval` also loads a checkpoint folder (`echochamber eval`). Every generation is
appended to `generations.jsonl` one prompt chunk at a time (store.py), so a killed
evaluation resumes where it stopped: prompts already complete in the file are skipped and the
results are recomputed from the file. Because the sampler derives each sample's randomness from (seed, prompt id, sample index), a
resumed run produces exactly the generations an uninterrupted one would have.

Under torchrun each round of prompts is split over the ranks (`dist.rank_part`), each rank generates
and grades its part, and rank 0 gathers, traces and appends the rows and computes the results, which
every rank returns: one process's generations (batches of other sizes round differently, so a
near-tie may break the other way).

Each generation row also records the paper's format rule (`paper_format`) and the sample's `vote`:
the representative of its answer's math-verify equivalence class among its prompt's samples (None
when it abstains), formed when the prompt's samples are graded (`passk.vote_classes`), so
results.json's maj@k and any later reader of generations.jsonl count the same votes. Rows written
before these fields existed are graded again from their stored text and gold when a folder is
resumed (also with the current verifier), so one folder never mixes two grading rules.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from echochamber import dist
from echochamber.checkpoint import sole_writer
from echochamber.config import save_config
from echochamber.data.benchmarks import load_benchmark
from echochamber.data.records import Record
from echochamber.data.tokenizer import encode_prompt, load_tokenizer
from echochamber.errors import UserError
from echochamber.eval.config import Evaluation
from echochamber.eval.context import context_note, fit_prompts, model_context
from echochamber.eval.passk import maj_at_ks, pass_at_k, vote_classes
from echochamber.eval.store import (
    CONFIG_FILE,
    MODES,
    RESULTS_FILE,
    GenerationStore,
    write_json_atomic,
    write_prompts,
)
from echochamber.formats import PAPER_FORMATS
from echochamber.formats.registry import Registry, default_registry
from echochamber.model.presets import load_model
from echochamber.model.sampler import Sampler, build_sampler, sampler_precision
from echochamber.model.sampling_params import SamplingParams
from echochamber.provenance.records import check_tokenizer, pooled, trace_generations
from echochamber.verify.grade import Grade, Grader
from echochamber.verify.normalize import vote_key

if TYPE_CHECKING:
    from echochamber.provenance.tracer import Tracer

# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate(
    model: Any,
    tokenizer: Any,
    records: Sequence[Record],
    evaluation: Evaluation,
    *,
    grader: Grader | None = None,
    sampler: Sampler | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
    tracer: Tracer | None = None,
) -> dict[str, Any]:
    """Generate, grade and score `records` (the first `config.limit` of them) with an in-memory model.

    With `out_dir`, the prompts (id, text, gold) go to prompts.jsonl, every graded generation is
    appended to generations.jsonl one prompt chunk at a time, and results.json and the settings
    (config.yaml) are written at the end; prompts already complete in that file are not
    generated again, and the results are recomputed from the file. `grader` and `sampler` let a
    caller (RL) reuse its own; otherwise a Grader is started and closed here and a sampler is built
    over `model` (then unused when `sampler` is given, except to record its dtype and device).
    `meta` (e.g. checkpoint, RL step) is copied into the results. With `tracer` (the pretraining
    shards' index) every row gets its `provenance` and each mode's results the pooled shares
    (provenance/records.py); without, they are None. Under torchrun every rank calls this with the
    same arguments (`tracer` and `out_dir` matter on rank 0 only) and gets the same results.
    """
    config = evaluation.config
    rank0 = dist.rank() == 0
    tracer = tracer if rank0 else None
    if tracer is not None:
        check_tokenizer(tracer, tokenizer, "the evaluated model")
    records, context = _select(records, config.limit), None
    if model is not None:  # a caller's own sampler with no model (tests) has no context to check
        records, context = fit_prompts(
            evaluation.benchmark, records, tokenizer, context=model_context(model),
            max_new_tokens=config.max_new_tokens, policy=config.over_context, setting="eval.over_context",
        )  # fmt: skip
    precision = sampler_precision(model, config.backend, config.dtype)
    store = None
    if out_dir is not None and rank0:
        expected = {mode: n for mode, n, _ in config.passes()}
        store = GenerationStore(Path(out_dir), expected, evaluation.generation_settings())
        write_prompts(store.folder, records)
    if sampler is None:
        sampler = build_sampler(
            model, tokenizer, backend=config.backend, batch_size=config.batch_size, dtype=config.dtype
        )
    formats = evaluation.registry()
    scope = nullcontext(grader) if grader is not None else Grader(workers=config.workers)
    with scope as active_grader:
        # Rows of an older version are graded again, so one folder stays under one verifier (the
        # older one also graded some program values differently: verify.answers.round_float_noise).
        regrade = partial(
            _graded_rows, active_grader, truncated_is_wrong=config.truncated_is_wrong, formats=formats
        )
        rows = store.load(regrade) if store is not None else []
        # Rank 0's file decides what is left (the others wait while it reads and regrades it).
        done = dist.gather_objects({(row["mode"], row["prompt_id"]) for row in rows}, patient=True)[0]
        for mode, n, params in config.passes():
            todo = [record for record in records if (mode, record.id) not in done]
            # A round fills about one sampler batch on each rank; it is also the unit a kill can lose.
            per_round = max(1, config.batch_size // n) * dist.world_size()
            with tqdm(
                total=len(records), initial=len(records) - len(todo), desc=f"{evaluation.benchmark} {mode}",
                unit="prompt", disable=not (progress and rank0),
            ) as bar:  # fmt: skip
                for start in range(0, len(todo), per_round):
                    chunk = todo[start : start + per_round]
                    part = dist.rank_part(chunk)
                    args = (sampler, tokenizer, active_grader, part, mode, n, params, config.truncated_is_wrong, formats)
                    parts = dist.gather_objects(_generate_rows(*args) if part else ([], []), patient=True)
                    if not rank0:
                        continue
                    new_rows = [row for part_rows, _ in parts for row in part_rows]
                    if tracer is not None:
                        _trace(tracer, new_rows, [ids for _, part_ids in parts for ids in part_ids])
                    if store is not None:
                        store.append(new_rows)
                    rows.extend(new_rows)
                    bar.update(len(chunk))
        if store is not None:
            rows = store.load(regrade)  # the results are a function of the file alone
    results = None
    if rank0:
        results = summarize(rows, records, evaluation)
        results["context"] = context  # prompts skipped or given a shorter budget: the report flags them
        results.update(precision)
        results.update(meta or {})
        if store is not None:
            write_json_atomic(store.folder / RESULTS_FILE, results)
            save_config(evaluation.config_file(), store.folder / CONFIG_FILE)
    return dist.gather_objects(results, patient=True)[0]


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
    truncated_is_wrong: bool,
    formats: Registry,
) -> tuple[list[dict[str, Any]], list[list[int]]]:
    """Generate and grade `n` completions for each record of `chunk`: one generations.jsonl row each,
    and each row's generated token ids (what provenance traces)."""
    # encode_prompt is the pretraining documents' own prefix (question + "\n\n", no BOS), so the
    # model starts exactly where its training documents went on to the solution.
    prompt_tokens = [encode_prompt(tokenizer, record.prompt) for record in chunk]
    samples = sampler.generate_tokens(prompt_tokens, [record.id for record in chunk], n, params)
    generated = [
        {
            "prompt_id": record.id,
            "mode": mode,
            "sample_index": sample.sample_index,
            "gold": record.answer,
            "text": sample.text,
            "truncated": sample.truncated,
            "n_tokens": len(sample.token_ids),  # generated tokens, the final EOS included
        }
        for record, row in zip(chunk, samples, strict=True)
        for sample in row
    ]
    rows = _graded_rows(grader, generated, truncated_is_wrong, formats)
    return rows, [sample.token_ids for row in samples for sample in row]


def _trace(tracer: Tracer, rows: list[dict[str, Any]], token_ids: list[list[int]]) -> None:
    """Each row's `provenance`: where its generated tokens occur in the pretraining shards."""
    traced = trace_generations(tracer, token_ids, [row["text"] for row in rows])
    for row, provenance in zip(rows, traced, strict=True):
        row["provenance"] = provenance


def _graded_rows(
    grader: Grader, generated: Sequence[Mapping[str, Any]], truncated_is_wrong: bool, formats: Registry
) -> list[dict[str, Any]]:
    """Generation rows from generated samples (prompt_id, mode, sample_index, gold, text, truncated,
    n_tokens), all samples of each of their prompts included: graded under `formats`, and with each
    sample's vote (its answer's class among its prompt's samples; None when it abstains)."""
    grades = grader.grade([row["text"] for row in generated], [row["gold"] for row in generated], formats)
    rows = [_row(sample, grade, truncated_is_wrong) for sample, grade in zip(generated, grades, strict=True)]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["mode"], row["prompt_id"])].append(row)
    keys = [[_vote_key(row, truncated_is_wrong) for row in group] for group in groups.values()]
    for group, votes in zip(groups.values(), vote_classes(keys, grader.same_answers), strict=True):
        for row, vote in zip(group, votes, strict=True):
            row["vote"] = vote
    return rows


def _row(sample: Mapping[str, Any], grade: Grade, truncated_is_wrong: bool) -> dict[str, Any]:
    correct, status, detail = grade.correct, grade.status, grade.detail
    if sample["truncated"] and correct and truncated_is_wrong:
        correct, status = False, "truncated"
        detail = f"graded correct ({grade.status}) but cut off at max_new_tokens"
    return {
        "prompt_id": sample["prompt_id"],
        "mode": sample["mode"],
        "sample_index": sample["sample_index"],
        "gold": sample["gold"],
        "text": sample["text"],
        "format": grade.format,
        "paper_format": grade.paper_format,
        "answer": grade.answer,
        "vote": None,  # set by _graded_rows once the prompt's answers are classed
        "status": status,
        "detail": detail,
        "correct": correct,
        "truncated": sample["truncated"],
        "n_tokens": sample["n_tokens"],
    }


def _vote_key(row: Mapping[str, Any], truncated_is_wrong: bool) -> str | None:
    """What a sample votes under before classing: None (abstains) without an answer, or when it was
    cut off and truncation counts as wrong (its answer may be a half-written one)."""
    return None if row["truncated"] and truncated_is_wrong else vote_key(row["answer"])


# ---------------------------------------------------------------------------------------------
# Scoring


def summarize(rows: Sequence[Mapping[str, Any]], records: Sequence[Record], evaluation: Evaluation) -> dict[str, Any]:
    """results.json from generation rows: greedy pass@1, sampled pass@k/maj@k, per-format statistics.

    Only rows of `records` count (the file may hold more, e.g. from a run with a larger limit).
    """
    by_prompt: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        by_prompt[(row["mode"], row["prompt_id"])].append(row)
    config = evaluation.config
    results: dict[str, Any] = {
        "benchmark": evaluation.benchmark,
        "n_prompts": len(records),
        "config": evaluation.record(),
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
            majority = [maj_at_ks([r["vote"] for r in g], [bool(r["correct"]) for r in g], ks) for g in groups]
            for k in ks:
                summary[f"maj@{k}"] = float(np.mean([m[k] for m in majority]))
        summary.update(generation_stats([row for group in groups for row in group], evaluation.registry().names))
        results[mode] = summary
    return results


def generation_stats(rows: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None) -> dict[str, Any]:
    """Accuracy, truncation rate, mean length, status counts and, per format of `names` (the run's
    registry's labels, `other` included; None = the default registry's): count, share of all
    generations, accuracy and mean length (None where a format has no generations, never 0); then
    the same shares under the paper's rule and where the two rules disagree (`paper_format_stats`);
    and the rows' provenance pooled (None when they carry none: provenance.records.pooled)."""
    names = tuple(names) if names is not None else default_registry().names
    total = len(rows)
    formats = {}
    for name in names:
        mine = [row for row in rows if row["format"] == name]
        formats[name] = {
            "count": len(mine),
            "share": len(mine) / total if total else None,
            "accuracy": float(np.mean([row["correct"] for row in mine])) if mine else None,
            "mean_tokens": float(np.mean([row["n_tokens"] for row in mine])) if mine else None,
        }
    unknown = {row["format"] for row in rows} - set(names)
    if unknown:
        raise RuntimeError(f"generations carry formats the registry does not know: {sorted(unknown)}")
    return {
        "n_generations": total,
        "accuracy": float(np.mean([row["correct"] for row in rows])) if rows else None,
        "truncation_rate": float(np.mean([row["truncated"] for row in rows])) if rows else None,
        "mean_tokens": float(np.mean([row["n_tokens"] for row in rows])) if rows else None,
        "status_counts": dict(sorted(Counter(row["status"] for row in rows).items())),
        "formats": formats,
        **paper_format_stats(rows, names),
        "provenance": pooled(rows),
    }


def paper_format_stats(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """The format mix under the paper's own rule (formats.classify.paper_format), beside ours.

    `paper_formats`: per paper label (PAPER_FORMATS) count, share of all generations and accuracy
    (None where a label has no generations). `format_confusion`: {our label (of `names`): {paper
    label: count}} over every pair of labels. `format_disagreements`: generations the two rules label differently;
    our `other` always disagrees, the paper's rule having no such label. All three are None when the
    rows carry no paper label (rows built by hand); rows carry it all or none.
    """
    labelled = [row for row in rows if row.get("paper_format") is not None]
    if not labelled:
        return {"paper_formats": None, "format_confusion": None, "format_disagreements": None}
    if len(labelled) != len(rows):
        raise RuntimeError(f"{len(rows) - len(labelled)} of {len(rows)} generations lack a paper_format")
    unknown = {row["paper_format"] for row in rows} - set(PAPER_FORMATS)
    if unknown:
        raise RuntimeError(f"generations carry unknown paper formats {sorted(unknown)}")
    shares = {}
    for name in PAPER_FORMATS:
        mine = [row for row in rows if row["paper_format"] == name]
        shares[name] = {
            "count": len(mine),
            "share": len(mine) / len(rows),
            "accuracy": float(np.mean([row["correct"] for row in mine])) if mine else None,
        }
    pairs = Counter((row["format"], row["paper_format"]) for row in rows)
    return {
        "paper_formats": shares,
        "format_confusion": {ours: {paper: pairs[ours, paper] for paper in PAPER_FORMATS} for ours in names},
        "format_disagreements": sum(count for (ours, paper), count in pairs.items() if ours != paper),
    }


# ---------------------------------------------------------------------------------------------
# `echochamber eval CKPT`


def evaluate_benchmark(
    model: Any,
    tokenizer: Any,
    evaluation: Evaluation,
    out_dir: Path,
    *,
    grader: Grader | None = None,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
    tracer: Tracer | None = None,
) -> dict[str, Any]:
    """`evaluate` on the problems of the evaluation's benchmark (data.benchmarks), into `out_dir`."""
    records = load_benchmark(evaluation.benchmark, evaluation.world, evaluation.config.data)
    return evaluate(
        model, tokenizer, records, evaluation, grader=grader, out_dir=out_dir, progress=progress, meta=meta,
        tracer=tracer,
    )  # fmt: skip


def run_eval(
    ckpt: Path,
    evaluation: Evaluation,
    out_dir: Path | None = None,
    *,
    progress: bool = True,
    tracer: Tracer | None = None,
) -> dict[str, Any]:
    """`echochamber eval`: evaluate a Hugging Face causal-LM folder (config, weights, tokenizer) on
    one benchmark, in the checkpoint's own dtype or the one `config.dtype` names (results.json
    records which), into `out_dir` (default CKPT/eval/BENCHMARK); rerunning into it resumes.
    `tracer`: the index of the shards it was pretrained on (`--shards`), for provenance."""
    config = evaluation.config
    out_dir = Path(out_dir) if out_dir is not None else Path(ckpt) / "eval" / evaluation.benchmark
    records = load_benchmark(evaluation.benchmark, evaluation.world, config.data)  # fails before the model loads
    with sole_writer(out_dir, dist.rank()):  # one `echochamber eval` writes a folder at a time
        model = load_model(ckpt)
        tokenizer = load_tokenizer(ckpt)
        model.to(_device(config.device))
        if config.dtype != "auto":
            model.to(getattr(torch, config.dtype))
        return evaluate(
            model, tokenizer, records, evaluation, out_dir=out_dir, progress=progress, meta={"checkpoint": str(ckpt)},
            tracer=tracer,
        )  # fmt: skip


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N, mps)") from None


def render_summary(results: Mapping[str, Any]) -> str:
    """A few lines for the terminal; results.json has everything."""
    lines = [f"{results['benchmark']}: {results['n_prompts']} prompts{context_note(results.get('context'))}"]
    for mode in MODES:
        summary = results.get(mode)
        if summary is None:
            continue
        scores = "  ".join(f"{key} {value:.3f}" for key, value in summary.items() if "@" in key)
        shares = "  ".join(
            f"{name} {stats['share']:.0%}" for name, stats in summary["formats"].items() if stats["count"]
        )
        line = f"  {mode}: {scores}  | truncated {summary['truncation_rate']:.1%}  | formats: {shares}"
        if summary.get("paper_formats"):
            paper = summary["paper_formats"].items()
            line += "  | paper's rule: " + "  ".join(f"{name} {stats['share']:.0%}" for name, stats in paper if stats["count"])
        if summary.get("provenance") and summary["provenance"]["novelty"] is not None:
            echo = summary["provenance"]
            alone = "  ".join(f"{name} {share:.0%}" for name, share in echo["unique_share"].items())
            line += f"  | {echo['n']}-grams in one source alone: {alone}, novel {echo['novelty']:.0%}"
        lines.append(line)
    return "\n".join(lines)
