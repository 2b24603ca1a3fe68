from __future__ import annotations

import copy
import json
import math
import shutil
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from echochamber.errors import UserError
from echochamber.model import decoders as decoders_module
from echochamber.model.presets import build_model
from echochamber.model.sampler import Sample, build_sampler, sampler_precision
from echochamber.model.sampler_vllm import build_vllm_sampler, vllm_dtype
from echochamber.model.sampling_params import SamplingParams

TEXT = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.\n\n",
    "def simple_math_problem() -> int:\n    result = 48 + 24\n    return result\n",
    "Let's solve this problem using Python code.\n<llm-code>\n48 / 2\n</llm-code>\n\\boxed{24}\n",
]
PROMPTS = [
    "Natalia sold clips",
    "How many clips did Natalia sell altogether in April and May?\n\n",
    "48",
    "def simple_math_problem() -> int:\n",
    "Let's solve this problem using Python code.",
]
IDS = [f"q{i}" for i in range(len(PROMPTS))]




@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TEXT * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def make_model(tokenizer, preset: str = "tiny", seed: int = 0, max_seq_len: int | None = 256):
    return build_model(
        preset, len(tokenizer), max_seq_len=max_seq_len, seed=seed,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ).eval()


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return make_model(tokenizer)


def hf_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, eos: int) -> list[list[int]]:
    """HF generate's greedy continuations, cut after the first EOS (HF pads finished rows)."""
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, add_special_tokens=False, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**encoded, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos)
    rows = []
    for row in out[:, encoded.input_ids.shape[1] :].tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_greedy_equals_hf_generate_on_ragged_prompts(tokenizer, preset):
    model = make_model(tokenizer, preset, seed=1)
    samples = build_sampler(model, tokenizer, batch_size=3).generate(PROMPTS, IDS, 1, SamplingParams(0.0, max_new_tokens=24))
    expected = hf_greedy(model, tokenizer, PROMPTS, 24, tokenizer.eos_token_id)
    assert [row[0].token_ids for row in samples] == expected
    assert all(row[0].truncated == (tokenizer.eos_token_id not in row[0].token_ids) for row in samples)


