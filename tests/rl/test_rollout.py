"""Rollouts: prompt order, honest log-probs, the padded batch, the truncation policy, persistence."""

from __future__ import annotations

import math

import pytest
import torch

from echochamber.data.records import Record
from echochamber.data.tokenizer import encode_prompt, load_tokenizer, pad_token_id
from echochamber.errors import UserError
from echochamber.model.presets import load_model
from echochamber.model.sampling_params import SamplingParams
from echochamber.rl.config import PromptConfig
from echochamber.rl.rollout import (
    Rollout,
    build_batch,
    first_wanted_column,
    generate_rollouts,
    load_prompts,
    read_rollouts,
    sequence_logprobs,
    step_prompts,
    steps_per_epoch,
    write_rollouts,
)


def records(n: int) -> list[Record]:
    return [Record(f"p{i}", f"question {i}", "", str(i), "test", "gsm8k") for i in range(n)]


def test_step_prompts_are_a_pure_function_of_seed_and_step():
    prompts = records(10)
    assert steps_per_epoch(10, 3) == 3  # the tenth prompt waits for the next epoch's permutation
    epoch0 = [r.id for step in range(3) for r in step_prompts(prompts, step, 3, seed=1)]
    assert len(set(epoch0)) == 9  # no prompt twice within an epoch
    epoch1 = [r.id for step in range(3, 6) for r in step_prompts(prompts, step, 3, seed=1)]
    assert epoch1 != epoch0 and len(set(epoch1)) == 9  # a fresh order each epoch
    assert [r.id for r in step_prompts(prompts, 4, 3, seed=1)] == epoch1[3:6]  # no cursor needed
    assert [r.id for r in step_prompts(prompts, 0, 3, seed=2)] != epoch0[:3]
    with pytest.raises(UserError, match="prompts_per_step=11"):
        step_prompts(prompts, 0, 11, seed=1)


def test_world_prompt_set_is_the_rl_split_with_gold_answers(test_world):
    loaded = load_prompts(PromptConfig(world=test_world, limit=5))
    assert len(loaded) == 5 and all(r.answer.lstrip("-").isdigit() for r in loaded)
    assert len(load_prompts(PromptConfig(world=test_world))) == test_world.n_rl
    with pytest.raises(UserError, match="unknown source"):
        PromptConfig(dataset="nope").validate()


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token logits are given: position s predicts from `logits[:, s]`."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, **inputs):  # input_ids, attention_mask, use_cache: unused
        return type("Output", (), {"logits": self.logits})


def test_sequence_logprobs_apply_the_temperature_and_shift_by_one():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [9.0, 9.0, 9.0]]])
    tokens = torch.tensor([[1, 0, 2]])
    logp, entropy = sequence_logprobs(FixedLogits(logits), tokens, torch.ones_like(tokens), 0.5)
    z = [4.0, 0.0, -2.0]  # position 0's logits / 0.5 predict tokens[:, 1] = 0
    assert logp[0, 0].item() == 0.0  # nothing predicts the first token
    assert logp[0, 1].item() == pytest.approx(4.0 - math.log(sum(math.exp(v) for v in z)), abs=1e-6)
    assert logp[0, 2].item() == pytest.approx(-math.log(3), abs=1e-6)  # uniform at any temperature
    assert entropy[0, 2].item() == pytest.approx(math.log(3), abs=1e-6)
    no_entropy = sequence_logprobs(FixedLogits(logits), tokens, torch.ones_like(tokens), 0.5, entropy=False)
    assert no_entropy[1] is None and torch.equal(no_entropy[0], logp)


