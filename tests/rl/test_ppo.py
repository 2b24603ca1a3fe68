import copy
import math

import pytest
import torch

from echochamber.model.presets import build_model, load_model
from echochamber.rl import ppo
from echochamber.rl.config import RLConfig
from echochamber.rl.losses import gae, masked_whiten
from echochamber.rl.rollout import RolloutBatch, sequence_logprobs

VOCAB = 16
PAD = 0


def _model(seed: int) -> torch.nn.Module:
    return build_model("tiny", VOCAB, max_seq_len=32, seed=seed)


def _config(**ppo_settings: object) -> RLConfig:
    config = RLConfig(policy="unused", out="unused", dtype="float32")  # compared against float32 maths
    config.rollout.temperature = 1.0
    config.micro_batch_size = 2
    for name, value in ppo_settings.items():
        setattr(config.ppo, name, value)
    return config


def _batch(
    policy: torch.nn.Module,
    ref: torch.nn.Module,
    rows: list[tuple[list[int], list[int]]],
    scores: list[float],
) -> RolloutBatch:
    """Right-padded rows of (prompt, response) with the policy's own log-probs as `old_logp` (ratio 1)."""
    n, width = len(rows), max(len(p) + len(r) for p, r in rows)
    tokens = torch.full((n, width), PAD)
    attention = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width)
    for i, (prompt, response) in enumerate(rows):
        tokens[i, : len(prompt) + len(response)] = torch.tensor(prompt + response)
        attention[i, : len(prompt) + len(response)] = 1
        mask[i, len(prompt) : len(prompt) + len(response)] = 1
    with torch.no_grad():
        old_logp = sequence_logprobs(policy, tokens, attention, 1.0, entropy=False)[0] * mask
        ref_logp = sequence_logprobs(ref, tokens, attention, 1.0, entropy=False)[0] * mask
    return RolloutBatch(
        prompt_ids=[f"p{i}" for i in range(n)], sample_index=[0] * n, group=torch.arange(n),
        texts=[""] * n, formats=["other"] * n, statuses=["ok"] * n, correct=torch.tensor(scores) > 0,
        rewards=torch.tensor(scores), truncated=torch.zeros(n, dtype=torch.bool), tokens=tokens,
        attention_mask=attention, prompt_length=torch.tensor([len(prompt) for prompt, _ in rows]), response_mask=mask,
        old_logp=old_logp, ref_logp=ref_logp,
    )  # fmt: skip


HAND_ROWS = [([3, 4], [5, 6, 7]), ([3], [8, 9]), ([2, 4, 6], [5, 1, 1, 7])]


def test_token_rewards_with_k1_penalty_then_gae_match_a_hand_computation():
    # One row: prompt at columns 0-1, response at 2-4, padding at 5.
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    old_logp = torch.tensor([[0.0, 0.0, -1.0, -2.0, -0.5, 0.0]])
    ref_logp = torch.tensor([[0.0, 0.0, -1.5, -1.0, -0.5, 0.0]])
    values = torch.tensor([[0.0, 0.0, 0.2, 0.4, 0.6, 0.0]])
    rewards, penalty = ppo.token_rewards(
        torch.tensor([1.0]), old_logp, ref_logp, mask, kl_coef=0.1, estimator="k1"
    )
    # k1 = logp - ref_logp = 0.5, -1.0, 0.0 -> penalty 0.05, -0.1, 0; the score on the last token.
    assert penalty[0].tolist() == pytest.approx([0, 0, 0.05, -0.1, 0, 0])
    assert rewards[0].tolist() == pytest.approx([0, 0, -0.05, 0.1, 1.0, 0])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    d4 = 1.0 - 0.6  # delta_t = r_t + V_{t+1} - V_t, V past the end = 0
    d3 = 0.1 + 0.6 - 0.4
    d2 = -0.05 + 0.4 - 0.2
    a4, a3 = d4, d3 + 0.95 * d4
    a2 = d2 + 0.95 * a3
    assert advantages[0].tolist() == pytest.approx([0, 0, a2, a3, a4, 0])
    assert returns[0].tolist() == pytest.approx([0, 0, a2 + 0.2, a3 + 0.4, a4 + 0.6, 0])