def test_stops_at_eos_keeps_it_in_tokens_but_not_in_text(tokenizer, tiny):
    params = SamplingParams(0.0, max_new_tokens=20)
    free = build_sampler(tiny, tokenizer).generate(PROMPTS, IDS, 1, params)
    # Declare a token the model does emit greedily to be EOS, so stopping actually happens.
    stop_token = free[0][0].token_ids[5]
    stopping = copy.deepcopy(tokenizer)
    stopping.eos_token = tokenizer.convert_ids_to_tokens(stop_token)
    samples = build_sampler(tiny, stopping, batch_size=2).generate(PROMPTS, IDS, 1, params)
    for before, (after,) in zip(free, samples, strict=True):
        ids = before[0].token_ids
        if stop_token in ids:
            end = ids.index(stop_token) + 1
            assert after.token_ids == ids[:end] and not after.truncated
            assert len(after.logprobs) == end
            assert after.text == stopping.decode(ids[: end - 1])
        else:
            assert after.token_ids == ids and after.truncated
    assert samples[0][0].truncated is False
    assert samples[0][0].token_ids == hf_greedy(tiny, tokenizer, PROMPTS[:1], 20, stop_token)[0]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=16, seed=3),
        SamplingParams(temperature=1.3, top_k=20, top_p=0.8, max_new_tokens=16, seed=4),
        SamplingParams(temperature=1.0, max_new_tokens=16, seed=5),
        SamplingParams(temperature=0.0, max_new_tokens=16),
    ],
    ids=["T0.7-p0.95", "T1.3-k20-p0.8", "T1", "greedy"],
)
def test_logprobs_equal_a_full_forward_with_the_same_transform(tokenizer, tiny, params, filtered_logprobs):
    samples = build_sampler(tiny, tokenizer, batch_size=4).generate(PROMPTS, IDS, 2, params)
    for prompt, row in zip(PROMPTS, samples, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for sample in row:
            ids = torch.tensor([prompt_ids + sample.token_ids])
            with torch.no_grad():
                logits = tiny(ids).logits[0, len(prompt_ids) - 1 : -1]
            expected = filtered_logprobs(logits, params).gather(-1, torch.tensor(sample.token_ids)[:, None])[:, 0]
            assert torch.allclose(torch.tensor(sample.logprobs), expected, atol=1e-4, rtol=0)
            assert all(math.isfinite(lp) and lp <= 0 for lp in sample.logprobs)


def test_without_logprobs_the_samples_are_the_same_and_carry_none(tokenizer, tiny):
    # What an evaluation asks for (eval.config): the same tokens and texts, no log-probs.
    for params in (SamplingParams(0.7, top_p=0.95, max_new_tokens=16, seed=3), SamplingParams(0.0, max_new_tokens=16)):
        logged = build_sampler(tiny, tokenizer, batch_size=4).generate(PROMPTS, IDS, 2, params)
        unlogged = build_sampler(tiny, tokenizer, batch_size=4).generate(PROMPTS, IDS, 2, replace(params, logprobs=False))
        for row_a, row_b in zip(logged, unlogged, strict=True):
            for a, b in zip(row_a, row_b, strict=True):
                assert (a.token_ids, a.text, a.truncated) == (b.token_ids, b.text, b.truncated)
                assert len(a.logprobs) == len(a.token_ids) and b.logprobs == []


def test_results_do_not_depend_on_batch_size_or_order(tokenizer, tiny):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=7)
    runs = [build_sampler(tiny, tokenizer, batch_size=b).generate(PROMPTS, IDS, 3, params) for b in (1, 7, 64)]
    reordered = build_sampler(tiny, tokenizer, batch_size=7).generate(PROMPTS[::-1], IDS[::-1], 3, params)[::-1]
    reference = runs[0]
    for other in [*runs[1:], reordered]:
        for row_a, row_b in zip(reference, other, strict=True):
            for a, b in zip(row_a, row_b, strict=True):
                assert (a.prompt_id, a.sample_index, a.token_ids, a.text, a.truncated) == (
                    b.prompt_id, b.sample_index, b.token_ids, b.text, b.truncated)
                assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    # Different samples of one prompt differ, and a different seed changes them.
    assert len({tuple(s.token_ids) for s in reference[1]}) == 3
    reseeded = build_sampler(tiny, tokenizer).generate(PROMPTS, IDS, 3, SamplingParams(1.0, 0.9, max_new_tokens=12, seed=8))
    assert [s.token_ids for s in reseeded[1]] != [s.token_ids for s in reference[1]]


def test_dropping_finished_rows_mid_batch_changes_nothing(tokenizer, tiny):
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=11)
    free = build_sampler(tiny, tokenizer).generate(PROMPTS, IDS, 4, params)
    counts = torch.bincount(torch.tensor([t for row in free for s in row for t in s.token_ids]))
    stopping = copy.deepcopy(tokenizer)  # make a frequently drawn token EOS: rows finish at many steps
    stopping.eos_token = tokenizer.convert_ids_to_tokens(int(counts.argmax()))
    alone = build_sampler(tiny, stopping, batch_size=1).generate(PROMPTS, IDS, 4, params)
    together = build_sampler(tiny, stopping, batch_size=64).generate(PROMPTS, IDS, 4, params)
    lengths = {len(s.token_ids) for row in together for s in row}
    assert len(lengths) > 3 and any(not s.truncated for row in together for s in row)
    for row_a, row_b in zip(alone, together, strict=True):
        for a, b in zip(row_a, row_b, strict=True):
            assert (a.token_ids, a.truncated) == (b.token_ids, b.truncated)
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_generate_tokens_is_what_generate_wraps(tokenizer, tiny):
    params = SamplingParams(temperature=0.8, max_new_tokens=8, seed=1)
    sampler = build_sampler(tiny, tokenizer)
    by_text = sampler.generate(PROMPTS, IDS, 2, params)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    assert sampler.generate_tokens(encoded, IDS, 2, params) == by_text
    assert isinstance(by_text[0][0], Sample) and [s.sample_index for s in by_text[0]] == [0, 1]


