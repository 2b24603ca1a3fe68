"""Model presets: the paper's OLMo-v1-style decoder, built as a plain Hugging Face `OlmoForCausalLM`.

OLMo v1 (the paper's architecture) has a *non-parametric* LayerNorm, SwiGLU, RoPE and no biases;
transformers' `OlmoForCausalLM` implements exactly that, so a checkpoint is an ordinary
`save_pretrained` folder that `AutoModelForCausalLM.from_pretrained` loads with no echochamber code.

The shapes (`ModelSpec`, `MODEL_PRESETS`) live in `specs.py`, which imports no torch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, OlmoConfig, OlmoForCausalLM, PreTrainedModel
from transformers.utils import logging as hf_logging

from echochamber.errors import UserError
from echochamber.model.specs import ModelSpec, get_spec


def build_model(
    preset: str,
    vocab_size: int,
    *,
    max_seq_len: int | None = None,
    seed: int = 0,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> PreTrainedModel:
    """A freshly initialised float32 `OlmoForCausalLM` of the preset's shape (deterministic in `seed`)."""
    spec = get_spec(preset)
    if vocab_size < 2:
        raise UserError(f"vocab_size must be at least 2, got {vocab_size}")
    seq_len = spec.max_seq_len if max_seq_len is None else max_seq_len
    if seq_len < 1:
        raise UserError(f"max_seq_len must be positive, got {seq_len}")
    for name, token in (("pad_token_id", pad_token_id), ("eos_token_id", eos_token_id)):
        if token is not None and not 0 <= token < vocab_size:
            raise UserError(f"{name}={token} is outside the vocabulary (size {vocab_size})")
    config = OlmoConfig(
        vocab_size=vocab_size,
        hidden_size=spec.d_model,
        intermediate_size=spec.mlp_hidden,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_heads,
        hidden_act="silu",
        max_position_embeddings=seq_len,
        initializer_range=spec.init_std,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        attention_bias=False,
        tie_word_embeddings=spec.tie_embeddings,
        # The embedding's padding_idx gets no gradient; when pad doubles as EOS that would freeze the
        # EOS embedding, so the pad id is recorded only in the generation config then.
        pad_token_id=pad_token_id if pad_token_id != eos_token_id else None,
        eos_token_id=eos_token_id,
        bos_token_id=None,
    )
    # fork_rng: building a model must not move the caller's global RNG stream (training resumes
    # compare RNG states).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OlmoForCausalLM(config)
    model.generation_config.pad_token_id = pad_token_id if pad_token_id is not None else eos_token_id
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.bos_token_id = None
    return model


def load_model(path: str | Path, dtype: torch.dtype | str = torch.float32) -> PreTrainedModel:
    """Any Hugging Face causal-LM folder (ours or a user's), in eval mode, with float32 weights by
    default whatever dtype the checkpoint was saved in; `dtype="auto"` keeps the checkpoint's.

    Float32 because the weights loaded here are trained (RL policy, PPO critic body, the EI model,
    a resumed pretraining) or compared with trained ones (the reference): AdamW moves a weight by
    about lr per step (1e-6 in the paper's RL), far below bfloat16's resolution (a weight of 0.02 is
    stored to steps of 1.2e-4), so a bf16 checkpoint trained as loaded would round every update away.
    Mixed precision is the compute's business (autocast), not the stored weights'.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a Hugging Face model folder (no config.json)")
    # transformers draws a "Loading weights" bar for every load: noise in every stage's output.
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot load model from {folder}: {first_line}") from error
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    model.eval()
    return model


def checkpoint_context(path: str | Path) -> int:
    """The context length (max_position_embeddings) of an HF model folder, from its config alone:
    prompt lengths are checked against it before any weights are loaded."""
    from transformers import AutoConfig

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a Hugging Face model folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot read the model config in {folder}: {first_line}") from error
    return int(config.max_position_embeddings)


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def spec_of(model: PreTrainedModel) -> ModelSpec:
    """The ModelSpec of a loaded Olmo/Llama-style model, read from its config."""
    config = model.config
    return ModelSpec(
        d_model=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        mlp_hidden=config.intermediate_size,
        max_seq_len=config.max_position_embeddings,
        tie_embeddings=bool(config.tie_word_embeddings),
    )


def flops_per_token(
    model_or_spec: PreTrainedModel | ModelSpec, seq_len: int, *, vocab_size: int | None = None
) -> float:
    """Training FLOPs per token (forward + backward), the PaLM/nanochat convention used for MFU.

    6·N over every weight used in a matmul (all layer weights plus the output projection, not the
    embedding lookup) plus 12·L·d·seq_len for the attention scores and weighted sum. Forward-only
    (sampling) cost is a third of this.
    """
    if isinstance(model_or_spec, ModelSpec):
        spec = model_or_spec
        if vocab_size is None:
            raise ValueError("flops_per_token(spec, ...) needs vocab_size")
    else:
        spec = spec_of(model_or_spec)
        vocab_size = model_or_spec.config.vocab_size if vocab_size is None else vocab_size
    d = spec.d_model
    per_layer = 4 * d * d + 3 * d * spec.mlp_hidden  # q, k, v, o + gate, up, down
    matmul_params = spec.n_layers * per_layer + vocab_size * d
    return 6.0 * matmul_params + 12.0 * spec.n_layers * d * seq_len

