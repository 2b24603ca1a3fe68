"""The project's only way to generate text: batched KV-cache sampling for eval, RL rollouts and EI.

Three properties the RL and eval stages rely on:
- Reproducible per sample: the randomness of sample `i` of prompt `p` is a counter-based hash of
  (seed, prompt id, i, step) turned into one uniform per step and sampled by inverse CDF, so a result
  does not depend on batch size, batch order or which other prompts share the batch.
- Honest log-probs: each token's log-prob is taken from the distribution it was actually drawn from
  (temperature, then top-k, then top-p, renormalised: sampling.py). RL rollouts sample at a
  temperature alone (no top-k/top-p, see rl.config.RolloutConfig), and the trainer recomputes
  log-probs at that temperature (rl.rollout.sequence_logprobs), so the PPO ratio compares like with
  like. Greedy (temperature 0) reports the model's untempered log-probs, since the point mass it
  samples from carries no information.
- EOS handling: a sample that ends in EOS keeps the EOS in `token_ids`/`logprobs` (the policy chose
  to stop; RL must train on that choice) but not in `text`; `truncated` means max_new_tokens (or the
  model's context) ran out first.

The torch backend decodes with `echochamber.model.decoders` (a lean KV-cache forward over an
`OlmoForCausalLM`'s own weights; any other HF causal LM through its own forward), prefills each
distinct prompt once for its n samples, and drops finished rows from the batch. The vLLM backend
(GPU, sampler_vllm.py) sits behind the same interface and is imported only when chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from echochamber.allocator import keep_large_tensors
from echochamber.errors import UserError
from echochamber.model.decoders import Decoder, build_decoder
from echochamber.model.sampling import pick, sample_key
from echochamber.model.sampling_params import SAMPLER_DTYPES, SamplingParams


@dataclass
class Sample:
    prompt_id: str
    sample_index: int
    token_ids: list[int]  # generated tokens, ending in EOS unless truncated
    text: str  # decoded token_ids without the EOS
    logprobs: list[float]  # one per token_ids entry, under the distribution actually sampled from; [] if not asked for
    truncated: bool  # stopped by max_new_tokens / context length, not by EOS


class Sampler(Protocol):
    """n samples per prompt. `generate` takes raw text, tokenized exactly as given (no separator, no
    BOS); a *question* becomes the prompt the model was pretrained on only through
    `data.tokenizer.encode_prompt` + `generate_tokens`, which is what evaluation and RL call."""

    def generate(
        self, prompts: Sequence[str], prompt_ids: Sequence[str], n: int, params: SamplingParams
    ) -> list[list[Sample]]: ...

    def generate_tokens(
        self, prompt_token_ids: Sequence[Sequence[int]], prompt_ids: Sequence[str], n: int, params: SamplingParams
    ) -> list[list[Sample]]: ...


# ---------------------------------------------------------------------------------------------
# The torch sampler


def check_request(prompt_ids: Sequence[str], n_prompts: int, n: int) -> None:
    if len(prompt_ids) != n_prompts:
        raise UserError(f"got {n_prompts} prompts but {len(prompt_ids)} prompt ids")
    if n < 1:
        raise UserError(f"n (samples per prompt) must be >= 1, got {n}")
    if len(set(prompt_ids)) != len(prompt_ids):
        # Equal ids would get equal random streams, i.e. silently identical samples.
        raise UserError("prompt ids must be unique (they seed each sample's randomness)")


def encode_texts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Raw text -> ids exactly as given (no separator, no BOS): what `Sampler.generate` samples after."""
    return [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]


