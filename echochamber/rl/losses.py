"""The pieces every RL update shares: KL estimators, clipped losses, loss aggregation, per-token
rewards, GAE and returns-to-go.

Plain tensor functions, each checked against its closed form in tests/rl/test_losses.py. The
algorithm files (ppo.py, grpo.py, reinforce.py, ei.py) compose them; nothing here knows which algorithm runs.

Log-probs come from one place, `rollout.sequence_logprobs` (a forward at the sampler's temperature).
Shapes: `[B, T]` over response tokens; `mask` is 1 on tokens the policy actually sampled (never on
padding, prompt, or tokens after EOS).
"""

from __future__ import annotations

import torch

from echochamber.rl.config import Aggregation, KLEstimator

KL_ESTIMATORS: tuple[KLEstimator, ...] = ("k1", "k2", "k3")


def masked_log_ratio(numerator: torch.Tensor, denominator: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """numerator - denominator on the mask, exactly 0 off it: the one safe input to an `exp`.

    Off the mask the log-probs are fillers (0 for the reference and the sampler, whatever the policy
    gives a pad or prompt token), so their difference can be +100 or more; e^100 is inf in float32
    and inf * 0 (the mask) is NaN, in the loss and in the gradient. Multiplying by the mask after the
    exp is too late, so the ratio is zeroed before (`where`, not `* mask`: inf * 0 would be NaN here too).
    """
    return torch.where(mask.bool(), numerator - denominator, 0.0)


def kl_estimate(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, estimator: KLEstimator
) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy (Schulman's k1/k2/k3),
    0 off the mask.

    With log-ratio r = log p_ref - log p:  k1 = -r,  k2 = r^2 / 2,  k3 = (e^r - 1) - r.
    k1 and k3 are unbiased *values*; as a *loss*, only k2's gradient matches the reverse-KL gradient
    (k1 in the reward, via the policy gradient, is also right). Callers name estimator and placement.
    r is zeroed off the mask before any estimator is computed (see `masked_log_ratio`), so every
    estimator is 0 there and finite, with a finite gradient, whatever fills those positions.
    """
    log_ratio = masked_log_ratio(ref_logp, logp, mask)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.pow(2)
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}")


def reference_kl(
    logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor, estimator: KLEstimator, *, charged: bool
) -> torch.Tensor | None:
    """`kl_estimate` to the reference, or None where the run has no reference pass (KL coefficient 0,
    RLConfig.uses_reference). `charged` says a KL term with a coefficient > 0 will use it: without
    the reference's log-probs that is a bug, refused rather than silently dropped."""
    if ref_logp is not None:
        return kl_estimate(logp, ref_logp, mask, estimator)
    if charged:
        raise ValueError("a KL term with a coefficient > 0 needs the reference's log-probs")
    return None


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token (ratio - 1) - log ratio with ratio = p / p_old (cleanrl's approx_kl: nonnegative, low
    variance), 0 off the mask: k3 of KL(old || current) from the old policy's samples, masked the same way.
    The update's diagnostic of how far the policy has moved from the one that sampled."""
    return kl_estimate(old_logp, logp, mask, "k3")


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, mode: Aggregation, constant: float | None = None
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar, with the length weighting named.

    token_mean: every token in the batch weighs the same, so long sequences weigh more in total
      (with mostly-negative advantages this pushes toward short outputs).
    seq_mean: mean over each sequence's tokens, then over sequences (GRPO paper): each sequence
      weighs the same, but a token in a short sequence weighs more.
    constant: sum over tokens divided by a fixed number (Dr. GRPO: batch size x max length), so
      neither length nor batch composition changes a token's weight.
    """
    mask = mask.to(values.dtype)
    if mode == "token_mean":
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    if mode == "seq_mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.mean()
    if mode == "constant":
        if constant is None or constant <= 0:
            raise ValueError("aggregation 'constant' needs a positive constant")
        return (values * mask).sum() / constant
    raise ValueError(f"unknown aggregation {mode!r}")


def clipped_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO clipped surrogate (to minimise) and a 0/1 tensor marking clipped tokens.

    The ratio is 1 off the mask (the log-ratio is zeroed before the exp, see `masked_log_ratio`), so
    those positions are finite and never marked clipped; aggregation then gives them no weight."""
    ratio = torch.exp(masked_log_ratio(logp, old_logp, mask))
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float
) -> torch.Tensor:
    """Per-token PPO value loss with value clipping: 0.5 * max((v - R)^2, (v_clipped - R)^2)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum((values - returns).pow(2), (clipped - returns).pow(2))


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded response tokens.

    `rewards[b, t]` is the reward received after token t (the verifier's score sits on the last
    sampled token; per-token KL penalties elsewhere). Bootstraps with 0 past each sequence's last
    token. Returns (advantages, returns), both zero on padding.
    """
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * m
        # Padding carries nothing back: the next real token sees the state after its own sequence.
        next_value = values[:, t] * m + next_value * (1 - m)
        next_advantage = advantage * m + next_advantage * (1 - m)
    return advantages, (advantages + values) * mask


def token_rewards(
    scores: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    kl_coef: float,
    estimator: KLEstimator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, S] reward after each response token, [N, S] KL penalty subtracted from it: 0 without a
    reference pass, which only a KL coefficient of 0 allows).

    The verifier's score (`scores`, [N]) sits on each row's last response token. The penalty compares
    the sampling policy with the reference: it is part of the environment's reward, fixed for the
    whole update, so its gradient reaches the policy only through the advantages (k1 this way is an
    unbiased reverse-KL gradient, unlike k1 in the loss). PPO and REINFORCE both use it.
    """
    mask = mask.to(old_logp.dtype)
    kl = reference_kl(old_logp, ref_logp, mask, estimator, charged=kl_coef > 0)
    penalty = kl_coef * kl if kl is not None else torch.zeros_like(old_logp)
    rewards = -penalty
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # a row without response tokens gets score * 0
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += scores.to(rewards.dtype) * (mask.sum(1) > 0).to(rewards.dtype)
    return rewards, penalty


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t = sum of rewards[t'] over response tokens t' >= t (gamma = 1), 0 off the mask: the return
    that REINFORCE credits token t with (GAE with V = 0 and lambda = 1). Token t's choice can change
    only the rewards from t on, so earlier KL penalties are not charged to it."""
    masked = rewards * mask.to(rewards.dtype)
    return masked.flip(1).cumsum(1).flip(1) * mask.to(rewards.dtype)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero-mean, unit-variance over masked entries (PPO advantage whitening)."""
    mask = mask.to(values.dtype)
    n = mask.sum().clamp(min=1.0)
    mean = (values * mask).sum() / n
    var = ((values - mean).pow(2) * mask).sum() / n
    return (values - mean) * torch.rsqrt(var + eps) * mask


def explained_variance(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[target - predicted] / Var[target] over masked entries (cleanrl's diagnostic)."""
    mask = mask.bool()
    y, p = target[mask].float(), predicted[mask].float()
    var_y = y.var(unbiased=False)
    if var_y.item() == 0:
        return float("nan")
    return float(1 - (y - p).var(unbiased=False) / var_y)


