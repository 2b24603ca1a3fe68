"""Forward passes for sampling: prefill a left-padded batch of prompts, then one token per step
over a KV cache, with rows selectable (duplicated for n samples, dropped when finished).

`OlmoDecoder` is a lean inference forward over an `OlmoForCausalLM`'s own weights (fused qkv and
gate/up projections, a preallocated cache, prompts prefilled in length-sorted chunks), written for
the project's presets; `HFDecoder` runs any HF causal LM through its own forward and DynamicCache.
Both give the HF model's logits; the fast one is chosen whenever it reproduces the model exactly.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch
import torch.nn.functional as F
from transformers import OlmoForCausalLM, PreTrainedModel


class Decoder(Protocol):
    def prefill(self, tokens: torch.Tensor, valid: torch.Tensor, capacity: int) -> torch.Tensor:
        """(rows, P) left-padded prompts, rows sorted by length, `valid` marking real tokens; a cache
        for `capacity` positions per row. Returns float32 logits (rows, vocab) after each prompt."""
        ...

    def select(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) these cache rows, in this order."""
        ...

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; returns float32 logits (rows, vocab) for the next one."""
        ...


_PREFILL_ROWS = 32
_MAX_GROUPS = 4  # length groups for decode attention
_GROUP_ROWS = 16  # ... of at least this many rows


class OlmoDecoder:
    """Inference-only forward over an OlmoForCausalLM's weights (non-parametric LayerNorm, SwiGLU, RoPE).

    Weights are fused copies taken at construction: build a new decoder after every optimiser step.
    """

    def __init__(self, model: OlmoForCausalLM) -> None:
        config = model.config
        self.n_heads = config.num_attention_heads
        self.d_model = config.hidden_size
        self.head_dim = self.d_model // self.n_heads
        self.clip_qkv = config.clip_qkv
        self.embed = model.get_input_embeddings().weight
        self.head = model.get_output_embeddings().weight
        self.layers = [
            (
                torch.cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight]),
                layer.self_attn.o_proj.weight,
                torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]),
                layer.mlp.down_proj.weight,
            )
            for layer in model.model.layers
        ]
        theta = config.rope_parameters["rope_theta"]
        device = self.embed.device
        # Same float32 arithmetic as HF's OlmoRotaryEmbedding, so cos/sin match it bit for bit.
        inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim))
        positions = torch.arange(config.max_position_embeddings, device=device).float()
        freqs = positions[:, None] * inv_freq[None, :]
        angles = torch.cat([freqs, freqs], dim=-1)
        self.cos, self.sin = angles.cos().to(self.embed.dtype), angles.sin().to(self.embed.dtype)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), (self.d_model,), eps=1e-5).to(x.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _layers(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor, start: int, *,
        rows: slice = slice(None), read_from: int = 0, groups: list[tuple[slice, int]] | None = None,
    ) -> torch.Tensor:
        """Run every layer on x (B, T, d) for cache `rows`, writing slots start..start+T-1 and
        attending over slots read_from..start+T-1, which `mask` covers — or, with `groups`
        ((rows, first slot) pairs covering the batch in order), each group from its own first slot."""
        batch, length, _ = x.shape
        end = start + length
        for (w_qkv, w_o, w_gate_up, w_down), k_cache, v_cache in zip(self.layers, self.k_cache, self.v_cache, strict=True):
            qkv = F.linear(self._norm(x), w_qkv).view(batch, length, 3, self.n_heads, self.head_dim)
            if self.clip_qkv is not None:
                qkv = qkv.clamp(-self.clip_qkv, self.clip_qkv)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, hd)
            k_cache[rows, :, start:end] = self._rope(k, cos, sin)
            v_cache[rows, :, start:end] = v
            q = self._rope(q, cos, sin)
            if groups is None:
                attention = F.scaled_dot_product_attention(
                    q, k_cache[rows, :, read_from:end], v_cache[rows, :, read_from:end], attn_mask=mask
                )
            else:
                attention = torch.cat([
                    F.scaled_dot_product_attention(
                        q[group], k_cache[group, :, first:end], v_cache[group, :, first:end],
                        attn_mask=mask[group, ..., first - read_from :],
                    )
                    for group, first in groups
                ])
            x = x + F.linear(attention.transpose(1, 2).reshape(batch, length, self.d_model), w_o)
            gate, up = F.linear(self._norm(x), w_gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w_down)
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._norm(x), self.head).float()

    def prefill(self, tokens: torch.Tensor, valid: torch.Tensor, capacity: int) -> torch.Tensor:
        """Left-padded prompts (rows sorted by length) -> last-position logits; fills the cache."""
        rows, length = tokens.shape
        # The prompt slots only; the first select (or step) grows the cache to `capacity`. Zeros, not
        # garbage: padding slots a chunk never writes are masked, but NaN garbage would still poison
        # the attention output (0 weight × NaN).
        shape = (rows, self.n_heads, length, self.head_dim)
        self.k_cache = [self.embed.new_zeros(shape) for _ in self.layers]
        self.v_cache = [self.embed.new_zeros(shape) for _ in self.layers]
        self.capacity = capacity
        self.valid = torch.zeros(rows, capacity, dtype=torch.bool, device=tokens.device)
        self.valid[:, :length] = valid
        lengths = valid.sum(dim=1)
        logits = []
        # Chunks of similar-length prompts, each padded only to its own longest prompt.
        for first in range(0, rows, _PREFILL_ROWS):
            chunk = slice(first, first + _PREFILL_ROWS)
            span = int(lengths[chunk].max())
            start = length - span
            chunk_valid = valid[chunk, start:]
            positions = (chunk_valid.cumsum(dim=1) - 1).clamp(min=0)
            causal = torch.ones(span, span, dtype=torch.bool, device=tokens.device).tril()
            # Padding queries attend to themselves only, so no softmax row is empty (NaN); their
            # outputs are never read and their cache slots are masked for every real query.
            mask = (causal & chunk_valid[:, None, :]) | torch.eye(span, dtype=torch.bool, device=tokens.device)
            cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
            x = F.embedding(tokens[chunk, start:], self.embed)
            x = self._layers(x, cos, sin, mask.unsqueeze(1), start, rows=chunk, read_from=start)
            logits.append(self._logits(x[:, -1]))
        self.next_position = lengths
        self.slot = length
        self.groups = self._length_groups()
        return torch.cat(logits)

    def select(self, rows: torch.Tensor) -> None:
        self.k_cache = [self._take(cache, rows) for cache in self.k_cache]
        self.v_cache = [self._take(cache, rows) for cache in self.v_cache]
        self.valid = self.valid.index_select(0, rows)
        self.next_position = self.next_position.index_select(0, rows)
        self.groups = self._length_groups()

    def _take(self, cache: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if cache.shape[2] == self.capacity:
            return cache.index_select(0, rows)
        # Growing out of prefill: slots past the prompts are always written before they are read.
        grown = cache.new_empty(len(rows), self.n_heads, self.capacity, self.head_dim)
        grown[:, :, : cache.shape[2]] = cache.index_select(0, rows)
        return grown

    def _length_groups(self) -> list[tuple[slice, int]]:
        """Split the rows into a few groups of similar prompt length, each reading the cache from its
        own first real slot: short prompts then skip the padding a long prompt forced on the batch
        (decoding is bound by reading the cache)."""
        rows = len(self.next_position)
        first_valid = (self.slot - self.next_position).tolist()  # left padding of each row
        size = max(_GROUP_ROWS, -(-rows // _MAX_GROUPS))
        return [(slice(a, a + size), min(first_valid[a : a + size])) for a in range(0, rows, size)]

    def _read_plan(self, end: int) -> tuple[list[tuple[slice, int]] | None, int]:
        """(the length groups, or None while they would not save a quarter of the cache reads; the
        first slot any row needs). Each extra attention call costs a little, and the saving shrinks
        as the generation grows."""
        first = min(start for _, start in self.groups)
        rows = len(self.next_position)
        grouped = sum(len(range(*group.indices(rows))) * (end - start) for group, start in self.groups)
        return (self.groups if grouped < 0.75 * rows * (end - first) else None), first

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.k_cache[0].shape[2] < self.capacity:
            self.select(torch.arange(len(tokens), device=tokens.device))
        slot = self.slot
        self.valid[:, slot] = True
        cos = self.cos[self.next_position][:, None, None, :]
        sin = self.sin[self.next_position][:, None, None, :]
        groups, first = self._read_plan(slot + 1)
        mask = self.valid[:, None, None, first : slot + 1]
        x = self._layers(
            F.embedding(tokens, self.embed).unsqueeze(1), cos, sin, mask, slot, read_from=first, groups=groups
        )
        self.next_position = self.next_position + 1
        self.slot = slot + 1
        return self._logits(x[:, 0])


def has_fast_path(model: PreTrainedModel) -> bool:
    """Whether OlmoDecoder reproduces this model's forward exactly (the presets always qualify)."""
    config = model.config
    return (
        isinstance(model, OlmoForCausalLM)
        and not config.attention_bias
        and config.hidden_act == "silu"
        and config.num_key_value_heads == config.num_attention_heads
        and config.rope_parameters.get("rope_type", "default") == "default"
    )


