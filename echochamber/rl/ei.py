"""Expert Iteration: keep the policy's verified-correct samples and fine-tune on them, round by round.

One round (core samples and grades, then calls `run_round`): from `ei.samples_per_prompt` samples per
prompt keep the verified-correct ones (a truncated sample is never correct), drop exact-duplicate
texts per prompt, and run supervised fine-tuning on what is left — from the base model each round
(`ei.init: base`, the paper's choice) or continuing the policy that sampled (`ei.init: last`).

As in the official code (openrlhf-pretrain `train_ei.py`) a round trains on its own samples only (no
pool across rounds) with a fresh Adam. An SFT example is exactly a pretraining document:
`encode_prompt(question)` + the response text re-encoded as a continuation + EOS (not the sampled
token ids, which need not be the tokenizer's canonical split), and the loss is the token mean of
the response tokens' negative log-likelihood over a whole batch; prompt and padding carry no loss.
Differences from the official code, on purpose: a constant learning rate (it uses a 3 % warm-up and
cosine decay to 10 %, which wastes the first step of the tiny runs a CPU preset makes), and a last
partial batch is trained rather than dropped (kept sets are small here).

The round is a pure function of (policy, rollouts, config.seed, round_index): the shuffle is seeded
per (seed, round, epoch) and nothing reads the global RNG, so resuming at a round boundary
reproduces the run. Under torchrun each rank gets its own prompts' samples; the kept examples are
gathered so every rank sees the same batches, each rank computes its strided share of a batch and
the gradients are summed (`dist.sum_gradients`), which equals the single-process update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from echochamber import dist
from echochamber.data.tokenizer import encode_documents, pad_token_id
from echochamber.formats.registry import format_names
from echochamber.model.precision import set_attention
from echochamber.model.presets import load_model
from echochamber.rl.config import RLConfig
from echochamber.rl.rollout import Rollout, sequence_logprobs


@dataclass(frozen=True)
class SFTExample:
    """One kept response as a training sequence: `tokens[:prompt_length]` is the prompt (no loss)."""

    prompt_id: str
    format: str
    tokens: list[int]  # encode_prompt(question) + response + EOS
    prompt_length: int


def select_kept(rollouts: Sequence[Rollout], *, dedupe: bool) -> list[Rollout]:
    """The verified-correct rollouts, in order; with `dedupe`, only the first of equal texts per prompt.

    The same text for two different prompts is two examples: it answers two questions.
    """
    kept, seen = [], set()
    for rollout in rollouts:
        if not rollout.correct:
            continue
        key = (rollout.prompt_id, rollout.text)
        if dedupe and key in seen:
            continue
        seen.add(key)
        kept.append(rollout)
    return kept


def sft_examples(kept: Sequence[Rollout], tokenizer: Any, max_length: int) -> tuple[list[SFTExample], int]:
    """Training sequences for `kept` and how many were dropped for exceeding `max_length` tokens.

    An empty prompt makes `encode_documents` encode the text as a continuation + EOS, the same way
    it encodes a pretraining solution after its prompt.
    """
    responses = encode_documents(tokenizer, [""] * len(kept), [rollout.text for rollout in kept]) if kept else []
    examples, too_long = [], 0
    for rollout, response in zip(kept, responses, strict=True):
        tokens = rollout.prompt_token_ids + response
        if len(tokens) > max_length:
            too_long += 1
            continue
        examples.append(SFTExample(rollout.prompt_id, rollout.format, tokens, len(rollout.prompt_token_ids)))
    return examples, too_long


def collate(
    examples: Sequence[SFTExample], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (tokens, attention_mask, loss_mask), all [N, S]; loss_mask is 1 on response tokens
    (EOS included) and 0 on the prompt and padding."""
    width = max(len(example.tokens) for example in examples)
    tokens = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(examples), width, dtype=torch.long)
    loss_mask = torch.zeros(len(examples), width)
    for row, example in enumerate(examples):
        tokens[row, : len(example.tokens)] = torch.tensor(example.tokens)
        attention_mask[row, : len(example.tokens)] = 1
        loss_mask[row, example.prompt_length : len(example.tokens)] = 1
    return tokens.to(device), attention_mask.to(device), loss_mask.to(device)


