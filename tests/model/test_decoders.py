from __future__ import annotations

import pytest
import torch

from echochamber.model import decoders
from echochamber.model.decoders import HFDecoder, OlmoDecoder, build_decoder, has_fast_path
from echochamber.model.presets import build_model

VOCAB = 97


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", VOCAB, max_seq_len=64, seed=4, eos_token_id=0).eval()


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    tokens = torch.zeros(len(prompts), width, dtype=torch.long)
    valid = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, ids in enumerate(prompts):
        tokens[row, width - len(ids) :] = torch.tensor(ids)
        valid[row, width - len(ids) :] = True
    return tokens, valid


def reference_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1]


# HF deprecates the cache's old keyword (gone in transformers 5.40): the decoder passes the one the
# model takes.
@pytest.mark.filterwarnings("error:`past_key_values` is deprecated:FutureWarning")
@pytest.mark.parametrize("decoder_cls", [OlmoDecoder, HFDecoder])
def test_prefill_select_and_steps_give_the_models_own_logits(model, decoder_cls, monkeypatch):
    monkeypatch.setattr(decoders, "_PREFILL_ROWS", 2)  # several length-sorted prefill chunks
    monkeypatch.setattr(decoders, "_GROUP_ROWS", 1)  # and several length groups when decoding
    monkeypatch.setattr(decoders, "_MAX_GROUPS", 3)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in (1, 3, 4, 9, 12)]
    tokens, valid = left_pad(prompts)
    decoder = decoder_cls(model)
    with torch.inference_mode():
        logits = decoder.prefill(tokens, valid, capacity=tokens.shape[1] + 6)
        for ids, row in zip(prompts, logits, strict=True):
            assert torch.allclose(row, reference_logits(model, ids), atol=1e-5)
        # Duplicate one row and drop another, as n-sampling and finished-row removal do.
        rows = [0, 2, 4, 4]
        decoder.select(torch.tensor(rows))
        histories = [list(prompts[r]) for r in rows]
        for step in range(6):  # groups pay off for the first steps only: both attention paths run
            fed = [(7 * step + 3 * i) % (VOCAB - 1) + 1 for i in range(len(rows))]
            logits = decoder.step(torch.tensor(fed))
            for history, token, row in zip(histories, fed, logits, strict=True):
                history.append(token)
                assert torch.allclose(row, reference_logits(model, history), atol=1e-5)


@pytest.mark.parametrize("decoder_cls", [OlmoDecoder, HFDecoder])
def test_step_right_after_prefill(model, decoder_cls):
    prompts = [[5, 6, 7], [8]]
    decoder = decoder_cls(model)
    with torch.inference_mode():
        decoder.prefill(*left_pad(prompts), capacity=5)
        logits = decoder.step(torch.tensor([9, 10]))
    for ids, token, row in zip(prompts, (9, 10), logits, strict=True):
        assert torch.allclose(row, reference_logits(model, [*ids, token]), atol=1e-5)


def test_fast_path_only_for_models_it_reproduces(model):
    assert has_fast_path(model) and isinstance(build_decoder(model), OlmoDecoder)
    biased = build_model("tiny", VOCAB, max_seq_len=64)
    biased.config.attention_bias = True
    assert not has_fast_path(biased) and isinstance(build_decoder(biased), HFDecoder)