def test_row_without_response_tokens_gets_no_reward():
    mask = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    zeros = torch.zeros(2, 2)
    rewards, _ = ppo.token_rewards(torch.tensor([1.0, 1.0]), zeros, zeros, mask, kl_coef=0.0, estimator="k1")
    assert rewards.tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_token_rewards_ignore_extreme_fillers_on_padding():
    """A sampler log-prob of -100 on a padding column (e^100 overflows float32, inf * 0 is NaN) gives
    the rewards of the batch without that column."""
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    old_logp = torch.tensor([[0.0, -1.0, -2.0, -100.0]])
    ref_logp = torch.tensor([[0.0, -1.5, -1.0, 0.0]])
    for estimator in ("k1", "k2", "k3"):
        rewards, penalty = ppo.token_rewards(torch.tensor([1.0]), old_logp, ref_logp, mask, kl_coef=0.1, estimator=estimator)
        trimmed, trimmed_penalty = ppo.token_rewards(
            torch.tensor([1.0]), old_logp[:, :3], ref_logp[:, :3], mask[:, :3], kl_coef=0.1, estimator=estimator
        )
        assert rewards[0, 3].item() == 0.0 and penalty[0, 3].item() == 0.0, estimator
        torch.testing.assert_close(rewards[:, :3], trimmed)
        torch.testing.assert_close(penalty[:, :3], trimmed_penalty)


def test_global_whiten_equals_masked_whiten_in_one_process():
    values = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 1, 1, 0], [1, 0, 0, 0, 1]])
    assert torch.allclose(ppo.global_whiten(values, mask), masked_whiten(values, mask), atol=1e-5)


def test_value_model_shape_and_save_load_round_trip(tmp_path):
    policy = _model(0)
    rng = torch.get_rng_state()
    critic = ppo.ValueModel.from_policy(policy)
    assert torch.equal(torch.get_rng_state(), rng)  # building it draws no random numbers (resume compares RNG states)
    tokens = torch.tensor([[3, 4, 5, 6], [3, 8, PAD, PAD]])
    attention = (tokens != PAD).long()
    # The body is a copy of the policy's: same hidden states, but its own weights (training the critic
    # must not move the policy).
    hidden = policy.base_model(input_ids=tokens, attention_mask=attention).last_hidden_state
    assert torch.equal(critic.backbone(input_ids=tokens, attention_mask=attention).last_hidden_state, hidden)
    policy_weights = {p.data_ptr() for p in policy.parameters()}
    assert not any(p.data_ptr() in policy_weights for p in critic.parameters())
    values = critic(tokens, attention)
    assert values.shape == tokens.shape
    assert torch.count_nonzero(values) == 0  # fresh zero head: every value starts at 0, not the body's noise
    with torch.no_grad():
        critic.head.weight.normal_(generator=torch.Generator().manual_seed(1))
        critic.head.bias.fill_(0.3)
    values = critic(tokens, attention)
    assert values[:, 0].tolist() == [0.0, 0.0]  # nothing precedes the first token
    # Column s is the value of the prefix tokens[:, :s]: it must not see tokens[:, s] itself.
    changed = tokens.clone()
    changed[0, 2] = 9
    assert critic(changed, attention)[0, 2] == values[0, 2]
    assert critic(changed, attention)[0, 3] != values[0, 3]
    critic.save(tmp_path)
    loaded = ppo.ValueModel.load(tmp_path)
    assert torch.equal(loaded(tokens, attention), values)