def decode_texts(tokenizer, samples: list[list[Sample]], eos: int | None) -> None:
    flat = [s for row in samples for s in row]
    bodies = [s.token_ids[:-1] if not s.truncated and s.token_ids and s.token_ids[-1] == eos else s.token_ids for s in flat]
    texts = tokenizer.batch_decode(bodies, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    for sample, text in zip(flat, texts, strict=True):
        sample.text = text


@dataclass
class TorchSampler:
    model: PreTrainedModel
    tokenizer: object
    batch_size: int = 256
    progress: bool = False

    def generate(
        self, prompts: Sequence[str], prompt_ids: Sequence[str], n: int, params: SamplingParams
    ) -> list[list[Sample]]:
        return self.generate_tokens(encode_texts(self.tokenizer, prompts), prompt_ids, n, params)

    def generate_tokens(
        self, prompt_token_ids: Sequence[Sequence[int]], prompt_ids: Sequence[str], n: int, params: SamplingParams
    ) -> list[list[Sample]]:
        check_request(prompt_ids, len(prompt_token_ids), n)
        context = self.model.config.max_position_embeddings
        for pid, tokens in zip(prompt_ids, prompt_token_ids, strict=True):
            if not tokens:
                raise UserError(f"prompt {pid!r} is empty (there is no BOS to condition on)")
            if len(tokens) >= context:
                raise UserError(f"prompt {pid!r} has {len(tokens)} tokens; the model's context is {context}")
        eos = None if params.ignore_eos else self.tokenizer.eos_token_id
        # Rows ordered by prompt length so batches carry little padding; results do not depend on it.
        rows = sorted(((p, i) for p in range(len(prompt_ids)) for i in range(n)), key=lambda r: len(prompt_token_ids[r[0]]))
        results: list[list[Sample | None]] = [[None] * n for _ in prompt_ids]
        # Dropping finished rows copies the KV cache into fresh tensors (MiBs each): kept in glibc's
        # heap they reuse their pages instead of being faulted in again (allocator.py).
        keep_large_tensors()
        was_training = self.model.training
        self.model.eval()
        decoder = build_decoder(self.model)
        try:
            with torch.inference_mode(), tqdm(total=len(rows), disable=not self.progress, desc="sampling") as bar:
                for start in range(0, len(rows), self.batch_size):
                    batch = rows[start : start + self.batch_size]
                    for p, sample in _generate_batch(
                        decoder, batch, prompt_token_ids, prompt_ids, params, eos, context, self.model.device
                    ):
                        results[p][sample.sample_index] = sample
                    bar.update(len(batch))
        finally:
            self.model.train(was_training)
        done = [[s for s in row if s is not None] for row in results]
        decode_texts(self.tokenizer, done, eos)
        return done


def _generate_batch(
    decoder: Decoder,
    batch: list[tuple[int, int]],
    prompt_token_ids: Sequence[Sequence[int]],
    prompt_ids: Sequence[str],
    params: SamplingParams,
    eos: int | None,
    context: int,
    device: torch.device,
) -> list[tuple[int, Sample]]:
    """Samples for `batch` ((prompt index, sample index) rows), each paired with its prompt index."""
    # Prefill each distinct prompt once, then copy its cache to its n sample rows.
    unique = sorted({p for p, _ in batch}, key=lambda p: (len(prompt_token_ids[p]), p))  # prefill chunks by length
    local = {p: j for j, p in enumerate(unique)}
    longest = max(len(prompt_token_ids[p]) for p in unique)
    tokens = torch.zeros(len(unique), longest, dtype=torch.long)
    valid = torch.zeros(len(unique), longest, dtype=torch.bool)
    for j, p in enumerate(unique):
        ids = prompt_token_ids[p]
        tokens[j, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        valid[j, longest - len(ids) :] = True
    # Each row may generate until max_new_tokens or the context is full, whichever comes first.
    limits_list = [min(params.max_new_tokens, context - len(prompt_token_ids[p])) for p, _ in batch]
    max_steps = max(limits_list)
    logits = decoder.prefill(tokens.to(device), valid.to(device), capacity=longest + max_steps)
    source = torch.tensor([local[p] for p, _ in batch], device=device)
    decoder.select(source)
    logits = logits.index_select(0, source)

    keys = torch.tensor([sample_key(params.seed, prompt_ids[p], i) for p, i in batch], dtype=torch.long, device=device)
    limits = torch.tensor(limits_list, device=device)
    rows = len(batch)
    out_tokens = torch.zeros(rows, max_steps, dtype=torch.long, device=device)
    out_logprobs = torch.zeros(rows, max_steps if params.logprobs else 0, dtype=torch.float32, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    stopped = torch.zeros(rows, dtype=torch.bool, device=device)
    active = torch.arange(rows, device=device)  # original row of each row still in the decoder
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    for step in range(max_steps):
        token, logprob = pick(logits, keys, step, params)
        # Finished rows still in the batch write past their length; those entries are never read.
        out_tokens[active, step] = token
        if logprob is not None:
            out_logprobs[active, step] = logprob
        hit_eos = (token == eos) if eos is not None else torch.zeros_like(alive)
        finishing = alive & (hit_eos | (step + 1 >= limits))
        lengths[active[finishing]] = step + 1
        stopped[active[finishing & hit_eos]] = True
        alive &= ~finishing
        n_alive = int(alive.sum())  # the one host sync per step
        if n_alive == 0:
            break
        # Drop finished rows once they are an eighth of the batch: the copy costs about one step's
        # cache read, and a long tail then no longer pays for the whole batch.
        if len(alive) - n_alive >= max(1, len(alive) // 8):
            keep = alive.nonzero().squeeze(-1)
            decoder.select(keep)
            active, keys, limits, token = active[keep], keys[keep], limits[keep], token[keep]
            alive = alive[keep]
        logits = decoder.step(token)

    lengths_list, stopped_list = lengths.tolist(), stopped.tolist()
    tokens_list, logprobs_list = out_tokens.tolist(), out_logprobs.tolist()
    placed = []
    for row, (p, i) in enumerate(batch):
        length = lengths_list[row]
        sample = Sample(
            prompt_id=prompt_ids[p],
            sample_index=i,
            token_ids=tokens_list[row][:length],
            text="",
            logprobs=logprobs_list[row][:length],
            truncated=not stopped_list[row],
        )
        placed.append((p, sample))
    return placed


BACKENDS = ("torch", "vllm")


def build_sampler(
    model: PreTrainedModel,
    tokenizer,
    *,
    backend: str = "torch",
    batch_size: int = 256,
    progress: bool = False,
    dtype: str = "auto",
) -> Sampler:
    if backend not in BACKENDS:
        raise UserError(f"unknown sampler backend {backend!r}; known: {', '.join(BACKENDS)}")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    sampler_precision(model, backend, dtype)  # refuses a dtype the backend cannot honour
    if backend == "vllm":
        from echochamber.model.sampler_vllm import build_vllm_sampler

        return build_vllm_sampler(model, tokenizer, progress, dtype=dtype)
    return TorchSampler(model=model, tokenizer=tokenizer, batch_size=batch_size, progress=progress)


def sampler_precision(model: PreTrainedModel | None, backend: str, dtype: str = "auto") -> dict[str, str | None]:
    """{"dtype", "device"} that `build_sampler(model, backend=backend, dtype=dtype)` generates in.

    The rule: "auto" means the weights' own dtype, never a silent down-cast. The torch backend
    samples the model it is given, in its dtype and on its device, so an explicit dtype must be that
    dtype (the caller casts; casting a caller's model here would change, say, its RL policy). The
    vLLM backend is told its dtype explicitly (`sampler_vllm.vllm_dtype`: vLLM's own "auto" would
    run float32 weights in float16) and runs on CUDA. Unknown (None) where no model is given.
    """
    if dtype not in SAMPLER_DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; known: {', '.join(SAMPLER_DTYPES)}")
    if backend == "vllm":
        from echochamber.model.sampler_vllm import vllm_dtype

        resolved = vllm_dtype(model, dtype) if model is not None else None if dtype == "auto" else dtype
        return {"dtype": resolved, "device": "cuda"}
    if model is None:
        return {"dtype": None if dtype == "auto" else dtype, "device": None}
    weights = next(model.parameters())
    own = str(weights.dtype).removeprefix("torch.")
    if dtype not in ("auto", own):
        raise UserError(
            f"the torch backend samples the model in its own dtype ({own}), not {dtype}: "
            "use dtype=auto, or cast the model first (`echochamber eval` does)"
        )
    return {"dtype": own, "device": str(weights.device)}
