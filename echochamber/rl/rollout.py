"""One RL step's data: the prompt set, sampling, rewards from the verifier, and the padded batch.

Every algorithm consumes the same thing. `generate_rollouts` samples G responses per prompt through
the project's sampler and grades them with the verifier; `build_batch` pads them into a
`RolloutBatch` with the sampler's own log-probs (`old_logp`: the distribution the tokens were really
drawn from, so the first ratio of an update is 1 up to float error, not a trainer/sampler mismatch)
and the reference model's log-probs at the same temperature, or none when the run has no use for
them (KL coefficient 0: the reference forward is skipped, see `RLConfig.uses_reference`).

Two policies are explicit here because the field notes list them as silent bugs elsewhere:
- a truncated response (max_new_tokens ran out before EOS) is never correct (status "truncated" if
  the verifier liked its partial answer, as in the eval suite); with truncation "zero" it is trained
  with reward 0, with "mask" it is left out of the loss entirely;
- a response that ended in EOS keeps the EOS token in the batch: stopping was the policy's choice.

Under torchrun each rank handles its share of the step's prompts; the policy is not DDP-wrapped,
algorithms normalise losses by global counts (`dist.global_sum`) and call `dist.sum_gradients` after
backward (works for any module, a critic included).
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from echochamber import dist
from echochamber.data.records import Record
from echochamber.data.tokenizer import encode_prompt, pad_token_id
from echochamber.errors import UserError
from echochamber.formats.registry import Registry
from echochamber.model.decoders import cache_keyword
from echochamber.model.logprobs import token_logprobs
from echochamber.model.precision import autocast
from echochamber.model.sampler import Sampler, build_sampler
from echochamber.model.sampling_params import SamplingParams
from echochamber.rl.config import PromptConfig
from echochamber.verify.grade import Grader

# ---------------------------------------------------------------------------------------------
# Prompts


def load_prompts(config: PromptConfig) -> list[Record]:
    """The RL prompt set: the world's RL split, or any data.adapters source (GSM8K train, ...)."""
    if config.dataset == "world":
        from echochamber.data.world import world_records

        # Any style will do: RL uses only the question and the gold answer.
        records = world_records(config.world, "rl", "gsm8k")[: config.limit]
    else:
        from echochamber.data.sources import load_source

        records = load_source(config.dataset, path=config.path, split=config.split, limit=config.limit)
    if not records:
        raise UserError(f"the RL prompt set ({config.dataset}) is empty")
    ids = [record.id for record in records]
    if len(set(ids)) != len(ids):
        raise UserError(f"the RL prompt set ({config.dataset}) repeats prompt ids; ids seed each sample")
    return records


def steps_per_epoch(n_prompts: int, prompts_per_step: int) -> int:
    """Whole steps per pass over the prompts; the remainder of a pass is skipped (it never straddles
    two epochs, so no prompt appears twice in one step)."""
    if prompts_per_step > n_prompts:
        raise UserError(f"rollout.prompts_per_step={prompts_per_step} but the prompt set has only {n_prompts} prompts")
    return n_prompts // prompts_per_step


def step_prompts(records: Sequence[Record], step: int, prompts_per_step: int, seed: int) -> list[Record]:
    """The prompts of step `step` (0-based): a slice of a seeded permutation per epoch.

    A pure function of (seed, step), so resuming needs no cursor and every rank agrees.
    """
    per_epoch = steps_per_epoch(len(records), prompts_per_step)
    epoch, within = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(records))
    return [records[i] for i in order[within * prompts_per_step : (within + 1) * prompts_per_step]]


def rank_share(items: Sequence[Any]) -> list[Any]:
    """This rank's contiguous share (whole prompts, so GRPO groups never span ranks)."""
    if len(items) % dist.world_size():
        raise UserError(f"{len(items)} prompts per step do not split evenly over {dist.world_size()} processes")
    return dist.rank_part(items)


# ---------------------------------------------------------------------------------------------
# Sampling and reward