@pytest.mark.parametrize("aggregation", ["seq_mean", "token_mean"])
def test_first_update_losses_equal_the_closed_form(aggregation):
    """A fresh critic and a planted ratio: the sampler's log-probs are the policy's shifted by +-0.4
    (alternating tokens), so the ratio is exp(-+0.4), outside the clip range either way, and a token
    clips when its advantage points the same way. Every loss and diagnostic then has a closed form
    (at ratio 1 the policy loss would be -mean(whitened advantages) = 0)."""
    policy, ref = _model(0), _model(1)
    coef, lam, clip = 0.1, 0.95, 0.2
    config = _config(kl_coef=coef, lam=lam, aggregation=aggregation, epochs=1, minibatches=1, clip=clip)
    batch = _batch(policy, ref, HAND_ROWS, [1.0, 0.0, 1.0])
    shift = 0.4 * (1 - 2 * (torch.arange(batch.old_logp.numel()) % 2)).view_as(batch.old_logp) * batch.response_mask
    batch.old_logp = batch.old_logp + shift
    diagnostics = ppo.build(policy, ref, None, config).update(batch)

    # Fresh critic: every value is 0, so GAE reduces to a (gamma * lambda)-discounted reward-to-go.
    advantages, returns, per_row = [], [], []
    for i in range(len(HAND_ROWS)):
        positions = batch.response_mask[i].nonzero().flatten().tolist()
        k1 = [float(batch.old_logp[i, s] - batch.ref_logp[i, s]) for s in positions]
        rewards = [-coef * k for k in k1]
        rewards[-1] += float(batch.rewards[i])
        row = [sum(lam ** (k - t) * rewards[k] for k in range(t, len(rewards))) for t in range(len(rewards))]
        per_row.append(len(row))
        advantages += row
        returns += row  # returns = advantages + values = advantages
    a = torch.tensor(advantages, dtype=torch.float64)
    whitened = (a - a.mean()) / torch.sqrt(a.var(unbiased=False) + 1e-8)
    ratio = torch.exp(-shift[batch.response_mask.bool()].double())  # row-major, like `advantages`
    surrogate = torch.maximum(-whitened * ratio, -whitened * ratio.clamp(1 - clip, 1 + clip))
    clipped = ((whitened > 0) & (ratio > 1 + clip)) | ((whitened < 0) & (ratio < 1 - clip))
    value_terms = 0.5 * torch.tensor(returns, dtype=torch.float64) ** 2
    if aggregation == "token_mean":
        policy_loss, value_loss = surrogate.mean(), value_terms.mean()
    else:
        policy_loss = torch.stack([part.mean() for part in surrogate.split(per_row)]).mean()
        value_loss = torch.stack([part.mean() for part in value_terms.split(per_row)]).mean()
    assert 0 < clipped.double().mean() < 1  # the planted condition: some tokens clip, some do not
    assert diagnostics["policy_loss"] == pytest.approx(float(policy_loss), rel=1e-4)
    assert diagnostics["value_loss"] == pytest.approx(float(value_loss), rel=1e-5)
    assert diagnostics["clip_fraction"] == pytest.approx(float(clipped.double().mean()))
    assert diagnostics["approx_kl"] == pytest.approx(float(((ratio - 1) - ratio.log()).mean()), rel=1e-4)
    assert diagnostics["value_mean"] == 0.0
    assert diagnostics["returns_mean"] == pytest.approx(float(a.mean()), abs=1e-6)
    k1_mean = float((batch.old_logp - batch.ref_logp).sum() / batch.response_mask.sum())
    assert diagnostics["kl_penalty_mean"] == pytest.approx(coef * k1_mean, rel=1e-5)
    assert diagnostics["grad_norm"] > 0 and diagnostics["critic_grad_norm"] > 0


def test_micro_batch_size_does_not_change_the_update():
    policy, ref = _model(0), _model(1)
    batch = _batch(policy, ref, HAND_ROWS, [1.0, 0.0, 1.0])
    runs = []
    for micro_batch_size in (1, 3):
        config = _config(epochs=1, minibatches=1)
        config.micro_batch_size = micro_batch_size
        algorithm = ppo.build(copy.deepcopy(policy), ref, None, config)
        runs.append((algorithm.update(batch), algorithm))
    (first, a), (second, b) = runs
    for key in ("policy_loss", "value_loss", "entropy", "grad_norm", "critic_grad_norm"):
        assert second[key] == pytest.approx(first[key], rel=1e-5, abs=1e-7), key
    # The summed micro-batch gradients (kept after the step) are the whole minibatch's gradient.
    # Parameters are not compared: Adam divides by sqrt(v), so float noise on near-zero gradients
    # would move them by up to lr whatever the micro-batching.
    for model_a, model_b in ((a.policy, b.policy), (a.critic, b.critic)):
        for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
            if p.grad is not None or q.grad is not None:
                assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7)