class HFDecoder:
    """Any HF causal LM through its own forward and DynamicCache: the portable, slower path."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.cache_keyword = cache_keyword(model)

    def prefill(self, tokens: torch.Tensor, valid: torch.Tensor, capacity: int) -> torch.Tensor:
        self.attention_mask = valid.long()
        positions = (valid.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(input_ids=tokens, attention_mask=self.attention_mask, position_ids=positions, use_cache=True)
        self.cache = getattr(out, self.cache_keyword)
        self.next_position = valid.sum(dim=1)
        return out.logits[:, -1].float()

    def select(self, rows: torch.Tensor) -> None:
        self.cache.reorder_cache(rows)
        self.attention_mask = self.attention_mask.index_select(0, rows)
        self.next_position = self.next_position.index_select(0, rows)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        ones = self.attention_mask.new_ones(len(tokens), 1)
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.attention_mask,
            position_ids=self.next_position[:, None],
            use_cache=True,
            **{self.cache_keyword: self.cache},
        )
        self.cache = getattr(out, self.cache_keyword)
        self.next_position = self.next_position + 1
        return out.logits[:, -1].float()


def cache_keyword(model: torch.nn.Module) -> str:
    """The name under which `model.forward` takes (and its output returns) a KV cache: HF is renaming
    `past_key_values` to `cache` (5.x deprecates the old name, to be removed in 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def build_decoder(model: PreTrainedModel) -> Decoder:
    """A decoder over the model's current weights (build a new one after each optimiser step)."""
    return OlmoDecoder(model) if has_fast_path(model) else HFDecoder(model)
