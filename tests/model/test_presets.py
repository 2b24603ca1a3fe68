from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from echochamber.errors import UserError
from echochamber.model.presets import build_model, count_parameters, flops_per_token, load_model
from echochamber.model.specs import MODEL_PRESETS

VOCAB = 4096


def test_paper_presets_have_the_paper_shapes_and_sizes():
    # Built on the meta device: shapes and counts without allocating 4 GB.
    with torch.device("meta"):
        m150 = build_model("150m", 32_000)
        m1b = build_model("1b", 32_000)
    assert (m150.config.hidden_size, m150.config.num_hidden_layers, m150.config.num_attention_heads) == (768, 12, 12)
    assert (m1b.config.hidden_size, m1b.config.num_hidden_layers, m1b.config.num_attention_heads) == (2048, 16, 16)
    assert not m150.config.tie_word_embeddings and m1b.config.tie_word_embeddings
    assert m150.config.intermediate_size == 4 * 768  # 8·d split into gate/up
    assert m150.config.max_position_embeddings == 2048
    assert m150.config.rope_parameters["rope_theta"] == 10_000
    assert 140e6 < count_parameters(m150) < 170e6
    assert 1.0e9 < count_parameters(m1b) < 1.25e9


def test_small_presets_sizes_and_architecture():
    tiny = build_model("tiny", VOCAB)
    small = build_model("small", VOCAB)
    assert 0.7e6 < count_parameters(tiny) < 1.3e6
    assert 5e6 < count_parameters(small) < 10e6
    # OLMo v1: no biases and no LayerNorm weights anywhere (non-parametric norm).
    names = [name for name, _ in tiny.named_parameters()]
    assert not any("bias" in name or "norm" in name for name in names)


def test_build_is_deterministic_in_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_model("tiny", VOCAB, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_model("tiny", VOCAB, seed=1)
    c = build_model("tiny", VOCAB, seed=2)
    wa, wb, wc = (m.model.layers[0].self_attn.q_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_pad_equal_to_eos_does_not_freeze_the_eos_embedding():
    model = build_model("tiny", VOCAB, pad_token_id=0, eos_token_id=0)
    assert model.model.embed_tokens.padding_idx is None
    assert model.model.embed_tokens.weight[0].abs().sum() > 0
    assert model.generation_config.pad_token_id == 0
    distinct = build_model("tiny", VOCAB, pad_token_id=1, eos_token_id=0)
    assert distinct.model.embed_tokens.padding_idx == 1


def test_save_and_load_with_plain_transformers_gives_identical_logits(tmp_path):
    model = build_model("tiny", VOCAB, max_seq_len=128, seed=3, eos_token_id=0, pad_token_id=0).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ours = load_model(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
        assert torch.equal(reloaded(ids).logits, expected)
        assert torch.equal(ours(ids).logits, expected)
    assert type(reloaded).__name__ == "OlmoForCausalLM"


def test_a_bf16_checkpoint_loads_as_float32_and_a_tiny_lr_step_moves_it(tmp_path):
    """AdamW's first step moves every weight with a gradient by ~lr. At lr 1e-6 that is below
    bfloat16's resolution for weights of ~0.02 (steps of 1.2e-4): trained in the saved dtype, the
    update would round away."""
    build_model("tiny", 64, max_seq_len=32, seed=0).to(torch.bfloat16).save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert load_model(tmp_path, dtype="auto").dtype == torch.bfloat16  # the checkpoint's own, on request
    before = [p.detach().clone() for p in model.parameters()]
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0).step()
    moved = [(p != b)[p.grad.abs() > 1e-6] for p, b in zip(model.parameters(), before, strict=True)]
    assert torch.cat(moved).float().mean() > 0.999


def test_loading_draws_no_progress_bar_and_leaves_the_switch_alone(tmp_path, capsys):
    from transformers.utils import logging as hf_logging

    build_model("tiny", VOCAB, max_seq_len=128, eos_token_id=0, pad_token_id=0).save_pretrained(tmp_path)
    capsys.readouterr()
    assert hf_logging.is_progress_bar_enabled()
    load_model(tmp_path)
    assert "Loading weights" not in capsys.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # a user's own loads still show it


def test_bad_input_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="known presets: tiny, mini, small, 150m, 1b"):
        build_model("huge", VOCAB)
    with pytest.raises(UserError, match="outside the vocabulary"):
        build_model("tiny", VOCAB, eos_token_id=VOCAB)
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(UserError, match="no config.json"):
        load_model(tmp_path)
    build_model("tiny", VOCAB).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot load model") as info:
        load_model(tmp_path)
    assert "\n" not in str(info.value)


def test_flops_per_token_counts_matmul_weights_and_attention():
    spec = MODEL_PRESETS["150m"]
    d, layers = spec.d_model, spec.n_layers
    matmul_params = layers * (4 * d * d + 3 * d * spec.mlp_hidden) + 32_000 * d
    assert flops_per_token(spec, 2048, vocab_size=32_000) == 6 * matmul_params + 12 * layers * d * 2048
    tiny = build_model("tiny", VOCAB)
    # Tied model: the embedding doubles as the output projection, so N matches count_parameters.
    assert flops_per_token(tiny, 0) == 6 * count_parameters(tiny)
