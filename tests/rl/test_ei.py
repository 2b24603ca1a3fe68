import copy
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from echochamber.data.tokenizer import (
    PROMPT_SEPARATOR,
    encode_document,
    encode_prompt,
    pad_token_id,
    train_bpe,
)
from echochamber.data.world import WorldConfig, world_records
from echochamber.model.presets import build_model, load_model
from echochamber.rl import ei
from echochamber.rl.config import RLConfig
from echochamber.rl.core import run_rl
from echochamber.rl.rollout import Rollout, read_rollouts
from echochamber.runlog import METRICS_FILE, read_metrics

WORLD = WorldConfig(seed=0, n_pretrain=60, n_rl=12, n_test=4, n_hard=4)
STYLES = ("tinygsm", "omi1", "omi2")




@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny model + a small BPE over world documents, saved as an HF folder."""
    records = [r for style in STYLES for r in world_records(WORLD, "pretrain", style)]
    tokenizer = train_bpe([piece for r in records for piece in (r.prompt + PROMPT_SEPARATOR, r.solution)], vocab_size=300)
    model = build_model(
        "tiny", len(tokenizer), max_seq_len=512, seed=0,
        pad_token_id=pad_token_id(tokenizer), eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("ei") / "base"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(base: Path):
    from echochamber.data.tokenizer import load_tokenizer

    return load_tokenizer(base)


def _rollout(tokenizer, prompt_id: str, question: str, text: str, *, fmt: str = "omi2", index: int = 0,
             correct: bool = True, truncated: bool = False) -> Rollout:  # fmt: skip
    return Rollout(
        prompt_id=prompt_id, sample_index=index, prompt_token_ids=encode_prompt(tokenizer, question),
        token_ids=[], logprobs=[], text=text, format=fmt, answer=None, status="ok" if correct else "wrong",
        correct=correct, truncated=truncated, reward=float(correct),
    )  # fmt: skip


def _kept_rollouts(tokenizer) -> list[Rollout]:
    """Correct world solutions in each style, as if the policy had sampled them (2 samples per prompt)."""
    rollouts = []
    for style in STYLES:
        for record in world_records(WORLD, "rl", style)[:3]:
            pid = f"{record.id}-{style}"
            rollouts.append(_rollout(tokenizer, pid, record.prompt, record.solution, fmt=style, index=0))
            rollouts.append(_rollout(tokenizer, pid, record.prompt, "a wrong guess", fmt="other", index=1, correct=False))
    return rollouts


def _config(base: Path, tmp_path: Path, **ei_settings: object) -> RLConfig:
    config = RLConfig(policy=str(base), out=str(tmp_path / "run"), dtype="float32")
    config.micro_batch_size = 3
    config.ei.epochs, config.ei.batch_size, config.ei.lr = 2, 4, 1e-3
    for name, value in ei_settings.items():
        setattr(config.ei, name, value)
    return config


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def _mean_response_nll(model, examples: list[ei.SFTExample], pad: int) -> float:
    with torch.no_grad():
        nll, _ = ei.response_nll(model, *ei.collate(examples, pad, torch.device("cpu")))
    return float(nll) / sum(len(e.tokens) - e.prompt_length for e in examples)


def test_select_kept_keeps_correct_and_drops_exact_duplicates_per_prompt(tokenizer):
    rollouts = [
        _rollout(tokenizer, "p1", "q1", "answer A", index=0),
        _rollout(tokenizer, "p1", "q1", "answer A", index=1),  # duplicate text, same prompt: dropped
        _rollout(tokenizer, "p1", "q1", "answer A ", index=2),  # differs by a space: kept
        _rollout(tokenizer, "p2", "q2", "answer A", index=0),  # same text, other prompt: kept
        _rollout(tokenizer, "p2", "q2", "wrong", index=1, correct=False),
        _rollout(tokenizer, "p2", "q2", "cut off", index=2, correct=False, truncated=True),
    ]
    kept = ei.select_kept(rollouts, dedupe=True)
    assert [(r.prompt_id, r.sample_index) for r in kept] == [("p1", 0), ("p1", 2), ("p2", 0)]
    assert [(r.prompt_id, r.sample_index) for r in ei.select_kept(rollouts, dedupe=False)] == [
        ("p1", 0), ("p1", 1), ("p1", 2), ("p2", 0),
    ]  # fmt: skip


def test_sft_examples_are_pretraining_documents_and_drop_what_exceeds_the_context(tokenizer):
    record = world_records(WORLD, "rl", "tinygsm")[0]
    rollout = _rollout(tokenizer, "p", record.prompt, record.solution)
    (example,), dropped = ei.sft_examples([rollout], tokenizer, max_length=10_000)
    assert dropped == 0
    assert example.tokens == encode_document(tokenizer, record.prompt, record.solution)  # ... + EOS
    assert example.tokens[: example.prompt_length] == encode_prompt(tokenizer, record.prompt)
    examples, dropped = ei.sft_examples([rollout], tokenizer, max_length=len(example.tokens) - 1)
    assert (examples, dropped) == ([], 1)


def test_response_loss_ignores_prompt_and_padding_tokens():
    model = build_model("tiny", 32, max_seq_len=32, seed=1)
    examples = [
        ei.SFTExample("a", "omi2", [5, 6, 7, 8, 9, 2], 3),
        ei.SFTExample("b", "omi2", [4, 11, 12], 1),
        ei.SFTExample("c", "omi2", [3, 3, 3, 3, 3, 3, 3, 20, 21], 7),
    ]
    # By hand: each sequence alone (no padding), -log p of each response token given everything before it.
    hand = 0.0
    with torch.no_grad():
        for example in examples:
            logp = F.log_softmax(model(input_ids=torch.tensor([example.tokens])).logits[0].float(), -1)
            hand -= sum(float(logp[t - 1, example.tokens[t]]) for t in range(example.prompt_length, len(example.tokens)))
        for pad in (0, 31):  # what fills the padding must not matter either
            nll, _ = ei.response_nll(model, *ei.collate(examples, pad, torch.device("cpu")))
            assert float(nll) == pytest.approx(hand, rel=1e-5)
        # rl.dtype bfloat16: the same loss to bfloat16's rounding, computed under autocast.
        nll, _ = ei.response_nll(model, *ei.collate(examples, 0, torch.device("cpu")), "bfloat16")
        assert float(nll) == pytest.approx(hand, rel=1e-2) and float(nll) != pytest.approx(hand, rel=1e-6)
    tokens, _, loss_mask = ei.collate(examples, 0, torch.device("cpu"))
    assert loss_mask.sum() == 3 + 2 + 2  # response tokens only (EOS included as the last one)
    assert loss_mask[1, :1].sum() == 0 and loss_mask[1, 3:].sum() == 0


def test_from_base_starts_every_round_from_the_base_weights(base, tokenizer, tmp_path):
    config = _config(base, tmp_path, init="base")
    rollouts = _kept_rollouts(tokenizer)
    examples, _ = ei.sft_examples(ei.select_kept(rollouts, dedupe=True), tokenizer, 512)
    pad = pad_token_id(tokenizer)
    # The policy that sampled round 2 (round_index 1) is no longer the base.
    policy = load_model(base)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p), alpha=0.05)
    sampled_by = copy.deepcopy(policy)

    new_policy, _ = ei.run_round(1, policy, rollouts, tokenizer, config)
    from_base = load_model(base)
    ei.train_sft(from_base, examples, pad, config, 1)
    assert _same_weights(new_policy, from_base)
    assert _same_weights(policy, sampled_by)  # the sampling policy was left alone
    continued = copy.deepcopy(sampled_by)
    ei.train_sft(continued, examples, pad, config, 1)
    assert not _same_weights(new_policy, continued)


def test_continue_trains_the_policy_that_sampled(base, tokenizer, tmp_path):
    config = _config(base, tmp_path, init="last")
    rollouts = _kept_rollouts(tokenizer)
    policy = load_model(base)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p), alpha=0.05)
    expected = copy.deepcopy(policy)
    examples, _ = ei.sft_examples(ei.select_kept(rollouts, dedupe=True), tokenizer, 512)
    ei.train_sft(expected, examples, pad_token_id(tokenizer), config, 1)

    new_policy, _ = ei.run_round(1, policy, rollouts, tokenizer, config)
    assert _same_weights(new_policy, expected)
    assert not new_policy.training


def test_round_diagnostics_count_kept_data_and_formats(base, tokenizer, tmp_path):
    rollouts = _kept_rollouts(tokenizer)
    rollouts.append(copy.deepcopy(rollouts[0]))  # a duplicate of the first tinygsm sample
    _, diagnostics = ei.run_round(0, load_model(base), rollouts, tokenizer, _config(base, tmp_path))
    assert diagnostics["kept_correct"] == 10
    assert diagnostics["kept_duplicates"] == 1
    assert diagnostics["kept"] == 9 and diagnostics["kept_prompts"] == 9
    assert diagnostics["kept_format_share"] == pytest.approx({"tinygsm": 1 / 3, "omi1": 1 / 3, "omi2": 1 / 3, "other": 0.0})
    assert len(diagnostics["sft_loss_by_epoch"]) == 2
    assert diagnostics["sft_steps"] == 2 * 3  # ceil(9 / 4) batches per epoch, the last one partial


def test_micro_batch_size_does_not_change_the_update(base, tokenizer, tmp_path):
    examples, _ = ei.sft_examples(ei.select_kept(_kept_rollouts(tokenizer), dedupe=True), tokenizer, 512)
    models = []
    for micro in (1, 16):
        config = _config(base, tmp_path)
        config.micro_batch_size = micro
        model = load_model(base)
        ei.train_sft(model, examples, pad_token_id(tokenizer), config, 0)
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sft_on_kept_responses_raises_their_likelihood(base, tokenizer, tmp_path):
    rollouts = _kept_rollouts(tokenizer)
    examples, _ = ei.sft_examples(ei.select_kept(rollouts, dedupe=True), tokenizer, 512)
    pad = pad_token_id(tokenizer)
    before = _mean_response_nll(load_model(base), examples, pad)
    model, diagnostics = ei.run_round(0, load_model(base), rollouts, tokenizer, _config(base, tmp_path, epochs=4))
    after = _mean_response_nll(model, examples, pad)
    assert after < 0.8 * before
    assert diagnostics["sft_loss_by_epoch"][-1] < diagnostics["sft_loss_by_epoch"][0]


def test_nothing_correct_leaves_the_starting_model_unchanged(base, tokenizer, tmp_path):
    wrong = [r for r in _kept_rollouts(tokenizer) if not r.correct]
    policy = load_model(base)
    model, diagnostics = ei.run_round(0, policy, wrong, tokenizer, _config(base, tmp_path, init="last"))
    assert model is policy and _same_weights(model, load_model(base))
    assert diagnostics["kept"] == 0 and diagnostics["sft_loss"] is None
    assert diagnostics["kept_format_share"] == dict.fromkeys(("tinygsm", "omi1", "omi2", "other"))


def test_two_round_smoke_through_core(base, tmp_path):
    config = _config(base, tmp_path, rounds=2, samples_per_prompt=2, max_new_tokens=12)
    config.prompts.world, config.prompts.limit = WORLD, 4
    config.eval_every, config.tensorboard, config.progress = 0, False, False
    config.rollout.grader_workers, config.checkpoint_every = 1, 1
    final = run_rl(config, algo="ei")

    lines = read_metrics(Path(config.out) / METRICS_FILE, "rl")
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        assert line["algo"] == "ei" and line["n_samples"] == 4 * 2
        assert set(line["kept_format_share"]) == {"tinygsm", "omi1", "omi2", "other"}
        assert line["kept"] <= line["kept_correct"] <= line["n_samples"]
        assert line["kl_k1"] is None  # no reference pass on EI samples
        assert set(line["format_accuracy"]) == {"tinygsm", "omi1", "omi2", "other"}
    assert len(read_rollouts(Path(config.out) / "rollouts" / "step_000002.jsonl.gz")) == 8
    assert load_model(final).config.vocab_size == load_model(base).config.vocab_size


@pytest.mark.slow
def test_two_rounds_on_real_samples_then_a_resumed_round_repeats_exactly(tiny_policy, two_answer_prompts, tmp_path):
    config = _config(tiny_policy, tmp_path, rounds=2, samples_per_prompt=16, max_new_tokens=48, temperature=0.7)
    # Half the samples are right by construction (see conftest.py): every round keeps some.
    config.prompts.dataset, config.prompts.path, config.prompts.limit = "gsm8k", str(two_answer_prompts), 32
    config.eval_every, config.tensorboard, config.progress = 0, False, False
    config.checkpoint_every = 1
    final = run_rl(config, algo="ei")
    out = Path(config.out)
    lines = read_metrics(out / METRICS_FILE, "rl")
    assert [line["step"] for line in lines] == [1, 2]
    assert all(line["kept"] > 0 and line["sft_steps"] > 0 for line in lines)
    assert sum(lines[0]["kept_format_share"].values()) == pytest.approx(1.0)

    # A kill during round 2: its checkpoint and the final folder never got written.
    expected = load_model(final)
    shutil.rmtree(out / "checkpoints" / "step_2")
    shutil.rmtree(final)
    run_rl(config, algo="ei", resume=True)
    assert _same_weights(load_model(final), expected)
    resumed = read_metrics(out / METRICS_FILE, "rl")
    assert [line["step"] for line in resumed] == [1, 2]
    untimed = [{k: v for k, v in line.items() if "time" not in k and "per_s" not in k} for line in (lines[1], resumed[1])]
    assert untimed[0] == untimed[1]
