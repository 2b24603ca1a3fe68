"""Token log-probs in chunks: the values and gradient of log_softmax + gather, and the chunk sizes."""

from __future__ import annotations

import torch

from echochamber.model.logprobs import (
    ACCELERATOR_CHUNK_BYTES,
    CPU_CHUNK_BYTES,
    chunk_rows_for,
    token_logprobs,
)


def test_token_logprobs_equal_log_softmax_and_its_gradient_across_chunks():
    """The chunked pass against log_softmax + gather and the entropy's
    formula, over rows spanning three chunks with a ragged last one: equal values in float64, a
    hand-written backward that finite differences confirm (gradcheck), the float32 gradient of the
    plain formula, and an entropy that carries no gradient."""
    gen = torch.Generator().manual_seed(0)
    chunk, vocab, scale = 16, 13, 1 / 0.7
    rows = 2 * chunk + 7
    logits = torch.randn(rows, vocab, generator=gen, dtype=torch.float64) * 3
    targets = torch.randint(vocab, (rows,), generator=gen)
    logp, entropy = token_logprobs(logits, targets, scale, chunk_rows=chunk)
    plain = torch.log_softmax(logits * scale, dim=-1)
    torch.testing.assert_close(logp, plain.gather(-1, targets[:, None]).squeeze(-1), rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy, -(plain.exp() * plain).sum(-1), rtol=0, atol=1e-12)
    assert token_logprobs(logits, targets, scale, entropy=False, chunk_rows=chunk)[1].numel() == 0
    torch.testing.assert_close(token_logprobs(logits, targets, scale)[0], logp, rtol=0, atol=1e-12)  # one chunk

    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: token_logprobs(t, targets, scale, chunk_rows=chunk)[0], (x,))
    assert not token_logprobs(x, targets, scale)[1].requires_grad

    upstream = torch.randn(rows, generator=gen)
    ours, theirs = (logits.float().requires_grad_() for _ in range(2))
    token_logprobs(ours, targets, scale, chunk_rows=chunk)[0].backward(upstream)
    torch.log_softmax(theirs * scale, dim=-1).gather(-1, targets[:, None]).squeeze(-1).backward(upstream)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-6)


def test_bfloat16_logits_get_float32_log_probs_and_a_bfloat16_gradient():
    """Under bfloat16 autocast the logits arrive in bfloat16: the pass scales and works in float32
    chunk by chunk (no float32 copy of the whole tensor first) and hands back a gradient in the
    logits' own dtype."""
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(40, 29, generator=gen) * 3).to(torch.bfloat16)
    targets = torch.randint(29, (40,), generator=gen)
    for scale in (1.0, 1 / 0.7):  # a temperature: bfloat16 would round the scaled logits by ~0.05
        x = logits.clone().requires_grad_()
        logp, _ = token_logprobs(x, targets, scale, entropy=False, chunk_rows=16)
        assert logp.dtype == torch.float32
        plain = torch.log_softmax(logits.float() * scale, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
        torch.testing.assert_close(logp, plain, rtol=0, atol=1e-5)
        logp.sum().backward()
        assert x.grad.dtype == torch.bfloat16
        p = torch.softmax(logits.float() * scale, dim=-1)
        expected = scale * (torch.nn.functional.one_hot(targets, 29).float() - p)
        torch.testing.assert_close(x.grad.float(), expected.to(torch.bfloat16).float(), rtol=0, atol=1e-2)


def test_chunks_fit_a_cpu_cache_and_cap_memory_on_an_accelerator():
    """CPU chunks are sized for the cache (a few hundred rows), accelerator chunks for launch count: a 32k
    vocabulary must not be cut into 16-row chunks on a GPU (thousands of launches per pass)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert chunk_rows_for(1024, cpu) * 1024 * 4 == CPU_CHUNK_BYTES == 2 << 20
    assert chunk_rows_for(32768, cpu) == 16
    assert chunk_rows_for(32768, cuda) == ACCELERATOR_CHUNK_BYTES // (4 * 32768) >= 2048
    assert chunk_rows_for(10**9, cpu) == 1  # never zero rows