def _sample_rows(
    policy: torch.nn.Module, prompt: list[int], n: int, length: int, generator: torch.Generator
) -> list[tuple[list[int], list[int]]]:
    tokens = torch.tensor([prompt] * n)
    with torch.no_grad():
        for _ in range(length):
            probs = torch.softmax(policy(input_ids=tokens).logits[:, -1].float(), -1)
            tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=generator)], 1)
    return [(prompt, row[len(prompt) :]) for row in tokens.tolist()]


def _first_token_probability(policy: torch.nn.Module, prompt: list[int], token: int) -> float:
    with torch.no_grad():
        return float(torch.softmax(policy(input_ids=torch.tensor([prompt])).logits[0, -1].float(), -1)[token])


def test_ppo_raises_the_probability_of_the_rewarded_token():
    policy, ref = _model(0), _model(0)
    prompt, target = [3, 4], 5
    config = _config(lr=3e-3, critic_lr=3e-3, epochs=2, minibatches=2)
    config.micro_batch_size = 32
    algorithm = ppo.build(policy, ref, None, config)
    generator = torch.Generator().manual_seed(0)
    before = _first_token_probability(policy, prompt, target)
    for _ in range(6):
        policy.eval()
        rows = _sample_rows(policy, prompt, 32, 3, generator)
        scores = [1.0 if response[0] == target else 0.0 for _, response in rows]
        diagnostics = algorithm.update(_batch(policy, ref, rows, scores))
        assert math.isfinite(diagnostics["loss"]) and math.isfinite(diagnostics["value_loss"])
    after = _first_token_probability(policy, prompt, target)
    assert after > 3 * before, (before, after)


def test_state_dict_round_trip_gives_an_identical_next_update(tmp_path):
    policy, ref = _model(0), _model(1)
    config = _config(lr=1e-3, critic_lr=1e-3, epochs=2, minibatches=2)
    first = _batch(policy, ref, HAND_ROWS, [1.0, 0.0, 1.0])
    running = ppo.build(policy, ref, None, config)
    running.update(first)
    running.save_models(tmp_path)
    state = copy.deepcopy(running.state_dict())
    assert (tmp_path / "config.json").is_file() and (
        tmp_path / ppo.CRITIC_DIR / ppo.VALUE_HEAD_FILE
    ).is_file()

    resumed = ppo.build(load_model(tmp_path), ref, None, config)
    resumed.load_state_dict(state)
    second = _batch(policy, ref, HAND_ROWS[::-1], [0.0, 1.0, 1.0])
    assert resumed.update(second) == running.update(second)
    for p, q in zip(running.policy.parameters(), resumed.policy.parameters(), strict=True):
        assert torch.equal(p, q)
    for p, q in zip(running.critic.parameters(), resumed.critic.parameters(), strict=True):
        assert torch.equal(p, q)
    # The critic folder alone restores the same critic.
    saved = ppo.ValueModel.load(tmp_path / ppo.CRITIC_DIR)
    for p, q in zip(saved.state_dict().values(), state["critic"].values(), strict=True):
        assert torch.equal(p, q)


def test_a_bfloat16_update_agrees_with_float32_and_keeps_the_values_in_float32():
    """rl.dtype bfloat16 runs the actor's and the critic's forwards under autocast; the value head
    stays float32 (a 1-wide output the value loss is computed on)."""
    policy, ref = _model(0), _model(1)
    batch = _batch(policy, ref, HAND_ROWS, [1.0, 0.0, 1.0])
    results = {}
    for dtype in ("float32", "bfloat16"):
        config = _config(epochs=1, minibatches=1)
        config.dtype = dtype
        algorithm = ppo.build(copy.deepcopy(policy), ref, None, config)
        assert algorithm._values(batch).dtype == torch.float32
        results[dtype] = algorithm.update(batch)
    f32, b16 = results["float32"], results["bfloat16"]
    for key in ("policy_loss", "value_loss", "grad_norm", "critic_grad_norm"):
        assert b16[key] == pytest.approx(f32[key], rel=1e-2), key
    assert f32["approx_kl"] < 1e-9 < b16["approx_kl"] < 1e-3  # the actor's forward ran in bfloat16
    assert b16["critic_grad_norm"] != f32["critic_grad_norm"]  # and the critic's
