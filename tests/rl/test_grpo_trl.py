"""Our GRPO loss equals TRL's on the same batch, wherever the two definitions coincide.

TRL (a test-only dependency) computes its loss in `GRPOTrainer._compute_loss` from a batch of
prompt/completion ids, advantages, the old and the reference per-token log-probs. The matching
settings: loss_type "grpo" = seq_mean, "bnpo" = token_mean, "dr_grpo" = constant (batch x
max_completion_length); KL k3 added to the per-token loss with coefficient beta (TRL's ratio-weighted
"bias-corrected" k3, its default since 1.x, switched off); symmetric clip epsilon; one iteration, no
gradient accumulation. TRL's group advantage is (r - mean) / (std + 1e-4)
with Bessel's std: our zscore with std_eps=1e-4 and no floor.
"""

from __future__ import annotations

import pytest
import torch

from echochamber.data.tokenizer import pad_token_id, train_bpe
from echochamber.model.presets import build_model
from echochamber.rl.config import GRPOConfig
from echochamber.rl.grpo import group_advantages, grpo_loss
from echochamber.rl.rollout import sequence_logprobs

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

AGGREGATION = {"grpo": "seq_mean", "bnpo": "token_mean", "dr_grpo": "constant"}
PROMPT, COMPLETION, GROUP, TEMPERATURE = 5, 7, 4, 0.7


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    tokenizer = train_bpe(["Tom has 3 apples.", "def simple_math_problem() -> int:", "\\boxed{12}"], vocab_size=300)
    model = build_model("tiny", len(tokenizer), max_seq_len=64, seed=1,
                        pad_token_id=pad_token_id(tokenizer), eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    # With beta > 0 TRL loads its own reference copy from the model's folder (unused here: the
    # batch carries the reference log-probs).
    folder = tmp_path_factory.mktemp("trl") / "model"
    model.save_pretrained(folder)
    model.config._name_or_path = str(folder)
    return model, tokenizer


def _trainer(model, tokenizer, tmp_path, loss_type: str, beta: float, epsilon: float):
    args = trl.GRPOConfig(
        output_dir=str(tmp_path), loss_type=loss_type, beta=beta, epsilon=epsilon, temperature=TEMPERATURE,
        num_generations=GROUP, per_device_train_batch_size=2 * GROUP, max_completion_length=COMPLETION,
        num_iterations=1, gradient_accumulation_steps=1, report_to="none", use_cpu=True, bf16=False,
        # TRL >= 1.x multiplies the k3 term by the ratio by default (DeepSeek-V3.2); the paper's GRPO
        # (and ours) adds plain k3.
        use_bias_correction_kl=False,
    )  # fmt: skip
    trainer = trl.GRPOTrainer(
        model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
        train_dataset=datasets.Dataset.from_dict({"prompt": ["a", "b"]}), processing_class=tokenizer,
    )  # fmt: skip
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which is not running
    return trainer


def _batch(generator: torch.Generator, vocab: int, eos: int) -> dict[str, torch.Tensor]:
    """Two groups of 4: equal-length prompts (no left padding, so positions agree), completions that
    end in EOS at different lengths (right-padded, masked after EOS)."""
    n = 2 * GROUP
    completion_ids = torch.randint(10, vocab - 2, (n, COMPLETION), generator=generator)
    lengths = torch.tensor([7, 3, 5, 1, 6, 7, 2, 4])
    positions = torch.arange(COMPLETION)
    completion_ids[positions == (lengths - 1)[:, None]] = eos
    completion_mask = (positions < lengths[:, None]).long()
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    return {
        "prompt_ids": torch.randint(10, vocab - 2, (n, PROMPT), generator=generator),
        "prompt_mask": torch.ones(n, PROMPT, dtype=torch.long),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "rewards": rewards,
    }


def _trl_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """TRL's group advantage (GRPOTrainer._generate_and_score_completions, scale_rewards="group")."""
    from trl.trainer.utils import nanstd

    grouped = rewards.view(-1, GROUP)
    mean = grouped.mean(1).repeat_interleave(GROUP)
    std = nanstd(grouped, dim=1).repeat_interleave(GROUP)
    return (rewards - mean) / (std + 1e-4)


def test_group_advantages_equal_trls():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    ours, _ = group_advantages(rewards, torch.arange(3).repeat_interleave(GROUP), torch.ones(12, dtype=torch.bool),
                               GRPOConfig(std_eps=1e-4))  # fmt: skip
    torch.testing.assert_close(ours, _trl_advantages(rewards))


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_and_gradient_equal_trls(model_and_tokenizer, tmp_path, loss_type, beta):
    model, tokenizer = model_and_tokenizer
    generator = torch.Generator().manual_seed(3)
    batch = _batch(generator, len(tokenizer), tokenizer.eos_token_id)
    advantages = _trl_advantages(batch["rewards"])
    tokens = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    mask = batch["completion_mask"].float()
    with torch.no_grad():
        current, _ = sequence_logprobs(model, tokens, attention, TEMPERATURE)
    current = current[:, PROMPT:]
    # Old and reference log-probs away from the current ones, so clipping and the KL both act.
    old = current + 0.3 * torch.randn(current.shape, generator=generator)
    ref = current + 0.5 * torch.randn(current.shape, generator=generator)

    trainer = _trainer(model, tokenizer, tmp_path, loss_type, beta, epsilon=0.2)
    inputs = {key: batch[key] for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")}
    inputs.update(advantages=advantages, old_per_token_logps=old, ref_per_token_logps=ref)
    params = [p for p in model.parameters() if p.requires_grad]
    trl_loss = trainer._compute_loss(model, inputs)
    trl_grads = torch.autograd.grad(trl_loss, params)

    config = GRPOConfig(clip=0.2, kl_coef=beta, kl_estimator="k3", kl_placement="loss", aggregation=AGGREGATION[loss_type])
    logp, _ = sequence_logprobs(model, tokens, attention, TEMPERATURE)
    ours, clipped, _ = grpo_loss(logp[:, PROMPT:], old, ref, advantages, mask, config, total_tokens=mask.sum(),
                                 total_sequences=len(mask), max_new_tokens=COMPLETION)  # fmt: skip
    assert float((clipped * mask).sum()) > 0  # the comparison covers clipped tokens
    our_grads = torch.autograd.grad(ours, params)

    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-7)
    for ours_grad, trl_grad in zip(our_grads, trl_grads, strict=True):
        torch.testing.assert_close(ours_grad, trl_grad, rtol=1e-4, atol=1e-6)
