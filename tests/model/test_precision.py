"""`dtype: auto`: bfloat16 only where the CPU multiplies it natively and torch/oneDNN may use it."""

from __future__ import annotations

import pytest
import torch

from echochamber.config import read_preset
from echochamber.errors import UserError
from echochamber.model import precision
from echochamber.model.precision import cpu_has_native_bf16, resolve_dtype, set_attention
from echochamber.model.presets import build_model

CPU = torch.device("cpu")


def fake_cpu(
    monkeypatch, *, bf16: bool, amx: bool = False, capability: str = "AVX512", isa: str | None = None
) -> None:
    """A CPU with (or without) AVX512-BF16 / AMX, torch's kernel level, and oneDNN's ISA cap."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    if isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)


def test_auto_is_bfloat16_only_on_cpus_with_native_bf16(monkeypatch):
    fake_cpu(monkeypatch, bf16=True)  # Zen 4, Cooper Lake
    assert cpu_has_native_bf16() and resolve_dtype("auto", CPU) == "bfloat16"
    fake_cpu(monkeypatch, bf16=False, amx=True, capability="AVX512")  # Sapphire Rapids
    assert resolve_dtype("auto", CPU) == "bfloat16"
    fake_cpu(monkeypatch, bf16=False)  # AVX-512 without BF16 (Skylake-X)
    assert resolve_dtype("auto", CPU) == "float32"
    fake_cpu(monkeypatch, bf16=False, capability="AVX2")  # AVX2-only
    assert resolve_dtype("auto", CPU) == "float32"


def test_kernels_forced_down_to_avx2_mean_float32(monkeypatch):
    fake_cpu(monkeypatch, bf16=True, capability="AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert resolve_dtype("auto", CPU) == "float32"
    fake_cpu(monkeypatch, bf16=True, isa="AVX2")  # ONEDNN_MAX_CPU_ISA=AVX2
    assert resolve_dtype("auto", CPU) == "float32"
    fake_cpu(monkeypatch, bf16=True, isa="AVX512_CORE")  # AVX-512 without its BF16 extension
    assert resolve_dtype("auto", CPU) == "float32"
    fake_cpu(monkeypatch, bf16=True, isa="avx512_core_bf16")
    assert resolve_dtype("auto", CPU) == "bfloat16"


def test_explicit_dtypes_are_kept_and_unknown_ones_refused(monkeypatch):
    fake_cpu(monkeypatch, bf16=False, capability="AVX2")
    assert resolve_dtype("bfloat16", CPU) == "bfloat16"
    fake_cpu(monkeypatch, bf16=True)
    assert resolve_dtype("float32", CPU) == "float32"
    with pytest.raises(UserError, match="unknown dtype 'float16'"):
        resolve_dtype("float16", CPU)
    assert precision.DTYPES == ("auto", "float32", "bfloat16")


@pytest.mark.parametrize("preset", ["quickstart"])
def test_science_presets_pin_float32(preset):
    """Their numbers are compared across machines (seeds are the unit of replication): bfloat16 on
    AVX-512 machines and float32 on AVX2 ones would differ by more than float rounding."""
    study = read_preset("study", preset, "study")
    assert study["pretrain"]["dtype"] == "float32"
    assert study["rl"]["dtype"] == "float32"


def test_bfloat16_on_a_cpu_trains_with_eager_attention_which_computes_what_sdpa_does(monkeypatch):
    """The attention kernel is a speed choice (CPU flash attention is slow in bfloat16), not a
    change of what is computed: in float32 both kernels give the same logits."""
    model = build_model("tiny", 64, max_seq_len=32, seed=0)
    tokens = torch.randint(0, 64, (3, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(tokens)
    mask[0, 15:] = 0  # a padded row
    assert set_attention(model, "float32", CPU).config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa = model(input_ids=tokens, attention_mask=mask).logits
    assert set_attention(model, "bfloat16", CPU).config._attn_implementation == "eager"
    with torch.no_grad():
        eager = model(input_ids=tokens, attention_mask=mask).logits
    torch.testing.assert_close(eager[mask.bool()], sdpa[mask.bool()], rtol=1e-4, atol=1e-5)
    fake_cpu(monkeypatch, bf16=False, capability="AVX2")  # "auto" is float32 there
    assert set_attention(model, "auto", CPU).config._attn_implementation == "sdpa"
