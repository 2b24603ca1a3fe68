"""The pretraining config: one-line validation errors, the run length, and the lr schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from echochamber.config import load_config
from echochamber.errors import UserError
from echochamber.pretrain.config import PretrainConfig, lr_multiplier


def tiny_config(out: Path, **overrides: object) -> PretrainConfig:
    values: dict[str, object] = dict(shards=str(out / "shards"), out=str(out), seq_len=32, batch_size=8,
                                     micro_batch_size=4, max_steps=12)  # fmt: skip
    values.update(overrides)
    return load_config(PretrainConfig, base=values)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    factors = [lr_multiplier(s, warmup_steps=10, total_steps=100, min_lr_ratio=0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:10], factors[1:10], strict=False))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert lr_multiplier(100, warmup_steps=10, total_steps=100, min_lr_ratio=0.1) == pytest.approx(0.1)


def test_config_validation(tmp_path):
    with pytest.raises(UserError, match="unknown model preset 'huge'"):
        tiny_config(tmp_path, model="huge")
    with pytest.raises(UserError, match="max_steps or max_tokens, not both"):
        tiny_config(tmp_path, max_tokens=1000)
    with pytest.raises(UserError, match="max_steps, max_tokens or epochs"):
        tiny_config(tmp_path, max_steps=None)
    with pytest.raises(UserError, match="epochs must be > 0"):
        tiny_config(tmp_path, max_steps=None, epochs=0)
    with pytest.raises(UserError, match="not a multiple of micro_batch_size"):
        tiny_config(tmp_path, micro_batch_size=3)
    assert tiny_config(tmp_path, max_steps=None, max_tokens=1000).total_steps() == 4  # ceil(1000/256)


def test_a_length_in_epochs_becomes_tokens_once_the_shards_are_known(tmp_path):
    """1.5 passes over 1000 training tokens at 8 x 32 tokens a step: ceil(1500 / 256) = 6 steps;
    max_steps or max_tokens, when set, win over epochs (a preset's `epochs: 1` with `--set max_steps=2`)."""
    config = tiny_config(tmp_path, max_steps=None, epochs=1.5)
    with pytest.raises(ValueError, match="for_shards"):
        config.total_steps()
    resolved = config.for_shards(1000)
    assert (resolved.max_tokens, resolved.total_steps(), resolved.epochs) == (1500, 6, 1.5)
    assert tiny_config(tmp_path, epochs=1.5).for_shards(1000).total_steps() == 12  # max_steps wins
    assert tiny_config(tmp_path, max_steps=None, max_tokens=512, epochs=3).for_shards(1000).total_steps() == 2