def test_wanted_columns_skip_the_output_layer_before_the_first_and_keep_the_rest(tiny_policy):
    """Log-probs asked only where `wanted` is set: the output layer runs from the first column any
    row wants (not over the prompts), the values there equal the full pass's, and earlier columns are 0."""
    model = load_model(tiny_policy)
    tokens = torch.randint(3, 200, (3, 12), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(tokens)
    attention_mask[2, 9:] = 0
    wanted = torch.zeros(3, 12)
    wanted[0, 5:12], wanted[1, 7:10], wanted[2, 6:9] = 1, 1, 1  # responses start at columns 5, 7, 6
    rows_seen = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda _m, inputs, _o: rows_seen.append(inputs[0].shape[:2]))
    full, full_entropy = sequence_logprobs(model, tokens, attention_mask, 0.7)
    part, part_entropy = sequence_logprobs(model, tokens, attention_mask, 0.7, wanted=wanted)
    nothing, _ = sequence_logprobs(model, tokens, attention_mask, 0.7, wanted=torch.zeros(3, 12), entropy=False)
    hook.remove()
    assert rows_seen == [(3, 12), (3, 8), (3, 1)]  # positions 4..11 predict columns 5..11 (and a dummy)
    assert part.shape == full.shape == nothing.shape == (3, 12)
    torch.testing.assert_close(part[:, 5:], full[:, 5:], atol=1e-5, rtol=0)
    torch.testing.assert_close(part_entropy[:, 5:], full_entropy[:, 5:], atol=1e-5, rtol=0)
    assert (part[:, :5] == 0).all() and (part_entropy[:, :5] == 0).all() and (nothing == 0).all()
    assert first_wanted_column(wanted) == 5 and first_wanted_column(torch.ones(2, 4)) == 1


