"""The project's only way to generate text: batched KV-cache sampling for eval, RL rollouts and EI.

Three properties the RL and eval stages rely on:
- Reproducible per sample: the randomness of sample `i` of prompt `p` is a counter-based hash of
  (seed, prompt id, i, step) turned into one uniform per step and sampled by inverse CDF, so a result
  does not depend on batch size, batch order or which other prompts share the batch.
- Honest log-probs: each token's log-prob is taken from the distribution it was actually drawn from
  (temperature, then top-k, then top-p, renormalised). `sampling_logprobs` is that same transform for
  the trainer, so the PPO ratio compares like with like. Greedy (temperature 0) reports the model's
  untempered log-probs, since the point mass it samples from carries no information.
- EOS handling: a sample that ends in EOS keeps the EOS in `token_ids`/`logprobs` (the policy chose
  to stop; RL must train on that choice) but not in `text`; `truncated` means max_new_tokens (or the
  model's context) ran out first.

The torch backend decodes with `echochamber.model.decoders` (a lean KV-cache forward over an
`OlmoForCausalLM`'s own weights; any other HF causal LM through its own forward), prefills each
distinct prompt once for its n samples, and drops finished rows from the batch. The vLLM backend
(GPU, sampler_vllm.py) sits behind the same interface and is imported only when chosen.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from echochamber.errors import UserError
from echochamber.model.decoders import Decoder, build_decoder


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    max_new_tokens: int = 256
    seed: int = 0
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks)

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise UserError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise UserError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Sample:
    prompt_id: str
    sample_index: int
    token_ids: list[int]  # generated tokens, ending in EOS unless truncated
    text: str  # decoded token_ids without the EOS
    logprobs: list[float]  # one per token_ids entry, under the distribution actually sampled from
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
# The sampling distribution (shared with the trainer) and counter-based randomness


_NUCLEUS_MAX_BINS = 1024
_NUCLEUS_MAX_CANDIDATES = 256


@dataclass
class _Tempered:
    """Rows of logits after temperature and top-k, kept unnormalised to save passes over the vocab."""

    logits: torch.Tensor  # (rows, vocab) float32, -inf outside top-k
    high: torch.Tensor  # (rows, 1) row max
    low: torch.Tensor  # (rows, 1) smallest finite value
    weights: torch.Tensor  # exp(logits - high): the probabilities up to a per-row factor


def _temper(logits: torch.Tensor, params: SamplingParams) -> _Tempered:
    """Temperature, then top-k keeping ties with the k-th value (HF's order and rule)."""
    x = logits.float() * (1.0 / params.temperature)
    if 0 < params.top_k < x.shape[-1]:
        top = torch.topk(x, params.top_k, dim=-1).values
        high, low = top[:, :1], top[:, -1:]
        x.masked_fill_(x < low, -math.inf)
    else:
        high, low = x.amax(dim=-1, keepdim=True), x.amin(dim=-1, keepdim=True)
    return _Tempered(x, high, low, (x - high).exp_())


@dataclass
class _Nucleus:
    """Top-p set per row: kept iff bins >= lowest_kept_bin or logit > best_removed."""

    bins: torch.Tensor  # (rows, vocab) histogram bin of each token, monotone in its logit
    lowest_kept_bin: torch.Tensor  # (rows, 1)
    best_removed: torch.Tensor  # (rows, 1) largest removed logit of the boundary bin (+inf: none)
    kept_weight: torch.Tensor  # (rows, 1) total weight of the kept tokens

    def keeps(self, rows: torch.Tensor, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Whether each (row, token) pair is in the nucleus, without building the vocab-wide mask."""
        return (self.bins[rows, tokens] >= self.lowest_kept_bin[rows, 0]) | (
            logits[rows, tokens] > self.best_removed[rows, 0]
        )

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        return ((self.bins >= self.lowest_kept_bin) | (logits > self.best_removed)) & (logits > -math.inf)


def _nucleus(t: _Tempered, top_p: float) -> _Nucleus | None:
    """Top-p: keep a token iff the mass of strictly more probable tokens is < top_p.

    HF's TopPLogitsWarper rule (the most likely token is always kept; tied tokens share one fate)
    without sorting the vocabulary, which costs ~40 ms per step for 128 rows × 4k tokens on this CPU.
    Tokens go into histogram bins by logit; the bins' masses locate the one bin where the cumulative
    mass crosses top_p, and only that bin's few tokens are compared pairwise. None when that bin
    holds too many near-ties to compare pairwise (the caller sorts instead).
    """
    x, weights = t.logits, t.weights
    rows, vocab = x.shape
    n_bins = min(_NUCLEUS_MAX_BINS, max(16, vocab // 4))  # a few tokens per bin on average
    scale = (n_bins - 0.5) / (t.high - t.low).clamp(min=1e-12)
    # Monotone in the logit, so a more probable token never lands in a lower bin; -inf -> bin 0.
    bins = torch.sub(x, t.low).mul_(scale).clamp_(min=0).long()
    mass = weights.new_zeros(rows, n_bins + 1).scatter_add_(1, bins, weights)
    mass_from = mass.flip(-1).cumsum(-1).flip(-1)  # mass_from[:, b]: mass in bins >= b (0 at b = bins)
    threshold = top_p * mass_from[:, :1]
    boundary = (mass_from >= threshold).sum(dim=-1, keepdim=True) - 1  # -1: rounding left total < top_p

    row, col = (bins == boundary).nonzero(as_tuple=True)  # the boundary bin's tokens, by row
    counts = torch.bincount(row, minlength=rows)
    width = max(int(counts.max()) if len(row) else 0, 1)
    if width > _NUCLEUS_MAX_CANDIDATES:
        return None
    position = torch.arange(len(row), device=x.device) - (counts.cumsum(0) - counts)[row]
    candidates = x.new_full((rows, width), -math.inf)
    candidates[row, position] = x[row, col]
    candidate_weights = weights.new_zeros(rows, width)
    candidate_weights[row, position] = weights[row, col]
    above_in_bin = (candidate_weights[:, None, :] * (candidates[:, None, :] > candidates[:, :, None])).sum(-1)
    above = mass_from.gather(1, (boundary + 1).clamp(min=0)) + above_in_bin
    removed = (above >= threshold) & (candidates > -math.inf)
    any_removed = removed.any(dim=-1, keepdim=True)
    best_removed = torch.where(any_removed, torch.where(removed, candidates, -math.inf).amax(-1, keepdim=True), math.inf)
    lowest_kept_bin = torch.where(any_removed, boundary + 1, boundary)
    kept_in_bin = (candidate_weights * (candidates > best_removed)).sum(-1, keepdim=True)
    kept_weight = mass_from.gather(1, lowest_kept_bin.clamp(min=0)) + kept_in_bin
    return _Nucleus(bins, lowest_kept_bin, best_removed, kept_weight)


def _nucleus_mask_sorted(x: torch.Tensor, weights: torch.Tensor, top_p: float) -> torch.Tensor:
    """The same rule by a full sort: a tie group shares the mass above its first member."""
    values, order = torch.sort(x, dim=-1, descending=True)
    sorted_weights = weights.gather(1, order)
    above = sorted_weights.cumsum(-1) - sorted_weights
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    above = torch.where(starts, above, 0).cummax(dim=-1).values
    keep_sorted = (above < top_p * sorted_weights.sum(-1, keepdim=True)) & (values > -math.inf)
    return torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)


def _top_p_mask(t: _Tempered, top_p: float) -> torch.Tensor:
    nucleus = _nucleus(t, top_p)
    return nucleus.mask(t.logits) if nucleus is not None else _nucleus_mask_sorted(t.logits, t.weights, top_p)


def sampling_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Log-probs (…, vocab) of the distribution the sampler draws from given these logits.

    Temperature, then top-k, then top-p, renormalised; filtered tokens get -inf. The trainer calls
    this on its own forward pass so that log-prob ratios use exactly the sampler's transform.
    Greedy (temperature 0) returns the untempered log-probs.
    """
    shape = logits.shape
    if params.greedy:
        return torch.log_softmax(logits.float(), dim=-1)
    t = _temper(logits.reshape(-1, shape[-1]), params)
    x = t.logits if params.top_p >= 1 else t.logits.masked_fill(~_top_p_mask(t, params.top_p), -math.inf)
    return torch.log_softmax(x, dim=-1).reshape(shape)


_MASK64 = (1 << 64) - 1


def _signed64(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_MIX1 = _signed64(0xBF58476D1CE4E5B9)
_MIX2 = _signed64(0x94D049BB133111EB)


def sample_key(seed: int, prompt_id: str, sample_index: int) -> int:
    """A 64-bit key naming one sample's random stream (length-prefixed so ids cannot collide)."""
    text = f"{seed}:{len(prompt_id)}:{prompt_id}:{sample_index}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little", signed=True)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    # torch's >> on int64 is arithmetic; the mask makes it the logical shift splitmix64 needs.
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def uniforms(keys: torch.Tensor, counter: int) -> torch.Tensor:
    """One float64 uniform in [0, 1) per key: splitmix64(key + (counter+1)·golden), a counter-based
    generator (the same key and counter always give the same number, whatever else is computed).

    int64 multiplication wraps modulo 2^64 in torch, which is the arithmetic splitmix64 is defined in.
    """
    z = keys + _signed64((counter + 1) * 0x9E3779B97F4A7C15)
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    z = z ^ _shift_right(z, 31)
    return _shift_right(z, 11).double() * (1.0 / (1 << 53))


_DRAWS_PER_STEP = 9  # uniforms reserved per (sample, step): up to 8 rejection rounds + 1 fallback


def _inverse_cdf(cdf: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Index drawn with probability ∝ the cdf's increments, one uniform per row (zero weights never drawn)."""
    total = cdf[:, -1:]
    index = torch.searchsorted(cdf, (uniform.unsqueeze(-1) * total).float(), right=True)
    # float32 rounding can put the target at the total: fall back to the last token with weight.
    return torch.minimum(index, torch.searchsorted(cdf, total.contiguous())).squeeze(-1)


def _pick(
    logits: torch.Tensor, keys: torch.Tensor, step: int, params: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token per row and its log-prob under the sampling distribution.

    Inverse CDF with one counter-based uniform per row: batch-independent and far cheaper than
    Gumbel-max (one hash per row, not per vocab entry). Top-p is sampled by rejection from the
    tempered distribution — a draw outside the nucleus is redrawn with the next uniform — which is
    exact and skips building the vocab-wide mask; rows still unlucky after 8 rounds (or when top-p
    < 0.5 makes rejection slow) sample from the masked distribution.
    """
    if params.greedy:
        index = logits.argmax(dim=-1, keepdim=True)
        return index.squeeze(-1), (logits.gather(-1, index) - logits.logsumexp(dim=-1, keepdim=True)).squeeze(-1)
    t = _temper(logits, params)
    counter = step * _DRAWS_PER_STEP
    cdf = t.weights.cumsum(dim=-1)
    if params.top_p >= 1:
        token = _inverse_cdf(cdf, uniforms(keys, counter))
        kept_weight = cdf[:, -1]
    else:
        nucleus = _nucleus(t, params.top_p)
        rounds = _DRAWS_PER_STEP - 1 if nucleus is not None and params.top_p >= 0.5 else 0
        token = torch.zeros(len(keys), dtype=torch.long, device=keys.device)
        pending = torch.arange(len(keys), device=keys.device)
        for draw in range(rounds):
            rows_cdf = cdf if draw == 0 else cdf[pending]
            drawn = _inverse_cdf(rows_cdf, uniforms(keys[pending], counter + draw))
            accepted = nucleus.keeps(pending, drawn, t.logits)
            token[pending[accepted]] = drawn[accepted]
            pending = pending[~accepted]
            if len(pending) == 0:
                break
        if len(pending):
            sub = _Tempered(t.logits[pending], t.high[pending], t.low[pending], t.weights[pending])
            masked = torch.where(_top_p_mask(sub, params.top_p), sub.weights, 0)
            token[pending] = _inverse_cdf(masked.cumsum(-1), uniforms(keys[pending], counter + _DRAWS_PER_STEP - 1))
        if nucleus is not None:
            kept_weight = nucleus.kept_weight.squeeze(-1)
        else:
            kept_weight = torch.where(_nucleus_mask_sorted(t.logits, t.weights, params.top_p), t.weights, 0).sum(-1)
    logprob = t.logits.gather(-1, token[:, None]).squeeze(-1) - t.high.squeeze(-1) - kept_weight.log()
    return token, logprob


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
    out_logprobs = torch.zeros(rows, max_steps, dtype=torch.float32, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    stopped = torch.zeros(rows, dtype=torch.bool, device=device)
    active = torch.arange(rows, device=device)  # original row of each row still in the decoder
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    for step in range(max_steps):
        token, logprob = _pick(logits, keys, step, params)
        # Finished rows still in the batch write past their length; those entries are never read.
        out_tokens[active, step] = token
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
# The precision a sampler computes in: "auto" is the weights' own dtype (see sampler_precision).
DTYPES = ("auto", "float32", "bfloat16", "float16")


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
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
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