def test_hf_fallback_decoder_agrees_with_the_fast_path(tokenizer, tiny, monkeypatch):
    params = SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=10, seed=2)
    fast = build_sampler(tiny, tokenizer, batch_size=4).generate(PROMPTS, IDS, 2, params)
    monkeypatch.setattr(decoders_module, "has_fast_path", lambda model: False)
    slow = build_sampler(tiny, tokenizer, batch_size=4).generate(PROMPTS, IDS, 2, params)
    assert [[s.token_ids for s in row] for row in slow] == [[s.token_ids for s in row] for row in fast]


def test_context_limit_truncates_and_ignore_eos_runs_to_length(tokenizer, tiny):
    model = make_model(tokenizer, max_seq_len=24)
    prompt = tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    params = SamplingParams(1.0, max_new_tokens=100, ignore_eos=True)
    ((sample,),) = build_sampler(model, tokenizer).generate_tokens([prompt], ["p"], 1, params)
    assert sample.truncated and len(sample.token_ids) == 24 - len(prompt)
    params = SamplingParams(1.0, max_new_tokens=9, ignore_eos=True)
    rows = build_sampler(tiny, tokenizer).generate(PROMPTS[:3], IDS[:3], 4, params)
    assert all(len(s.token_ids) == 9 and s.truncated for row in rows for s in row)


def test_sampler_sees_weight_updates_and_restores_training_mode(tokenizer):
    model = make_model(tokenizer, seed=5)
    sampler = build_sampler(model, tokenizer)
    params = SamplingParams(0.0, max_new_tokens=10)
    before = sampler.generate(PROMPTS, IDS, 1, params)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.train()
    after = sampler.generate(PROMPTS, IDS, 1, params)
    assert model.training
    assert [r[0].token_ids for r in after] != [r[0].token_ids for r in before]
    assert [r[0].token_ids for r in after] == hf_greedy(model.eval(), tokenizer, PROMPTS, 10, tokenizer.eos_token_id)


def test_bad_requests_are_user_errors(tokenizer, tiny):
    sampler = build_sampler(tiny, tokenizer)
    params = SamplingParams(max_new_tokens=4)
    with pytest.raises(UserError, match="prompt ids"):
        sampler.generate(PROMPTS, IDS[:2], 1, params)
    with pytest.raises(UserError, match="unique"):
        sampler.generate(PROMPTS[:2], ["a", "a"], 1, params)
    with pytest.raises(UserError, match="n \\(samples"):
        sampler.generate(PROMPTS, IDS, 0, params)
    with pytest.raises(UserError, match="empty"):
        sampler.generate([""], ["e"], 1, params)
    with pytest.raises(UserError, match="context"):
        sampler.generate_tokens([[1] * 256], ["long"], 1, params)
    for bad in ({"temperature": -1}, {"top_p": 0.0}, {"top_k": -2}, {"max_new_tokens": 0}):
        with pytest.raises(UserError):
            SamplingParams(**bad)
    with pytest.raises(UserError, match="known: torch, vllm"):
        build_sampler(tiny, tokenizer, backend="jax")


def test_vllm_backend_without_vllm_is_a_user_error(tokenizer, tiny):
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install"):
            build_sampler(tiny, tokenizer, backend="vllm")
    else:
        pytest.skip("vllm is installed; the GPU path is exercised on GPU machines")


@pytest.mark.parametrize(
    ("weights", "requested", "expected"),
    [
        (torch.float32, "auto", "float32"),  # never vLLM's own "auto", which would run it in float16
        (torch.bfloat16, "auto", "bfloat16"),
        (torch.float32, "bfloat16", "bfloat16"),
    ],
)
def test_vllm_is_told_the_dtype_explicitly(tokenizer, fake_vllm, weights, requested, expected):
    model = make_model(tokenizer).to(weights)
    assert sampler_precision(model, "vllm", requested) == {"dtype": expected, "device": "cuda"}
    build_sampler(model, tokenizer, backend="vllm", dtype=requested)
    assert fake_vllm.engines[-1].options["dtype"] == expected
    # A checkpoint folder: the dtype it records, float32 when it records none (Hugging Face's rule).
    folder = Path(fake_vllm.engines[-1].options["model"])
    assert vllm_dtype(folder, requested) == expected
    config = json.loads((folder / "config.json").read_text())
    config.pop("dtype", None), config.pop("torch_dtype", None)
    (folder / "config.json").write_text(json.dumps(config))
    assert vllm_dtype(folder) == "float32"
    (folder / "config.json").write_text(json.dumps({**config, "torch_dtype": "float16"}))
    assert vllm_dtype(folder) == "float16"
    shutil.rmtree(folder)