@dataclass
class Rollout:
    """One graded sample. `token_ids`/`logprobs` are the response only (EOS included when it stopped)."""

    prompt_id: str
    sample_index: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    text: str
    format: str
    answer: str | None
    status: str
    correct: bool
    truncated: bool
    reward: float
    # The paper's own format rule (formats.classify.paper_format), beside our `format`; None only in
    # rollouts built by hand (tests), whose step metrics then report no paper-rule shares.
    paper_format: str | None = None

    def row(self) -> dict[str, Any]:
        """What rollouts/step_N.jsonl.gz keeps of it (and what metrics are computed from)."""
        keep = asdict(self)
        del keep["prompt_token_ids"], keep["token_ids"], keep["logprobs"]
        return {**keep, "n_tokens": len(self.token_ids)}


def generate_rollouts(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    n: int,
    params: SamplingParams,
    grader: Grader,
    *,
    batch_size: int = 256,
    formats: Registry | None = None,
    sampler: Sampler | None = None,
) -> tuple[list[Rollout], dict[str, float]]:
    """`n` graded samples per record (prompt-major), labelled and graded under `formats` (the run's
    registry; None = the default one), and the time spent sampling and grading. `sampler` (the run's
    rollout engine, rl/engine.py) draws them; None = the project's sampler over `model`.

    Reward = 1 for a verified-correct, complete response, else 0 (the paper: no format reward).
    """
    started = time.perf_counter()
    if sampler is None:
        sampler = build_sampler(model, tokenizer, batch_size=batch_size)
    # encode_prompt is exactly how every pretraining document began (question + "\n\n", no BOS).
    prompt_tokens = [encode_prompt(tokenizer, record.prompt) for record in records]
    samples = sampler.generate_tokens(prompt_tokens, [record.id for record in records], n, params)
    generated = time.perf_counter()
    pairs = [(i, sample) for i, row in enumerate(samples) for sample in row]
    grades = grader.grade([sample.text for _, sample in pairs], [records[i].answer for i, _ in pairs], formats)
    rollouts = []
    for (i, sample), grade in zip(pairs, grades, strict=True):
        correct, status = grade.correct, grade.status
        if sample.truncated and correct:
            correct, status = False, "truncated"
        rollouts.append(
            Rollout(
                prompt_id=records[i].id, sample_index=sample.sample_index, prompt_token_ids=prompt_tokens[i],
                token_ids=sample.token_ids, logprobs=sample.logprobs, text=sample.text, format=grade.format,
                answer=grade.answer, status=status, correct=correct, truncated=sample.truncated,
                reward=1.0 if correct else 0.0, paper_format=grade.paper_format,
            )
        )  # fmt: skip
    timings = {"time_generate": generated - started, "time_reward": time.perf_counter() - generated}
    return rollouts, timings


# ---------------------------------------------------------------------------------------------
# The padded batch


@dataclass
class RolloutBatch:
    """One step's samples, N = prompts × G, as right-padded [N, S] tensors."""

    prompt_ids: list[str]
    sample_index: list[int]
    group: torch.Tensor  # [N] group id (0..prompts-1) per sample
    texts: list[str]
    formats: list[str]
    statuses: list[str]
    correct: torch.Tensor  # [N] bool
    rewards: torch.Tensor  # [N] verifier reward after the truncation policy
    truncated: torch.Tensor  # [N] bool
    tokens: torch.Tensor  # [N, S] prompt + response, right-padded with the pad id
    attention_mask: torch.Tensor  # [N, S]
    prompt_length: torch.Tensor  # [N] prompt tokens at the start of each row (one group's rows share them)
    response_mask: torch.Tensor  # [N, S] 1 on sampled response tokens; 0 on prompt, padding, masked samples
    old_logp: torch.Tensor  # [N, S] the sampler's log-probs of tokens[:, s] (0 where response_mask is 0)
    # [N, S] reference log-probs at the same temperature (0 where response_mask is 0); None when the
    # run has no reference pass (KL coefficient 0): nothing then reads or reports a KL to the reference.
    ref_logp: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.prompt_ids)