def response_nll(
    model: torch.nn.Module, tokens: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
    dtype: str = "float32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed negative log-likelihood of the response tokens, their summed entropy, detached), at T=1,
    the forward in precision `dtype`."""
    logp, entropy = sequence_logprobs(model, tokens, attention_mask, 1.0, wanted=loss_mask, dtype=dtype)
    assert entropy is not None
    return -(logp * loss_mask).sum(), (entropy.detach() * loss_mask).sum()


def train_sft(
    model: torch.nn.Module, examples: Sequence[SFTExample], pad_id: int, config: RLConfig, round_index: int
) -> dict[str, Any]:
    """`ei.epochs` passes of Adam over `examples` (every rank holds all of them); returns diagnostics.

    Each optimizer step is one batch of `ei.batch_size` sequences; its loss is the batch's summed
    response NLL over its response-token count, accumulated over micro-batches of
    `micro_batch_size` sequences (results do not depend on it beyond float rounding).
    """
    settings = config.ei
    device = next(model.parameters()).device
    rank, world = dist.rank(), dist.world_size()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, betas=(config.betas[0], config.betas[1]), weight_decay=config.weight_decay
    )
    model.train()
    losses, entropies, grad_norms = [], [], []
    for epoch in range(settings.epochs):
        order = np.random.default_rng([config.seed, round_index, epoch]).permutation(len(examples))
        nll_sum = entropy_sum = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = [examples[i] for i in order[start : start + settings.batch_size]]
            batch_tokens = sum(len(e.tokens) - e.prompt_length for e in batch)
            # Longest first within this rank's share: micro-batches of similar length pad little.
            mine = sorted(batch[rank::world], key=lambda e: -len(e.tokens))
            optimizer.zero_grad(set_to_none=True)
            for lo in range(0, len(mine), config.micro_batch_size):
                tokens, attention_mask, loss_mask = collate(mine[lo : lo + config.micro_batch_size], pad_id, device)
                nll, entropy = response_nll(model, tokens, attention_mask, loss_mask, config.dtype)
                (nll / batch_tokens).backward()
                nll_sum += float(nll.detach())
                entropy_sum += float(entropy)
            dist.sum_gradients(model)
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)))
            optimizer.step()
        totals = dist.global_sum(torch.tensor([nll_sum, entropy_sum], dtype=torch.float64, device=device)).tolist()
        epoch_tokens = sum(len(e.tokens) - e.prompt_length for e in examples)
        losses.append(totals[0] / epoch_tokens)
        entropies.append(totals[1] / epoch_tokens)
    model.eval()
    return {
        "sft_loss": losses[-1],  # mean response-token NLL over the last epoch (pre-step weights per batch)
        "sft_loss_by_epoch": losses,
        "entropy": entropies[-1],  # mean over kept response tokens, last epoch's forwards, T=1
        "grad_norm": sum(grad_norms) / len(grad_norms),
        "sft_steps": len(grad_norms),
        "sft_tokens": sum(len(e.tokens) - e.prompt_length for e in examples),  # response tokens per epoch
    }


def run_round(
    round_index: int, policy: PreTrainedModel, rollouts: list[Rollout], tokenizer: Any, config: RLConfig
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """One EI round on this rank's graded `rollouts` (sampled by `policy`): the new policy, on
    `policy`'s device, and the diagnostics core merges into the round's metrics line."""
    settings = config.ei
    device = next(policy.parameters()).device
    correct = sum(rollout.correct for rollout in rollouts)
    kept = select_kept(rollouts, dedupe=settings.dedupe)
    local, too_long = sft_examples(kept, tokenizer, policy.config.max_position_embeddings)
    examples = [SFTExample(**row) for row in dist.gather_rows([asdict(example) for example in local])]
    counts = dist.global_sum(torch.tensor([correct, len(kept), too_long], dtype=torch.float64, device=device)).tolist()

    if settings.init == "base":
        model = set_attention(load_model(config.policy).to(device), config.dtype, device)
    else:
        model = policy
    diagnostics: dict[str, Any] = {
        "ei_init": settings.init,
        "kept_correct": int(counts[0]),  # verified-correct samples
        "kept_duplicates": int(counts[0] - counts[1]),  # dropped by de-duplication
        "kept_too_long": int(counts[2]),  # dropped: longer than the model's context once re-encoded
        "kept": len(examples),  # what the SFT trains on
        "kept_prompts": len({example.prompt_id for example in examples}),
        "kept_format_share": {
            name: sum(e.format == name for e in examples) / len(examples) if examples else None
            for name in format_names(config.formats)
        },
        "lr": settings.lr,
    }
    if examples:
        diagnostics.update(train_sft(model, examples, pad_token_id(tokenizer), config, round_index))
    else:
        # Nothing verified correct: SFT on an empty set leaves its starting point as it was.
        diagnostics.update(sft_loss=None, sft_loss_by_epoch=[], entropy=None, grad_norm=None, sft_steps=0, sft_tokens=0)
    return model, diagnostics
