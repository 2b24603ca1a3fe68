"""Shared fixtures. Tests needing the real data in ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from echochamber.data.paths import ENV_VAR, data_dir

FIXTURES = Path(__file__).parent / "fixtures"

# One intra-op thread per test process: the suite also runs sandbox and math-verify workers, and
# two torch threads fighting them on a 2-core machine turned second-long tests into minutes.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = data_dir()
    if path is None:
        pytest.skip(f"real data folder not found (set {ENV_VAR} or put shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


# --- The paper's checkpoint conventions, built locally (there is no network) ---------------------
# The released checkpoints are OLMo v1 models converted by transformers' convert_olmo_weights_to_hf.py
# with --no_fix_eos_token_id, then given the Llama-2 tokenizer: config.json says eos_token_id 0 and
# pad_token_id 1 (OLMo's own ids, which are <unk> and <s> in Llama's vocabulary), while the tokenizer
# has <unk> 0, <s> 1, </s> 2, no pad token, and adds <s> to every input by default. Documents were
# `question + "\n\n" + solution + </s>` with no <s>.

LLAMA_VOCAB = 32000
LLAMA_SPECIALS = ("<unk>", "<s>", "</s>")


def build_llama_tokenizer(texts: list[str], folder: Path, merges_vocab: int = 4000) -> Path:
    """A Llama-2-style tokenizer: SentencePiece-like BPE (a "▁" for each space and before the input,
    byte fallback for anything else), <unk>/<s>/</s> at ids 0/1/2, the 256 byte tokens next, merges
    trained on `texts`, unreachable filler tokens up to 32,000 ids, and <s> added by default."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import LlamaTokenizerFast

    sentencepiece = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    learner = Tokenizer(models.BPE())
    learner.normalizer = sentencepiece
    learner.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    learner.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=merges_vocab, show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    vocab = {token: i for i, token in enumerate(LLAMA_SPECIALS)}
    vocab.update({f"<0x{byte:02X}>": len(LLAMA_SPECIALS) + byte for byte in range(256)})
    for token in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(token, len(vocab))
    fillers = (f"▁unused{i}" for i in range(LLAMA_VOCAB))
    while len(vocab) < LLAMA_VOCAB:
        vocab[next(fillers)] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = sentencepiece
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.add_special_tokens(list(LLAMA_SPECIALS))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tokenizer = LlamaTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        add_bos_token=True, add_eos_token=False, legacy=False,
    )  # fmt: skip
    tokenizer.save_pretrained(str(folder))
    return folder