@pytest.mark.filterwarnings("error:`past_key_values` is deprecated:FutureWarning")  # decoders.cache_keyword
def test_a_shared_prompt_runs_once_and_gives_the_same_logprobs_and_gradients(tiny_policy):
    """Three samples of one 5-token prompt: with `shared_prompt` the model sees the prompt once and
    the responses (right-padded) over its repeated cache; log-probs, entropies and every weight's
    gradient equal the whole rows' pass."""
    model = load_model(tiny_policy)
    prompt = [11, 12, 13, 14, 15]
    responses = [[21, 22, 23, 24], [31, 32], [41, 42, 43]]
    tokens = torch.tensor([prompt + r + [0] * (4 - len(r)) for r in responses])
    attention_mask = torch.tensor([[1] * (5 + len(r)) + [0] * (4 - len(r)) for r in responses])
    response_mask = attention_mask.float()
    response_mask[:, :5] = 0

    def run(shared: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        logp, entropy = sequence_logprobs(
            model, tokens, attention_mask, 0.7, wanted=response_mask, shared_prompt=shared
        )
        (logp * response_mask).sum().backward()
        return logp * response_mask, entropy * response_mask, [p.grad.clone() for p in model.parameters()]

    seen = []
    embed = model.get_input_embeddings()
    hook = embed.register_forward_hook(lambda _m, inputs, _o: seen.append(tuple(inputs[0].shape)))
    whole, shared = run(0), run(5)
    hook.remove()
    assert seen == [(3, 9), (1, 5), (3, 4)]
    torch.testing.assert_close(shared[0], whole[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(shared[1], whole[1], atol=1e-5, rtol=0)
    for got, expected in zip(shared[2], whole[2], strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="shared prompt"):
        sequence_logprobs(model, tokens, attention_mask, 0.7, wanted=torch.ones_like(response_mask), shared_prompt=5)


def test_sampler_logprobs_equal_a_forward_pass_at_the_same_temperature(tiny_policy, test_world, grader):
    """The ratio's denominator (old_logp, from the sampler) and its numerator (the trainer's forward)
    describe one distribution: they agree before any update."""
    model, tokenizer = load_model(tiny_policy), load_tokenizer(tiny_policy)
    prompts = load_prompts(PromptConfig(world=test_world, limit=3))
    params = SamplingParams(temperature=0.7, max_new_tokens=24, seed=5)
    rollouts, seconds = generate_rollouts(model, tokenizer, prompts, 4, params, grader)
    assert len(rollouts) == 12 and seconds["time_generate"] > 0 and seconds["time_reward"] > 0
    assert [(r.prompt_id, r.sample_index) for r in rollouts] == [(p.id, i) for p in prompts for i in range(4)]
    assert rollouts[0].prompt_token_ids == encode_prompt(tokenizer, prompts[0].prompt)

    batch, _ = build_batch(rollouts, tokenizer=tokenizer, ref=model, temperature=0.7, truncation="zero", micro_batch_size=5)
    logp, entropy = sequence_logprobs(model, batch.tokens, batch.attention_mask, 0.7)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(logp[mask], batch.old_logp[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(batch.ref_logp[mask], batch.old_logp[mask], atol=1e-4, rtol=0)  # ref == policy here
    assert (entropy[mask] > 0).all()
    # Same seed, same samples: a rollout is reproducible (resume depends on it).
    again, _ = generate_rollouts(model, tokenizer, prompts, 4, params, grader)
    assert [r.token_ids for r in again] == [r.token_ids for r in rollouts]


def test_truncated_samples_are_never_correct(tiny_policy, test_world, grader):
    model, tokenizer = load_model(tiny_policy), load_tokenizer(tiny_policy)
    prompts = load_prompts(PromptConfig(world=test_world, limit=2))
    rollouts, _ = generate_rollouts(model, tokenizer, prompts, 3, SamplingParams(temperature=0.7, max_new_tokens=2), grader)
    assert all(r.truncated and not r.correct and r.reward == 0.0 for r in rollouts)
    assert all(len(r.token_ids) == 2 == r.row()["n_tokens"] for r in rollouts)


def _rollout(prompt_id: str, index: int, prompt: list[int], response: list[int], truncated: bool, reward: float) -> Rollout:
    return Rollout(
        prompt_id=prompt_id, sample_index=index, prompt_token_ids=prompt, token_ids=response,
        logprobs=[-0.5 - 0.1 * t for t in range(len(response))], text="x", format="other", answer=None,
        status="ok", correct=reward > 0, truncated=truncated, reward=reward,
    )  # fmt: skip


@pytest.mark.parametrize("truncation", ["zero", "mask"])
def test_batch_layout_and_truncation_policy(tiny_policy, truncation):
    model, tokenizer = load_model(tiny_policy), load_tokenizer(tiny_policy)
    pad, eos = pad_token_id(tokenizer), tokenizer.eos_token_id
    rollouts = [
        _rollout("a", 0, [5, 6, 7], [8, 9, eos], truncated=False, reward=1.0),
        _rollout("a", 1, [5, 6, 7], [10, 11, 12, 13], truncated=True, reward=0.0),
        _rollout("b", 0, [20], [21, eos], truncated=False, reward=0.0),
    ]
    batch, seconds = build_batch(rollouts, tokenizer=tokenizer, ref=model, temperature=1.0, truncation=truncation, micro_batch_size=2)
    assert seconds >= 0 and len(batch) == 3
    assert batch.tokens.tolist() == [[5, 6, 7, 8, 9, eos, pad], [5, 6, 7, 10, 11, 12, 13], [20, 21, eos, pad, pad, pad, pad]]
    assert batch.attention_mask.tolist() == [[1] * 6 + [0], [1] * 7, [1] * 3 + [0] * 4]
    truncated_row = [0, 0, 0, 1, 1, 1, 1] if truncation == "zero" else [0] * 7
    # The EOS the policy chose is trained on; the prompt and padding never are.
    assert batch.response_mask.tolist() == [[0, 0, 0, 1, 1, 1, 0], truncated_row, [0, 1, 1, 0, 0, 0, 0]]
    assert batch.old_logp[0, 3:6].tolist() == pytest.approx([-0.5, -0.6, -0.7])
    assert (batch.old_logp[batch.response_mask == 0] == 0).all() and (batch.ref_logp[batch.response_mask == 0] == 0).all()
    assert batch.group.tolist() == [0, 0, 1] and batch.rewards.tolist() == [1.0, 0.0, 0.0]
    assert batch.truncated.tolist() == [False, True, False] and batch.correct.tolist() == [True, False, False]
    # Reference log-probs are the reference model's, per row, whatever the micro-batching: the pass
    # runs rows 1 and 0 together (longest first), then row 2, and writes each back to its own row.
    for row, length in enumerate((6, 7, 3)):
        expected, _ = sequence_logprobs(model, batch.tokens[row : row + 1, :length], batch.attention_mask[row : row + 1, :length], 1.0)
        torch.testing.assert_close(batch.ref_logp[row, :length], expected[0] * batch.response_mask[row, :length])


def test_rollout_files_round_trip_byte_identically(tmp_path):
    rows = [_rollout("a", i, [1], [2, 3], truncated=False, reward=float(i % 2)).row() for i in range(3)]
    assert set(rows[0]) == {"prompt_id", "sample_index", "text", "format", "answer", "status", "correct", "truncated", "reward", "n_tokens", "paper_format"}
    write_rollouts(tmp_path / "a" / "step_000001.jsonl.gz", rows)
    write_rollouts(tmp_path / "b" / "step_000001.jsonl.gz", rows)
    assert read_rollouts(tmp_path / "a" / "step_000001.jsonl.gz") == rows
    assert (tmp_path / "a" / "step_000001.jsonl.gz").read_bytes() == (tmp_path / "b" / "step_000001.jsonl.gz").read_bytes()
    assert not list((tmp_path / "a").glob(".tmp-*"))
