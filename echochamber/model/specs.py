"""The model presets' shapes: plain data that configs validate against without importing torch.

SwiGLU width: the paper's "hidden 8·d split into gate/up" is OLMo's `mlp_ratio=8` projection whose
output is halved by the gating, i.e. gate and up are each 4·d wide. `ModelSpec.mlp_hidden` is that
per-branch width (HF `intermediate_size`), so 150M ≈ 162M and 1B ≈ 1.18B parameters with a 32k vocab.
`presets.py` builds and loads the models; this module is apart so that a config error (an unknown
preset) is reported before torch and transformers are imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from echochamber.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of one preset; the vocabulary comes from the tokenizer, not from here."""

    d_model: int
    n_layers: int
    n_heads: int
    mlp_hidden: int  # width of each SwiGLU branch (gate and up): HF intermediate_size
    max_seq_len: int
    tie_embeddings: bool
    rope_theta: float = 10_000.0
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


MODEL_PRESETS: dict[str, ModelSpec] = {
    # ≈1M parameters with a ~4k vocabulary: unit tests and CPU studies.
    "tiny": ModelSpec(d_model=96, n_layers=4, n_heads=4, mlp_hidden=384, max_seq_len=512, tie_embeddings=True),
    # ≈2.6M parameters with a 1k vocabulary (3.8x tiny): the second size of the CPU model-size axis,
    # pretraining the quickstart's 4.9M tokens in under 20 minutes on 2 cores (docs/model-size.md).
    "mini": ModelSpec(d_model=160, n_layers=6, n_heads=4, mlp_hidden=640, max_seq_len=512, tie_embeddings=True),
    # ≈7M parameters with a ~4k vocabulary: CPU studies where tiny cannot learn the task.
    "small": ModelSpec(d_model=256, n_layers=6, n_heads=8, mlp_hidden=1024, max_seq_len=1024, tie_embeddings=True),
    # The paper's shapes.
    "150m": ModelSpec(d_model=768, n_layers=12, n_heads=12, mlp_hidden=3072, max_seq_len=2048, tie_embeddings=False),
    "1b": ModelSpec(d_model=2048, n_layers=16, n_heads=16, mlp_hidden=8192, max_seq_len=2048, tie_embeddings=True),
}


def get_spec(preset: str) -> ModelSpec:
    if preset not in MODEL_PRESETS:
        raise UserError(f"unknown model preset {preset!r}; known presets: {', '.join(MODEL_PRESETS)}")
    return MODEL_PRESETS[preset]
