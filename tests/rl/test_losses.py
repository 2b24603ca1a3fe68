import math

import pytest
import torch

from echochamber.rl.losses import (
    aggregate,
    approx_kl,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_estimate,
    masked_whiten,
)


def test_kl_estimators_match_their_formulas():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    for est, fn in {
        "k1": lambda p, q: p - q,
        "k2": lambda p, q: 0.5 * (q - p) ** 2,
        "k3": lambda p, q: math.exp(q - p) - 1 - (q - p),
    }.items():
        got = kl_estimate(logp, ref, torch.ones(3), est).tolist()
        want = [fn(p, q) for p, q in zip(logp.tolist(), ref.tolist(), strict=True)]
        assert got == pytest.approx(want, abs=1e-6), est


def test_kl_estimators_are_unbiased_for_known_distributions():
    # E_p[k1] = E_p[k3] = KL(p||q) exactly when summed over the support with weights p.
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    kl = float((p * (p / q).log()).sum())
    for est in ("k1", "k3"):
        value = float((p * kl_estimate(p.log(), q.log(), torch.ones(3), est)).sum())
        assert value == pytest.approx(kl, abs=1e-6)


def test_off_mask_positions_are_zero_and_finite_whatever_fills_them():
    """A pad position holding a log-prob of -100 (e^100 is inf in float32) changes nothing."""
    logp = torch.tensor([-1.0, -100.0, -2.0], requires_grad=True)
    ref = torch.tensor([-1.5, 0.0, -100.0])
    mask = torch.tensor([1.0, 0.0, 0.0])
    for est in ("k1", "k2", "k3"):
        kl = kl_estimate(logp, ref, mask, est)
        assert kl[1:].tolist() == [0.0, 0.0], est
        (grad,) = torch.autograd.grad(kl.sum(), logp)
        assert torch.isfinite(grad).all() and grad[1:].tolist() == [0.0, 0.0], est
    loss, clipped = clipped_policy_loss(torch.tensor([-1.0, 0.0, 0.0]), torch.tensor([-1.0, -100.0, 0.0]), torch.ones(3), mask, 0.2)
    assert loss.tolist() == [-1.0, -1.0, -1.0] and clipped.tolist() == [0.0, 0.0, 0.0]  # ratio 1 off the mask
    assert approx_kl(torch.tensor([0.0, 0.0]), torch.tensor([-1.0, -100.0]), torch.tensor([1.0, 0.0])).tolist() == (
        pytest.approx([math.e - 2, 0.0])
    )


def test_aggregation_modes():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(values, mask, "seq_mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate(values, mask, "constant", constant=6).item() == pytest.approx(10 / 6)
    with pytest.raises(ValueError):
        aggregate(values, mask, "constant")


def test_clipped_policy_loss_closed_form():
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1]))
    old = torch.zeros(3)
    adv = torch.tensor([1.0, 1.0, -1.0])
    loss, clipped = clipped_policy_loss(logp, old, adv, torch.ones(3), clip=0.2)
    # ratio 1.5, A>0 -> min(1.5, 1.2) * A = 1.2 (clipped); ratio 0.5, A>0 -> 0.5 (unclipped side);
    # ratio 1.1, A<0 -> max(-1.1, -1.1)
    assert loss.tolist() == pytest.approx([-1.2, -0.5, 1.1], abs=1e-6)
    assert clipped.tolist() == [1.0, 0.0, 0.0]


def test_clipped_value_loss_closed_form():
    v = torch.tensor([1.0, 0.0])
    old = torch.tensor([0.5, 0.0])
    ret = torch.tensor([2.0, 0.1])
    got = clipped_value_loss(v, old, ret, clip=0.2)
    # first: max((1-2)^2, (0.7-2)^2) = 1.69 -> 0.845; second: unclipped 0.01 -> 0.005
    assert got.tolist() == pytest.approx([0.845, 0.005], abs=1e-6)


def _gae_reference(rewards, values, length, gamma, lam):
    adv = [0.0] * len(rewards)
    last = 0.0
    for t in reversed(range(length)):
        next_v = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


def test_gae_equals_reference_loop():
    torch.manual_seed(0)
    B, T = 5, 9
    rewards, values = torch.randn(B, T), torch.randn(B, T)
    lengths = [9, 1, 4, 7, 2]
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(T)] for n in lengths])
    adv, ret = gae(rewards * mask, values * mask, mask, gamma=0.97, lam=0.9)
    for b, n in enumerate(lengths):
        ref = _gae_reference(rewards[b].tolist(), values[b].tolist(), n, 0.97, 0.9)
        assert adv[b].tolist() == pytest.approx(ref, abs=1e-5)
        assert ret[b, :n].tolist() == pytest.approx((adv[b, :n] + values[b, :n]).tolist(), abs=1e-6)
        assert ret[b, n:].abs().sum().item() == 0


def test_whiten_and_explained_variance():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    w = masked_whiten(x, mask)
    assert w[0, :3].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert w[0, :3].pow(2).mean().item() == pytest.approx(1.0, abs=1e-4)
    assert w[0, 3].item() == 0
    assert explained_variance(x, x, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros_like(x), x, mask) == pytest.approx(0.0, abs=1e-6)