def micro_batch_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    aggregation: Aggregation,
    *,
    total_tokens: torch.Tensor | float,
    total_sequences: torch.Tensor | float,
    max_new_tokens: int,
) -> torch.Tensor:
    """This micro-batch's share of the minibatch loss: the shares of all micro-batches (on every rank)
    sum to the minibatch's loss aggregated as named, given the minibatch's global `total_tokens`
    (response tokens) and `total_sequences`. GRPO and PPO both use it."""
    if aggregation == "token_mean":
        return aggregate(per_token, mask, "token_mean") * (mask.sum() / max(float(total_tokens), 1.0))
    if aggregation == "seq_mean":
        return aggregate(per_token, mask, "seq_mean") * (mask.shape[0] / float(total_sequences))
    return aggregate(per_token, mask, "constant", constant=float(total_sequences) * max_new_tokens)


def surrogate_with_kl(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float,
    kl_coef: float,
    kl_estimator: KLEstimator,
    aggregation: Aggregation,
    total_tokens: torch.Tensor | float,
    total_sequences: torch.Tensor | float,
    max_new_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss share, clipped [B, T], kl_to_ref [B, T]) of a critic-free micro-batch: the clipped
    surrogate (`clipped_policy_loss`; advantages [B, 1] or [B, T]) plus kl_coef x the KL estimate to
    the reference per token, aggregated by `micro_batch_loss`. kl_coef is 0 when the KL is placed in
    the reward; kl_to_ref is returned either way, for the diagnostics (None without a reference pass).
    GRPO and REINFORCE both use it."""
    per_token, clipped = clipped_policy_loss(logp, old_logp, advantages, mask, clip)
    kl_to_ref = reference_kl(logp, ref_logp, mask, kl_estimator, charged=kl_coef > 0)
    if kl_coef > 0:
        per_token = per_token + kl_coef * kl_to_ref
    loss = micro_batch_loss(
        per_token, mask, aggregation, total_tokens=total_tokens, total_sequences=total_sequences,
        max_new_tokens=max_new_tokens,
    )  # fmt: skip
    return loss, clipped, kl_to_ref