def test_torch_backend_samples_the_model_in_its_own_dtype(tokenizer, tiny):
    assert sampler_precision(tiny, "torch") == {"dtype": "float32", "device": "cpu"}
    assert sampler_precision(tiny, "torch", "float32") == {"dtype": "float32", "device": "cpu"}
    with pytest.raises(UserError, match="own dtype \\(float32\\), not bfloat16"):
        build_sampler(tiny, tokenizer, dtype="bfloat16")
    with pytest.raises(UserError, match="unknown dtype 'fp8'"):
        build_sampler(tiny, tokenizer, dtype="fp8")
    assert sampler_precision(None, "torch") == {"dtype": None, "device": None}  # a caller's sampler


def test_vllm_sampler_reads_vllms_outputs_caps_at_the_context_and_takes_pushed_weights(tokenizer, fake_vllm):
    """Through the fake engine (tests/conftest.py), which samples with its own copy of the model."""
    model = make_model(tokenizer, max_seq_len=64)
    sampler = build_vllm_sampler(model, tokenizer, False, colocate_memory=0.5)
    engine = fake_vllm.engines[-1]
    assert (engine.options["max_model_len"], engine.options["gpu_memory_utilization"]) == (64, 0.5)
    greedy = SamplingParams(0.0, max_new_tokens=10)

    def same(first, second):
        assert [[s.token_ids for s in row] for row in first] == [[s.token_ids for s in row] for row in second]
        assert [[s.text for s in row] for row in first] == [[s.text for s in row] for row in second]
        for a, b in zip([s for row in first for s in row], [s for row in second for s in row], strict=True):
            assert a.truncated == b.truncated and a.logprobs == pytest.approx(b.logprobs, abs=1e-5)

    same(sampler.generate(PROMPTS, IDS, 1, greedy), build_sampler(model, tokenizer).generate(PROMPTS, IDS, 1, greedy))
    # A request generates at most up to the model's context, as the torch backend does.
    [[capped]] = sampler.generate_tokens([[5] * 60], ["long"], 1, SamplingParams(0.0, max_new_tokens=30, ignore_eos=True))
    assert engine.requests[-1].max_tokens == 4 and len(capped.token_ids) == 4 and capped.truncated
    with pytest.raises(UserError, match="context is 64"):
        sampler.generate_tokens([[5] * 64], ["too-long"], 1, greedy)
    # New weights, pushed in memory: the engine now samples them (and dropped its prefix cache).
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    sampler.push_weights(model)
    assert engine.prefix_resets == 1 and set(engine.pushes[-1]) == {name for name, _ in model.named_parameters()}
    same(sampler.generate(PROMPTS, IDS, 1, greedy), build_sampler(model, tokenizer).generate(PROMPTS, IDS, 1, greedy))


def test_a_stopped_vllm_sample_without_its_eos_is_an_error(tokenizer, fake_vllm, monkeypatch):
    """RL trains on the choice to stop: a sample that stopped must carry the EOS and its log-prob."""
    sampler = build_vllm_sampler(make_model(tokenizer), tokenizer, False)
    dropped = types.SimpleNamespace(token_ids=[7, 8], logprobs=[{7: types.SimpleNamespace(logprob=-1.0)},
                                    {8: types.SimpleNamespace(logprob=-2.0)}], finish_reason="stop")  # fmt: skip
    monkeypatch.setattr(fake_vllm.engines[-1], "generate", lambda *a, **k: [types.SimpleNamespace(outputs=[dropped])])
    with pytest.raises(RuntimeError, match="without returning its EOS"):
        sampler.generate(PROMPTS[:1], IDS[:1], 1, SamplingParams(0.7, max_new_tokens=4))