def sequence_logprobs(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float,
    *,
    wanted: torch.Tensor | None = None,
    shared_prompt: int = 0,
    entropy: bool = True,
    dtype: str = "float32",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """([N, S] log p(tokens[:, s] | tokens[:, :s]) at `temperature`, [N, S] entropy or None).

    Position 0 (nothing predicts it) is 0. The temperature must be the sampler's, so that these
    log-probs and the sampler's describe one distribution (both temper by multiplying the logits
    by 1/T). The entropy is a diagnostic: it carries no gradient. The [rows, vocab] work runs in
    `token_logprobs`, chunk by chunk (benchmarks/bench_logprobs.py against log_softmax + gather).
    Two ways to do less of it, both exact up to float rounding (docs/performance.md measures them):
    - `wanted` ([N, S], e.g. the response mask) marks the log-probs the caller reads: the output
      layer and the [rows, vocab] passes start at the first column any row wants
      (`first_wanted_column`) and the columns before it are 0. A prompt's positions still run
      through every layer (the response attends to them) but predict nothing anyone reads (HF's
      `logits_to_keep`, as TRL does).
    - `shared_prompt` P > 0 says every row starts with the same P tokens (one prompt's samples):
      they run through the model once, and the rows' remaining tokens attend to that one KV cache,
      repeated per row (the gradient flows back through it); columns up to P are then 0.
    `dtype` is the run's precision (`precision.autocast`): the forward runs under its autocast
    (bfloat16 logits are normalised in float32 by token_logprobs); the log-probs are float32 either way.
    """
    if shared_prompt:
        if wanted is not None and first_wanted_column(wanted) < shared_prompt:
            raise ValueError("sequence_logprobs: a shared prompt's own log-probs are not computed")
        return _after_shared_prompt(model, tokens, attention_mask, temperature, shared_prompt, entropy, dtype)
    rows, length = tokens.shape
    first = 1 if wanted is None else first_wanted_column(wanted)
    kept = length - first + 1  # positions first-1 .. S-1: position s predicts token s+1
    with autocast(dtype, tokens.device):
        logits = model(input_ids=tokens, attention_mask=attention_mask, use_cache=False, logits_to_keep=kept).logits
    # The last position predicts nothing (a dummy target, cut below): slicing it off first would
    # copy the whole [N, kept, vocab] tensor.
    targets = F.pad(tokens[:, first:], (0, 1)).flatten()
    logp, entropies = token_logprobs(logits.flatten(0, 1), targets, 1.0 / temperature, entropy)
    logp = F.pad(logp.view(rows, kept)[:, :-1], (first, 0))
    return logp, (F.pad(entropies.view(rows, kept)[:, :-1], (first, 0)) if entropy else None)


def _after_shared_prompt(
    model: torch.nn.Module, tokens: torch.Tensor, attention_mask: torch.Tensor, temperature: float, prompt: int,
    entropy: bool, dtype: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """sequence_logprobs' columns prompt.. when every row starts with the same `prompt` tokens."""
    rows, length = tokens.shape
    name = cache_keyword(model)
    with autocast(dtype, tokens.device):
        head = model(input_ids=tokens[:1, :prompt], attention_mask=attention_mask[:1, :prompt], use_cache=True,
                     logits_to_keep=1)  # fmt: skip
        cache = getattr(head, name)
        cache.batch_repeat_interleave(rows)
        tail = model(input_ids=tokens[:, prompt:], attention_mask=attention_mask, use_cache=True,
                     logits_to_keep=length - prompt, **{name: cache}).logits  # fmt: skip
    scale = 1.0 / temperature
    # Column `prompt` is predicted by the prompt's last position, the later ones by the tail, whose
    # last position predicts nothing (a dummy target, as in sequence_logprobs).
    at_end = token_logprobs(head.logits[0, -1:].expand(rows, -1), tokens[:, prompt], scale, entropy)
    targets = F.pad(tokens[:, prompt + 1 :], (0, 1)).flatten()
    after = token_logprobs(tail.flatten(0, 1), targets, scale, entropy)

    def columns(first: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        return F.pad(torch.cat([first[:, None], rest.view(rows, -1)[:, :-1]], 1), (prompt, 0))

    logp = columns(at_end[0], after[0])
    return logp, (columns(at_end[1], after[1]) if entropy else None)


def first_wanted_column(wanted: torch.Tensor) -> int:
    """The first column of `wanted` ([N, S]) set in any row (at least 1: nothing predicts column 0);
    S when none is, so that only the last position's logits are computed."""
    columns = wanted.any(0).nonzero()
    return max(1, int(columns[0])) if len(columns) else wanted.shape[1]


def micro_batch_rows(
    batch: RolloutBatch, rows: torch.Tensor, size: int, *, share_prompts: bool = True
) -> list[tuple[torch.Tensor, int, int]]:
    """`rows` of `batch` in micro-batches of at most `size` rows: (their indices, the columns they
    are cut to — the longest row's length, since a padding column costs a full forward —, the
    prompt tokens they share and `sequence_logprobs` runs once, or 0). Two plans; the one that
    runs fewer tokens through the model in no more micro-batches is taken (without
    `share_prompts`, for a model that runs whole rows, the first):
    - by length: all rows longest first, then cut. A batch is prompt-major and one prompt's samples
      range from a few tokens to the limit, so micro-batches of consecutive rows carried 3–26 %
      padding (median 10 %) in the quickstart's RL steps, sorted 1–7 % (median 4 %): its update
      and reference passes 1.15x faster (docs/performance.md).
    - by prompt: each group's rows longest first, cut; a micro-batch of one prompt's rows runs that
      prompt once (its rows' tokens after it still pad to the longest). A GRPO step at the small
      preset 1.23-1.25x faster; on the quickstart's batches 18 % fewer tokens but only 1.01-1.02x
      faster, its tiny layers being a small part of the time (docs/performance.md).
    Either only regroups rows: every micro-batch's loss share is normalised by the minibatch's global
    counts (losses.micro_batch_loss), so the sum is the same up to float rounding. The sorts are
    stable, so every rank, and a resumed run, cut the same micro-batches."""
    lengths = batch.attention_mask[rows].sum(1)
    order = torch.sort(lengths, descending=True, stable=True).indices
    by_length = [(rows[part], int(lengths[part[0]]), 0) for part in order.split(size)]
    if not share_prompts:
        return by_length
    by_prompt = []
    groups = batch.group[rows]
    for group in dict.fromkeys(groups.tolist()):  # in order of first appearance
        members = (groups == group).nonzero()[:, 0]
        members = members[torch.sort(lengths[members], descending=True, stable=True).indices]
        for part in members.split(size):
            by_prompt.append((rows[part], int(lengths[part[0]]), _shared_prompt(batch, rows[part])))

    def tokens(plan: list[tuple[torch.Tensor, int, int]]) -> int:
        return sum(len(part) * cols - (len(part) - 1) * shared for part, cols, shared in plan)

    if len(by_prompt) <= len(by_length) and tokens(by_prompt) < tokens(by_length):
        return by_prompt
    return by_length


def _shared_prompt(batch: RolloutBatch, rows: torch.Tensor) -> int:
    """The prompt tokens every one of `rows` starts with (0 for a single row, a mismatch, or rows
    with nothing after the prompt)."""
    prompt = int(batch.prompt_length[rows[0]])
    if len(rows) < 2 or prompt < 1 or (batch.prompt_length[rows] != prompt).any():
        return 0
    if int(batch.attention_mask[rows].sum(1).max()) <= prompt:
        return 0
    heads = batch.tokens[rows, :prompt]
    return prompt if bool((heads == heads[:1]).all()) else 0


def batch_logprobs(
    model: torch.nn.Module, batch: RolloutBatch, temperature: float, micro_batch_size: int, *, dtype: str = "float32"
) -> torch.Tensor:
    """[N, S] `model`'s log-probs of `batch`'s tokens at `temperature`, 0 off the response mask, in
    micro-batches of `micro_batch_size` rows (`micro_batch_rows`) without a graph, in the run's
    precision `dtype`: the reference pass, and the trainer's side of the vLLM log-prob gap."""
    logps = torch.zeros_like(batch.old_logp)
    every_row = torch.arange(len(batch), device=batch.tokens.device)
    with torch.no_grad():
        for rows, cols, shared in micro_batch_rows(batch, every_row, micro_batch_size):
            logp, _ = sequence_logprobs(
                model, batch.tokens[rows, :cols], batch.attention_mask[rows, :cols], temperature,
                wanted=batch.response_mask[rows, :cols], shared_prompt=shared, entropy=False, dtype=dtype,
            )
            logps[rows, :cols] = logp
    return logps * batch.response_mask


def build_batch(
    rollouts: Sequence[Rollout],
    *,
    tokenizer: Any,
    ref: torch.nn.Module | None,
    temperature: float,
    truncation: Literal["zero", "mask"],
    micro_batch_size: int,
    device: torch.device | None = None,
    dtype: str = "float32",
) -> tuple[RolloutBatch, float]:
    """Pad `rollouts` (prompt-major, G per prompt) into a RolloutBatch on `device` (default: `ref`'s),
    and the seconds the reference pass took (in the run's precision `dtype`). Without a reference
    (None) there is no pass: the batch's ref_logp is None and the seconds are 0."""
    if not rollouts:
        raise ValueError("build_batch needs at least one rollout")
    if device is None:
        if ref is None:
            raise ValueError("build_batch needs a device when there is no reference model")
        device = next(ref.parameters()).device
    n = len(rollouts)
    width = max(len(r.prompt_token_ids) + len(r.token_ids) for r in rollouts)
    tokens = torch.full((n, width), pad_token_id(tokenizer), dtype=torch.long)
    attention_mask = torch.zeros(n, width, dtype=torch.long)
    response_mask = torch.zeros(n, width)
    old_logp = torch.zeros(n, width)
    groups: dict[str, int] = {}
    for i, rollout in enumerate(rollouts):
        start, end = len(rollout.prompt_token_ids), len(rollout.prompt_token_ids) + len(rollout.token_ids)
        tokens[i, :end] = torch.tensor(rollout.prompt_token_ids + rollout.token_ids)
        attention_mask[i, :end] = 1
        if not (truncation == "mask" and rollout.truncated):
            response_mask[i, start:end] = 1
            old_logp[i, start:end] = torch.tensor(rollout.logprobs)
        groups.setdefault(rollout.prompt_id, len(groups))
    batch = RolloutBatch(
        prompt_ids=[r.prompt_id for r in rollouts],
        sample_index=[r.sample_index for r in rollouts],
        group=torch.tensor([groups[r.prompt_id] for r in rollouts], device=device),
        texts=[r.text for r in rollouts],
        formats=[r.format for r in rollouts],
        statuses=[r.status for r in rollouts],
        correct=torch.tensor([r.correct for r in rollouts], device=device),
        rewards=torch.tensor([r.reward for r in rollouts], device=device),
        truncated=torch.tensor([r.truncated for r in rollouts], device=device),
        tokens=tokens.to(device),
        attention_mask=attention_mask.to(device),
        prompt_length=torch.tensor([len(r.prompt_token_ids) for r in rollouts], device=device),
        response_mask=response_mask.to(device),
        old_logp=old_logp.to(device),
        ref_logp=None,
    )
    if ref is None:
        return batch, 0.0
    started = time.perf_counter()
    batch.ref_logp = batch_logprobs(ref, batch, temperature, micro_batch_size, dtype=dtype)
    return batch, time.perf_counter() - started


# ---------------------------------------------------------------------------------------------
# Persistence


def write_rollouts(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """rollouts/step_N.jsonl.gz, written to a temp name and renamed: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    # mtime=0: the same rows give byte-identical files (resume tests compare them).
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        for row in rows:
            out.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
    os.replace(tmp, path)


def read_rollouts(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]