def build_paper_checkpoint(folder: Path, tokenizer: Path, preset: str = "150m", *, stop_logit: float = 0.0) -> Path:
    """A randomly initialised OlmoForCausalLM with `preset`'s shapes, the paper's 32k vocabulary and
    the config the conversion writes (eos_token_id 0, pad_token_id 1, no bos), plus `tokenizer`.

    `stop_logit` > 0 plants a preference for </s>: the blocks' output projections are zeroed (each
    position's hidden state is then its token's embedding), every embedding is one vector e, and
    </s>'s output row is LayerNorm(e) scaled so that its logit is `stop_logit` (the others are the
    random init's, about +-0.5): greedy decoding stops at once, sampling stops early or runs on."""
    import shutil

    import torch
    from transformers import OlmoConfig, OlmoForCausalLM

    from echochamber.model.specs import get_spec

    spec = get_spec(preset)
    config = OlmoConfig(
        vocab_size=LLAMA_VOCAB, hidden_size=spec.d_model, intermediate_size=spec.mlp_hidden,
        num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads, num_key_value_heads=spec.n_heads,
        max_position_embeddings=spec.max_seq_len, pad_token_id=1, bos_token_id=None, eos_token_id=0,
        tie_word_embeddings=spec.tie_embeddings, rope_theta=spec.rope_theta, attention_bias=False, clip_qkv=None,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = OlmoForCausalLM(config)
    if stop_logit > 0:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            e = torch.randn(spec.d_model, generator=torch.Generator().manual_seed(1))
            model.model.embed_tokens.weight.copy_(e.expand_as(model.model.embed_tokens.weight))
            h = torch.nn.functional.layer_norm(e, (spec.d_model,))
            model.lm_head.weight[2] = h * stop_logit / float(h @ h)
    model.save_pretrained(folder)
    for file in tokenizer.iterdir():
        shutil.copy(file, folder / file.name)
    return folder


@pytest.fixture(scope="session")
def llama_tokenizer(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """The Llama-2-convention tokenizer, its merges trained on GSM8K and OMI2 text and the fixtures."""
    texts = [json.loads(line)["code"] for line in (FIXTURES / "sources" / "tinygsm.jsonl").open()]
    texts += [json.loads(line)["generated_solution"] for line in (shared_data / "samples" / "omi2.jsonl").open()]
    for line in list((shared_data / "gsm8k" / "train.jsonl").open())[:3000]:
        row = json.loads(line)
        texts += [row["question"], row["answer"]]
    return build_llama_tokenizer(texts, tmp_path_factory.mktemp("llama") / "tokenizer")


@pytest.fixture(scope="session")
def paper_checkpoints(tmp_path_factory: pytest.TempPathFactory, llama_tokenizer: Path):
    """make(preset, stop_logit) -> a checkpoint folder with the paper's conventions (built once each)."""
    made: dict[tuple[str, float], Path] = {}

    def make(preset: str = "150m", stop_logit: float = 0.0) -> Path:
        if (preset, stop_logit) not in made:
            folder = tmp_path_factory.mktemp("paper-checkpoint") / f"OLMo-{preset}"
            made[preset, stop_logit] = build_paper_checkpoint(folder, llama_tokenizer, preset, stop_logit=stop_logit)
        return made[preset, stop_logit]

    return make


class FakeVLLM(types.ModuleType):
    """Stands in for the vllm package, which needs a GPU: `LLM` builds a real engine of its own (the
    project's torch sampler over its own copy of the model, loaded from the folder it is given, in
    the dtype it is told) and answers in vLLM's shapes, so everything around the engine (requests,
    outputs, log-probs, weight pushes) runs on the CPU as it would on a GPU."""

    def __init__(self) -> None:
        super().__init__("vllm")
        self.engines: list[FakeLLM] = []

    def SamplingParams(self, **kwargs: Any) -> SimpleNamespace:  # noqa: N802  (vllm's names)
        return SimpleNamespace(**kwargs)

    def LLM(self, **options: Any) -> FakeLLM:  # noqa: N802
        engine = FakeLLM(**options)
        self.engines.append(engine)
        return engine


class FakeLLM:
    """One engine: `generate` samples its model copy; `load_weights` (at vLLM's address) replaces its
    parameters by name and keeps a copy of each push; `reset_prefix_cache` is counted."""

    def __init__(self, model: str, dtype: str, **options: Any) -> None:
        from echochamber.data.tokenizer import load_tokenizer
        from echochamber.model.presets import load_model

        self.options = {"model": model, "dtype": dtype, **options}
        self.model = load_model(model).to(getattr(torch, dtype)).eval()
        self.tokenizer = load_tokenizer(model)
        self.pushes: list[dict[str, torch.Tensor]] = []
        self.prefix_resets = 0
        self.requests: list[SimpleNamespace] = []
        self.outputs: list[list[Any]] = []
        runner = SimpleNamespace(model=SimpleNamespace(load_weights=self._load_weights))
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))
        )

    def _load_weights(self, weights: Any) -> None:
        parameters = dict(self.model.named_parameters())
        pushed = {}
        with torch.no_grad():
            for name, tensor in weights:
                parameters[name].copy_(tensor)  # an unknown name fails, as it would in vLLM
                pushed[name] = tensor.detach().clone()
        self.pushes.append(pushed)

    def reset_prefix_cache(self) -> None:
        self.prefix_resets += 1

    def generate(
        self, prompts: list[dict], requests: list[SimpleNamespace], use_tqdm: bool = False
    ) -> list[Any]:
        from echochamber.model.sampler import TorchSampler
        from echochamber.model.sampling_params import SamplingParams

        sampler = TorchSampler(self.model, self.tokenizer)
        outputs = []
        for prompt, request in zip(prompts, requests, strict=True):
            self.requests.append(request)
            params = SamplingParams(
                temperature=request.temperature, top_p=request.top_p, top_k=max(request.top_k, 0),
                max_new_tokens=request.max_tokens, seed=request.seed, ignore_eos=request.ignore_eos,
            )  # fmt: skip
            [row] = sampler.generate_tokens(
                [prompt["prompt_token_ids"]], [f"request-{request.seed}"], request.n, params
            )
            completions = [
                SimpleNamespace(
                    token_ids=sample.token_ids,
                    logprobs=[
                        {token: SimpleNamespace(logprob=value)}
                        for token, value in zip(sample.token_ids, sample.logprobs, strict=True)
                    ],
                    finish_reason="length" if sample.truncated else "stop",
                )
                for sample in row
            ]
            outputs.append(SimpleNamespace(outputs=completions))
        self.outputs.append(outputs)
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> FakeVLLM:
    """The fake vllm package, importable as `vllm` for the test."""
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    return fake
